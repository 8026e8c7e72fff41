"""Torch-free data handling: video decoding, tokenization, dataset readers, the demo benchmark."""
