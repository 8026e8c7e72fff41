"""ucofia: train, export and serve UCoFiA for video-text retrieval.

Importing ``ucofia`` is cheap and torch-free; the model API below is loaded on first use, so
that torch-free parts (``ucofia.config``, ``ucofia.io_utils``) can be shared with the runtime.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "UCoFiA": "ucofia.model",
    "TextFeatures": "ucofia.model",
    "VideoFeatures": "ucofia.model",
    "build_model": "ucofia.model",
    "load_reference_checkpoint": "ucofia.checkpoints",
    "load_checkpoint": "ucofia.checkpoints",
    "save_checkpoint": "ucofia.checkpoints",
    "load_model": "ucofia.checkpoints",
    "sinkhorn_video_bias": "ucofia.sinkhorn",
    "sinkhorn_text_bias": "ucofia.sinkhorn",
    "fuse": "ucofia.sinkhorn",
    "UCoFiAConfig": "ucofia.config",
    "CLIPConfig": "ucofia.config",
    "tiny_config": "ucofia.config",
}

__all__ = sorted(_LAZY) + ["__version__"]  # noqa: PLE0605 - built from _LAZY so the two cannot drift apart


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ucofia' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
