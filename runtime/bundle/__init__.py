"""Exported bundles: the contract (``contract``) and loading a bundle directory (``loader``).

``from runtime.bundle import Bundle, load_bundle`` is what most of the runtime needs; names of
graphs, roles and manifest fields come from ``runtime.bundle.contract``.
"""
from __future__ import annotations

from runtime.bundle.contract import GraphSpec, TensorSpec
from runtime.bundle.loader import Bundle, TokenizerSpec, load_bundle

__all__ = ["Bundle", "GraphSpec", "TensorSpec", "TokenizerSpec", "load_bundle"]
