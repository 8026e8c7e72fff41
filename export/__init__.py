"""ONNX / TensorRT bundle export (``ucofia export``).

Importing ``export`` is cheap: ``export_bundle`` (and the rest) load torch on first use::

    from export import export_bundle
    manifest = export_bundle(model, "bundle/", fp16=False, force=True)
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_bundle": "export.bundle",
    "TrtCompatibilityError": "export.bundle",
    "ExportError": "export.onnx_export",
    "VerificationError": "export.verify",
    "Tolerances": "export.verify",
    "TrtBuildOptions": "export.tensorrt_build",
    "AxisRange": "export.tensorrt_build",
    "TensorRTError": "runtime.backends.tensorrt_engines",
    "check_graphs": "export.trt_check",
}

__all__ = sorted(_LAZY)  # noqa: PLE0605 - the lazily loaded names, listed once (in _LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
