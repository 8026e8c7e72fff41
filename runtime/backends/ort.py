"""onnxruntime sessions (CPU / CUDA provider) and the checks of what onnxruntime can run here.

``get_available_providers()`` lists CUDA whenever onnxruntime-gpu is installed, even without a
GPU or with CUDA/cuDNN libraries missing; onnxruntime then quietly runs the session on the CPU.
So CUDA is probed once with a real session (``cuda_problem``) and every CUDA session checks
``get_providers()`` after it is created. ``onnxruntime`` and ``onnxruntime-gpu`` cannot be
installed together (they share the ``onnxruntime`` module); ``onnxruntime_conflict`` detects it
and gives the exact fix.

onnxruntime-gpu's CUDA provider library has no RPATH to the pip-installed NVIDIA libraries
(``nvidia-cuda-runtime``, ``nvidia-cublas``, ``nvidia-cudnn-cu13``, ...): onnxruntime finds them only
when torch loaded them first or ``onnxruntime.preload_dlls()`` did. The runtime never imports
torch, so ``preload_cuda_libraries`` calls it (where the installed onnxruntime has it) before any
CUDA session or probe, and before TensorRT sessions.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
import warnings

import numpy as np

from runtime.backends import fpenv
from runtime.backends.base import GraphSession
from runtime.bundle import Bundle
from runtime.bundle.contract import SCORER, GraphSpec
from runtime.errors import BackendError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_PROVIDERS = {"cpu": [CPU_PROVIDER], "cuda": [CUDA_PROVIDER, CPU_PROVIDER]}
GPU_INSTALL_HELP = "see docs/install.md, 'GPU install'"
logger = logging.getLogger(__name__)
# session config key: whether idle intra-op threads spin ("1", onnxruntime's default) or sleep ("0")
ALLOW_SPINNING = "session.intra_op.allow_spinning"
# onnxruntime's log severity 3: errors only (its warnings repeat what our messages say better)
_ORT_LOG_ERRORS = 3


class OrtSession(GraphSession):
    """An onnxruntime InferenceSession over the bundle's ONNX file, on ``device`` ('cpu' or 'cuda')."""

    def __init__(self, spec: GraphSpec, device: str, threads: int | None = None,
                 disabled_optimizers: list[str] | None = None, concurrency: int = 1,
                 model: bytes | None = None, precision: str = "float32", spinning: bool = True) -> None:
        """``model``: serialised ONNX to run instead of ``spec.file`` (a rewrite of it, e.g. the int8
        scorer of ``runtime.backends.precision``); ``precision`` names what it computes in.
        ``spinning``: whether onnxruntime's intra-op threads spin between ops (and for a while
        after a run) instead of sleeping (see ``runtime.text.TextEncoder`` for where it is off)."""
        super().__init__(spec)
        import onnxruntime as ort

        self.backend = device
        self.concurrency = max(1, int(concurrency))
        self.precision = precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = _ORT_LOG_ERRORS
        # ISA softmaxes at temperature 0.01 produce subnormal floats; flushing them to zero makes
        # the scorer ~3x faster on x86 CPUs and changes scores by < 1e-37 relative.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if not spinning:
            options.add_session_config_entry(ALLOW_SPINNING, "0")
        if device == "cuda":
            preload_cuda_libraries()
        try:
            with fpenv.preserved():  # onnxruntime sets the flushing on the thread that creates the session
                self._session = ort.InferenceSession(str(spec.file) if model is None else model, options,
                                                     providers=_PROVIDERS[device],
                                                     disabled_optimizers=disabled_optimizers or None)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime could not load {spec.file}: {exc}") from None
        self.providers = list(self._session.get_providers())
        if device == "cuda" and CUDA_PROVIDER not in self.providers:
            raise BackendError(f"onnxruntime could not start {CUDA_PROVIDER} for {spec.file} and would run it on "
                               f"{', '.join(self.providers)}; {GPU_INSTALL_HELP}, or use --backend cpu")
        have = {i.name for i in self._session.get_inputs()}
        want = set(spec.input_names)
        if have != want:
            raise BackendError(f"{spec.file}: graph inputs {sorted(have)} differ from the manifest's "
                               f"{sorted(want)}; the bundle is inconsistent, re-export it")
        self._outputs = spec.output_names

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with fpenv.flushing():  # subnormals flushed inside the run, on whichever thread runs it
            return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))


