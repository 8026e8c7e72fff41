"""Execution backends for the bundle graphs: onnxruntime (CPU / CUDA) and TensorRT engines.

``open_session(bundle, "scorer", backend)`` returns a session whose ``run`` takes and returns
arrays keyed by contract role (see ``runtime.bundle.GRAPH_ROLES``); tensor names and input dtypes
come from the manifest, inputs are cast to them and float outputs come back as float32.

Backend choice (``--backend``):
  auto      TensorRT when ``tensorrt`` imports and the manifest has engines built for this GPU and
            TensorRT version, else onnxruntime CUDA when it really runs here, else CPU (with a
            note saying why when CUDA was expected).
  cpu       onnxruntime CPUExecutionProvider.
  cuda      onnxruntime CUDAExecutionProvider (needs onnxruntime-gpu); error when it cannot run.
  tensorrt  the manifest's TensorRT engines; error naming the mismatch when they cannot be used.

``get_available_providers()`` lists CUDA whenever onnxruntime-gpu is installed, even without a
GPU or with CUDA/cuDNN libraries missing; onnxruntime then quietly runs the session on the CPU.
So CUDA is probed once with a real session (``cuda_problem``) and every CUDA session checks
``get_providers()`` after it is created. ``onnxruntime`` and ``onnxruntime-gpu`` cannot be
installed together (they share the ``onnxruntime`` module); ``onnxruntime_conflict`` detects it
and gives the exact fix.
"""
from __future__ import annotations

import abc
import importlib.metadata
import os
import sys
import warnings
from typing import Callable, Mapping

import numpy as np

from runtime.bundle import Bundle, GraphSpec
from runtime.errors import BackendError

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")
CUDA_PROVIDER = "CUDAExecutionProvider"
_ORT_PROVIDERS = {"cpu": ["CPUExecutionProvider"],
                  "cuda": [CUDA_PROVIDER, "CPUExecutionProvider"]}
GPU_INSTALL_HELP = "see 'GPU install' in the README"
Log = Callable[[str], None]


class GraphSession(abc.ABC):
    """One bundle graph, run on arrays keyed by contract role.

    ``concurrency``: how many ``run`` calls may usefully execute at once from different threads
    (1 unless the session was opened for parallel tiles, see ``open_session``).
    """

    backend: str
    concurrency: int = 1

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    def max_rows(self, role: str) -> int | None:
        """Most rows (texts or videos) one graph call should get for input ``role`` (None: no limit).

        ``run`` accepts any number; sessions with a limit (TensorRT profiles) split larger calls.
        """
        return None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cast ``inputs`` (role -> array) to the manifest dtypes, run, return role -> array."""
        missing = [role for role in self.spec.inputs if role not in inputs]
        if missing:
            raise ValueError(f"{self.spec.key}: missing inputs {missing}")
        feeds = {spec.name: np.ascontiguousarray(inputs[role], dtype=np.dtype(spec.dtype))
                 for role, spec in self.spec.inputs.items()}
        raw = self._run(feeds)
        out = {}
        for role, spec in self.spec.outputs.items():
            value = np.asarray(raw[spec.name])
            out[role] = value.astype(np.float32, copy=False) if value.dtype.kind == "f" else value
        return out

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on name -> array feeds; return name -> array for every output."""


class OrtSession(GraphSession):
    """An onnxruntime InferenceSession over the bundle's ONNX file."""

    def __init__(self, spec: GraphSpec, device: str, threads: int | None = None,
                 disabled_optimizers: list[str] | None = None, concurrency: int = 1) -> None:
        super().__init__(spec)
        import onnxruntime as ort

        self.backend = device
        self.concurrency = max(1, int(concurrency))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # ISA softmaxes at temperature 0.01 produce subnormal floats; flushing them to zero makes
        # the scorer ~3x faster on x86 CPUs and changes scores by < 1e-37 relative.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        try:
            self._session = ort.InferenceSession(str(spec.file), options, providers=_ORT_PROVIDERS[device],
                                                 disabled_optimizers=disabled_optimizers or None)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime could not load {spec.file}: {exc}") from None
        self.providers = list(self._session.get_providers())
        if device == "cuda" and CUDA_PROVIDER not in self.providers:
            raise BackendError(f"onnxruntime could not start {CUDA_PROVIDER} for {spec.file} and would run it on "
                               f"{', '.join(self.providers)}; {GPU_INSTALL_HELP}, or use --backend cpu")
        have = {i.name for i in self._session.get_inputs()}
        want = {s.name for s in spec.inputs.values()}
        if have != want:
            raise BackendError(f"{spec.file}: graph inputs {sorted(have)} differ from the manifest's "
                               f"{sorted(want)}; the bundle is inconsistent, re-export it")
        self._outputs = [s.name for s in spec.outputs.values()]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
    path = str(bundle.graphs["scorer"].file)
    if path not in _CUDA_PROBES:
        _CUDA_PROBES[path] = _probe_cuda(path)
    return _CUDA_PROBES[path]


