"""Execution backends for the bundle graphs: onnxruntime (CPU / CUDA) and TensorRT engines.

``open_session(bundle, "scorer", backend)`` returns a ``GraphSession`` whose ``run`` takes and
returns arrays keyed by contract role (``runtime.bundle.contract.GRAPH_ROLES``).

Modules: ``base`` (the ``GraphSession`` interface), ``ort`` (onnxruntime sessions and what
onnxruntime can run here), ``cuda_driver`` (GPU 0 through libcuda), ``tensorrt_engines`` (engine
compatibility and loading), ``tensorrt_session`` (running an engine within its profile),
``selection`` (``--backend`` resolution and ``open_session``).
"""
from __future__ import annotations

from runtime.backends.base import GraphSession
from runtime.backends.ort import OrtSession
from runtime.backends.selection import BACKENDS, available_cpus, open_session, resolve_backend
from runtime.backends.tensorrt_session import TensorRTSession

__all__ = ["BACKENDS", "GraphSession", "OrtSession", "TensorRTSession", "available_cpus", "open_session",
           "resolve_backend"]
