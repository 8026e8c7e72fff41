"""Training for UCoFiA (``ucofia train``): config, frame cache, data, optimizer, DDP, evaluation, loop.

Torch-free to import; ``ucofia.training.config`` and ``ucofia.training.frame_cache`` stay torch-free,
the other modules import torch. Entry point: ``ucofia.training.trainer.train(cfg, run_dir)``.
"""