def _probe_cuda(path: str) -> str | None:
    import onnxruntime as ort

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our message below says it better
            active = ort.InferenceSession(path, providers=_ORT_PROVIDERS["cuda"]).get_providers()
    except Exception as exc:  # onnxruntime raises its own exception types
        return f"onnxruntime could not start {CUDA_PROVIDER}: {exc}"
    if CUDA_PROVIDER in active:
        return None
    return (f"onnxruntime lists {CUDA_PROVIDER} but could not start it (no GPU visible, or the CUDA/cuDNN libraries "
            f"it needs are missing; onnxruntime's log above names them), so sessions would run on "
            f"{', '.join(active)}; {GPU_INSTALL_HELP}")


def resolve_backend(requested: str, bundle: Bundle, log: Log | None = None) -> str:
    """The concrete backend ('cpu', 'cuda' or 'tensorrt') for ``requested``.

    Raises BackendError naming the reason when an explicitly requested backend is unusable. With
    ``auto``, ``log`` gets a one-line note when a GPU backend was expected but the CPU is used.
    """
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested in ("auto", "tensorrt"):
        from runtime.trt import tensorrt_unusable_reason

        reason = tensorrt_unusable_reason(bundle)
        if reason is None:
            return "tensorrt"
        if requested == "tensorrt":
            raise BackendError(f"--backend tensorrt is unavailable: {reason}")
    providers = ort_providers()
    if not providers:
        conflict = onnxruntime_conflict()
        raise BackendError(conflict or "onnxruntime is not installed; `pip install onnxruntime` "
                                       f"(or onnxruntime-gpu, {GPU_INSTALL_HELP})")
    if requested == "cpu":
        return "cpu"
    problem = cuda_problem(bundle)
    if requested == "cuda":
        if problem:
            raise BackendError(f"--backend cuda is unavailable: {problem}")
        return "cuda"
    if problem is None:
        return "cuda"
    if log is not None and (CUDA_PROVIDER in providers or onnxruntime_conflict()):
        log(f"note: running on the CPU: {problem}")
    return "cpu"


def open_session(bundle: Bundle, key: str, backend: str = "auto", threads: int | None = None) -> GraphSession:
    """A session for graph ``key`` ('text_encoder', 'video_encoder' or 'scorer') of ``bundle``."""
    resolved = resolve_backend(backend, bundle)
    spec = bundle.graphs[key]
    if resolved == "tensorrt":
        from runtime.trt import TensorRTSession

        return TensorRTSession(spec, bundle)
    # the export records graph optimizers that break its float16 graphs on onnxruntime's CPU provider
    hints = bundle.manifest.get("onnxruntime") or {}
    disabled = hints.get("cpu_disabled_optimizers") if resolved == "cpu" else None
    threads = threads or _env_threads()
    if key == "scorer" and resolved == "cpu":
        # Scorer tiles are independent: one single-threaded run per core, each on its own
        # cache-sized tile, beats splitting every small op of one tile across threads.
        return OrtSession(spec, resolved, threads=1, disabled_optimizers=disabled,
                          concurrency=threads or available_cpus())
    return OrtSession(spec, resolved, threads=threads, disabled_optimizers=disabled)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> int | None:
    value = os.environ.get("UCOFIA_RUN_THREADS")
    return int(value) if value else None
