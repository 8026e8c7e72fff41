"""TensorRT engines of a bundle: whether they can run here, and loading them (no torch).

The manifest's ``tensorrt`` section (written by ``ucofia export --trt``) names the TensorRT
version, GPU model and compute capability the engines were built with (``engine_target``, which
the export uses to write them). Engines only run on that GPU model with that TensorRT version:
``compatibility_problem`` names the difference, ``load_engine`` refuses such engines with a
message saying how to rebuild, and ``tensorrt_unusable_reason`` tells ``--backend auto`` to fall
back to onnxruntime. This GPU is read through the CUDA driver API (``cuda_driver``); ``tensorrt``
is imported lazily (optional extra).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from runtime.backends.cuda_driver import gpu_device
from runtime.bundle import Bundle
from runtime.bundle.contract import GRAPH_KEYS, MANIFEST_FILE
from runtime.errors import BackendError

REBUILD_HINT = "rebuild the engines on this machine with `ucofia export CHECKPOINT -o BUNDLE --trt --force`"
# Fields of the tensorrt section an engine must match here, in the order they are checked, and what
# a mismatch of each means.
_TARGET_CHECKS = (("version", "TensorRT versions differ"),
                  ("compute_capability", "GPU architectures differ"),
                  ("gpu", "GPU models differ"))


class TensorRTError(RuntimeError):
    """TensorRT is missing, or parsing, building or loading an engine failed."""


class EngineMismatchError(TensorRTError):
    """An engine was built for another GPU or TensorRT version than the one present."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or TensorRTError saying how to install it."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTError(
            "TensorRT is not installed (`pip install tensorrt` on a machine with an NVIDIA GPU and "
            f"driver; `pip install ucofia[tensorrt]`): {exc}") from None
    return trt


def engine_target(trt_version: str, device: dict[str, str]) -> dict[str, str]:
    """What engines built with TensorRT ``trt_version`` on ``device`` are bound to: the fields of the
    manifest's tensorrt section that ``compatibility_problem`` compares."""
    return {"version": str(trt_version), "gpu": str(device.get("gpu")),
            "compute_capability": str(device.get("compute_capability"))}


def _describe(target: dict[str, Any]) -> str:
    return (f"{target.get('gpu')} (compute capability {target.get('compute_capability')}) "
            f"with TensorRT {target.get('version')}")


def compatibility_problem(section: dict[str, Any], trt_version: str, device: dict[str, str]) -> str | None:
    """Why an engine built as ``section`` says cannot run here (None when it can)."""
    here = engine_target(trt_version, device)
    for field, mismatch in _TARGET_CHECKS:
        if str(section.get(field)) != here[field]:
            return (f"engines were built for {_describe(section)}; this machine has {_describe(here)}: "
                    f"{mismatch}; {REBUILD_HINT}")
    return None


def _this_gpu() -> dict[str, str]:
    try:
        return gpu_device()
    except (OSError, BackendError) as exc:
        raise TensorRTError(f"no usable NVIDIA GPU for TensorRT engines ({exc})") from None


def load_engine(directory: str | Path, key: str, trt: ModuleType | None = None,
                device: dict[str, str] | None = None) -> Any:
    """Deserialize the bundle's engine for graph ``key`` after checking it fits this GPU and TensorRT.

    ``trt``/``device`` default to the installed tensorrt and GPU 0. Raises TensorRTError
    (EngineMismatchError for engines built elsewhere).
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise TensorRTError(f"{manifest_path} not found: {directory} is not a ucofia bundle") from None
    section = manifest.get("tensorrt")
    if not section:
        raise TensorRTError(f"{manifest_path} has no TensorRT engines; export with `ucofia export ... --trt`")
    entry = section.get("engines", {}).get(key)
    if entry is None:
        raise TensorRTError(f"{manifest_path} lists no TensorRT engine for {key!r}")
    trt = trt or import_tensorrt()
    problem = compatibility_problem(section, str(trt.__version__), device or _this_gpu())
    if problem:
        raise EngineMismatchError(f"{directory / entry['file']}: {problem}")
    plan = directory / entry["file"]
    if not plan.is_file():
        raise TensorRTError(f"engine file missing: {plan} (named by {manifest_path})")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise TensorRTError(f"TensorRT could not deserialize {plan}; rebuild it with `ucofia export --trt --force`")
    return engine


def tensorrt_unusable_reason(bundle: Bundle) -> str | None:
    """None when the manifest's TensorRT engines can run here, else why not (one sentence)."""
    section = bundle.tensorrt
    if not section or not section.get("engines"):
        return "the bundle has no TensorRT engines (export with `ucofia export ... --trt` on the target GPU)"
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt Python package is not installed (`pip install tensorrt`)"
    try:
        device = gpu_device()
    except (OSError, BackendError) as exc:
        return f"no usable NVIDIA GPU ({exc})"
    problem = compatibility_problem(section, str(trt.__version__), device)
    if problem:
        return problem
    for key in GRAPH_KEYS:
        entry = section["engines"].get(key)
        if not entry or not (bundle.root / entry["file"]).is_file():
            return f"the engine for {key} is missing from {bundle.root} (named by {MANIFEST_FILE} tensorrt.engines)"
    return None