def ort_providers() -> list[str]:
    """onnxruntime's execution providers installed here ([] when onnxruntime is missing or broken)."""
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except (ImportError, AttributeError):  # AttributeError: half of a CPU/GPU pair was uninstalled
        return []


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_conflict() -> str | None:
    """The problem and its exact fix when both onnxruntime and onnxruntime-gpu are installed, else None."""
    cpu, gpu = _dist_version("onnxruntime"), _dist_version("onnxruntime-gpu")
    if not (cpu and gpu):
        return None
    pip = f"{sys.executable} -m pip"
    return (f"both onnxruntime {cpu} and onnxruntime-gpu {gpu} are installed; they share the `onnxruntime` module "
            f"and the CPU package hides the CUDA provider. Fix: {pip} uninstall -y onnxruntime onnxruntime-gpu "
            f"&& {pip} install onnxruntime-gpu=={gpu}")


def onnxruntime_unusable_reason() -> str | None:
    """None when onnxruntime imports and lists its providers, else why not and the fix (one sentence)."""
    if ort_providers():
        return None
    return onnxruntime_conflict() or ("onnxruntime is not installed; `pip install onnxruntime` "
                                      f"(or onnxruntime-gpu, {GPU_INSTALL_HELP})")


def cuda_expected() -> bool:
    """Whether onnxruntime-gpu is installed here (its CUDA provider listed, or hidden by a CPU package
    installed next to it): then running on the CPU deserves a note."""
    return CUDA_PROVIDER in ort_providers() or onnxruntime_conflict() is not None


_CUDA_PROBES: dict[str, str | None] = {}


def cuda_problem(bundle: Bundle) -> str | None:
    """None when onnxruntime's CUDA provider really runs here, else why not (one sentence).

    Probes once per process with a session on the bundle's scorer graph (the smallest graph).
    """
    providers = ort_providers()
    if CUDA_PROVIDER not in providers:
        return onnxruntime_conflict() or (
            f"onnxruntime's {CUDA_PROVIDER} is not installed (installed providers: "
            f"{', '.join(providers) or 'none'}); {GPU_INSTALL_HELP}")
    path = str(bundle.graphs[SCORER].file)
    if path not in _CUDA_PROBES:
        _CUDA_PROBES[path] = _probe_cuda(path)
    return _CUDA_PROBES[path]


_PRELOADED: list[bool] = []  # [] until preload_cuda_libraries ran once in this process


def preload_cuda_libraries() -> bool:
    """Load the pip-installed CUDA and cuDNN libraries onnxruntime-gpu needs (``onnxruntime.preload_dlls``,
    onnxruntime >= 1.21), once per process; True when it was called.

    Without it the CUDA provider cannot start in a process that never imported torch, so
    ``--backend cuda`` fails and ``auto`` falls back to the CPU. What preload_dlls prints (libraries
    it could not load) goes to stderr, never into a command's stdout results.
    """
    if _PRELOADED:
        return _PRELOADED[0]
    try:
        import onnxruntime as ort
    except ImportError:
        _PRELOADED.append(False)
        return False
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        logger.debug("onnxruntime %s has no preload_dlls(); CUDA libraries must be on the loader's path",
                     getattr(ort, "__version__", "?"))
        _PRELOADED.append(False)
        return False
    try:
        with contextlib.redirect_stdout(sys.stderr):
            preload()
    except Exception as exc:  # a broken CUDA install must not stop a CPU fallback; the probe says why
        logger.debug("onnxruntime.preload_dlls() failed: %s", exc)
    _PRELOADED.append(True)
    return True


def _probe_cuda(path: str) -> str | None:
    import onnxruntime as ort

    preload_cuda_libraries()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our message below says it better
            active = ort.InferenceSession(path, providers=_PROVIDERS["cuda"]).get_providers()
    except Exception as exc:  # onnxruntime raises its own exception types
        return f"onnxruntime could not start {CUDA_PROVIDER}: {exc}"
    if CUDA_PROVIDER in active:
        return None
    return (f"onnxruntime lists {CUDA_PROVIDER} but could not start it (no GPU visible, or the CUDA/cuDNN libraries "
            f"it needs are missing; onnxruntime's log above names them), so sessions would run on "
            f"{', '.join(active)}; {GPU_INSTALL_HELP}")
