"""ucofia-run: the torch-free deployment runtime for exported UCoFiA bundles.

Modules: ``bundle`` (the bundle contract, and loading/validating a bundle), ``backends``
(onnxruntime CPU/CUDA sessions, TensorRT engine loading and sessions, backend selection),
``text`` (tokenize + text encoder), ``ingest`` (decode + encode videos into an index), ``index``
(the on-disk gallery), ``scoring`` (tiled scorer), ``sinkhorn`` (numpy SK biases), ``search``
(exhaustive / FAISS two-stage), ``evaluate`` (retrieval metrics), ``cli``.
Nothing here imports torch.
"""
