"""Execution backends for the bundle graphs: onnxruntime (CPU / CUDA) and TensorRT engines.

``open_session(bundle, "scorer", backend)`` returns a session whose ``run`` takes and returns
arrays keyed by contract role (see ``runtime.bundle.GRAPH_ROLES``); tensor names and input dtypes
come from the manifest, inputs are cast to them and float outputs come back as float32.

Backend choice (``--backend``):
  auto      TensorRT when ``tensorrt`` imports and the manifest has engines built for this GPU and
            TensorRT version, else onnxruntime CUDA when its provider is installed, else CPU.
  cpu       onnxruntime CPUExecutionProvider.
  cuda      onnxruntime CUDAExecutionProvider (needs onnxruntime-gpu); error when missing.
  tensorrt  the manifest's TensorRT engines; error naming the mismatch when they cannot be used.
"""
from __future__ import annotations

import abc
import os
from typing import Mapping

import numpy as np

from runtime.bundle import Bundle, GraphSpec
from runtime.errors import BackendError

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")
_ORT_PROVIDERS = {"cpu": ["CPUExecutionProvider"],
                  "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


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
        have = {i.name for i in self._session.get_inputs()}
        want = {s.name for s in spec.inputs.values()}
        if have != want:
            raise BackendError(f"{spec.file}: graph inputs {sorted(have)} differ from the manifest's "
                               f"{sorted(want)}; the bundle is inconsistent, re-export it")
        self._outputs = [s.name for s in spec.outputs.values()]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))


def ort_providers() -> list[str]:
    """onnxruntime's execution providers installed here ([] when onnxruntime is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def resolve_backend(requested: str, bundle: Bundle) -> str:
    """The concrete backend ('cpu', 'cuda' or 'tensorrt') for ``requested``.

    Raises BackendError naming the reason when an explicitly requested backend is unusable.
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
        raise BackendError("onnxruntime is not installed; `pip install onnxruntime` (or onnxruntime-gpu)")
    if requested == "cuda" and "CUDAExecutionProvider" not in providers:
        raise BackendError("--backend cuda needs onnxruntime's CUDAExecutionProvider; install onnxruntime-gpu "
                           f"(installed providers: {', '.join(providers)})")
    if requested == "auto":
        return "cuda" if "CUDAExecutionProvider" in providers else "cpu"
    return requested


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
