"""Which backend runs a bundle's graphs here (``--backend``), and opening a session on it.

  auto      TensorRT when ``tensorrt`` imports and the manifest has engines built for this GPU and
            TensorRT version, else onnxruntime CUDA when it really runs here, else CPU (with a
            logged note saying why when CUDA was expected, and one when the bundle's engines were
            skipped: built for another GPU or TensorRT release, or TensorRT missing).
  cpu       onnxruntime CPUExecutionProvider.
  cuda      onnxruntime CUDAExecutionProvider (needs onnxruntime-gpu); error when it cannot run.
  tensorrt  the manifest's TensorRT engines; error naming the mismatch when they cannot be used.
"""
from __future__ import annotations

import logging
import os

from runtime.backends.base import WORDS, GraphSession
from runtime.backends.ort import (
    OrtSession,
    cuda_expected,
    cuda_problem,
    onnxruntime_unusable_reason,
    preload_cuda_libraries,
)
from runtime.backends.precision import (
    DEFAULT_SCORER_PRECISION,
    FLOAT32,
    INT8,
    PATCHES,
    check_scorer_precision,
    int8_scorer_model,
)
from runtime.backends.tensorrt_engines import tensorrt_unusable_reason
from runtime.backends.tensorrt_session import TensorRTSession
from runtime.backends.text_side import split_scorer, text_side_spec
from runtime.bundle import Bundle
from runtime.bundle.contract import SCORER, GraphSpec
from runtime.errors import BackendError

logger = logging.getLogger(__name__)

# Scoring work (text x video pairs) above which a one-off command cuts the CPU scorer's text side
# out: the cut imports onnx (~0.5 s, most of it ml_dtypes), and saves ~3.5 % of scoring, ~0.35 us
# a pair at ViT-B/32 on 2 cores (benchmarks/results/scoring_layouts_vit_b32_split_quiet.json), so
# it pays from about 1.5e6 pairs. Long-lived processes (the service, shards) always cut it.
SPLIT_MIN_PAIRS = 1_500_000

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")
THREADS_ENV = "UCOFIA_RUN_THREADS"


def resolve_backend(requested: str, bundle: Bundle) -> str:
    """The concrete backend ('cpu', 'cuda' or 'tensorrt') for ``requested``.

    Raises BackendError naming the reason when an explicitly requested backend is unusable. With
    ``auto``, logs a warning when a GPU backend was expected but the CPU is used.
    """
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested in ("auto", "tensorrt"):
        reason = tensorrt_unusable_reason(bundle)
        if reason is None:
            return "tensorrt"
        if requested == "tensorrt":
            raise BackendError(f"--backend tensorrt is unavailable: {reason}")
        if bundle.tensorrt and bundle.tensorrt.get("engines"):
            logger.warning("note: not using the bundle's TensorRT engines: %s", reason)
    missing = onnxruntime_unusable_reason()
    if missing:
        raise BackendError(missing)
    if requested == "cpu":
        return "cpu"
    problem = cuda_problem(bundle)
    if requested == "cuda":
        if problem:
            raise BackendError(f"--backend cuda is unavailable: {problem}")
        return "cuda"
    if problem is None:
        return "cuda"
    if cuda_expected():
        logger.warning("note: running on the CPU: %s", problem)
    return "cpu"


def open_session(bundle: Bundle, key: str, backend: str = "auto", threads: int | None = None,
                 precision: str = DEFAULT_SCORER_PRECISION, spinning: bool = True,
                 split_text_side: bool = False) -> GraphSession:
    """A session for graph ``key`` ('text_encoder', 'video_encoder' or 'scorer') of ``bundle``.

    ``threads``: onnxruntime intra-op threads (default: $UCOFIA_RUN_THREADS, else onnxruntime's).
    ``precision``: the scorer's (``--scorer-precision``, runtime.backends.precision); float32 for
    every other graph. ``spinning``: onnxruntime's idle intra-op threads spin (its default) or sleep
    (onnxruntime backends; the CPU scorer runs single-threaded sessions, which have no such threads).
    ``split_text_side``: cut the float32 CPU scorer's text side out (runtime.backends.text_side),
    for processes that score a lot: it saves ~3.5 % of scoring but costs ~0.5 s once, importing
    onnx (``SPLIT_MIN_PAIRS``).
    """
    resolved = resolve_backend(backend, bundle)
    spec = bundle.graphs[key]
    check_scorer_precision(precision, resolved, bundle.dtype)
    if precision == INT8 and key != SCORER:
        raise BackendError(f"--scorer-precision applies to the scorer graph only, not {key}")
    if resolved == "tensorrt":
        preload_cuda_libraries()
        return TensorRTSession.from_bundle(spec, bundle)
    # the export records graph optimizers that break its float16 graphs on onnxruntime's CPU provider
    hints = bundle.manifest.get("onnxruntime") or {}
    disabled = hints.get("cpu_disabled_optimizers") if resolved == "cpu" else None
    threads = threads or _env_threads()
    if key == SCORER and resolved == "cpu":
        return cpu_scorer_session(spec, threads or available_cpus(), disabled, precision, split_text_side)
    return OrtSession(spec, resolved, threads=threads, disabled_optimizers=disabled, spinning=spinning)


def cpu_scorer_session(spec: GraphSpec, runs: int, disabled: list[str] | None = None,
                       precision: str = DEFAULT_SCORER_PRECISION, split_text_side: bool = True) -> GraphSession:
    """The scorer on onnxruntime's CPU backend for ``runs`` concurrent tiles.

    Scorer tiles are independent: one single-threaded run per core, each on its own cache-sized
    tile, beats splitting every small op of one tile across threads. With ``split_text_side`` the
    float32 graph's text side is cut out (runtime.backends.text_side) so that it runs once per
    scoring call, on ``runs`` threads that sleep between calls."""
    def tiles(model: bytes | None = None) -> OrtSession:
        return OrtSession(spec, "cpu", threads=1, disabled_optimizers=disabled, concurrency=runs, model=model,
                          precision=precision)

    if precision == INT8:
        return tiles(int8_scorer_model(spec.file, spec.inputs[PATCHES].name))
    if not split_text_side or spec.inputs[WORDS].dtype != FLOAT32:  # float16 bundles are for GPUs: kept whole
        return tiles()
    split = split_scorer(spec.file, spec.inputs[WORDS].name, spec.inputs[PATCHES].name)
    if split is None:
        logger.debug("%s: the scorer graph runs whole (its text side was not recognised)", spec.file)
        return tiles()
    session = tiles(split.rest)
    session.text_side = OrtSession(text_side_spec(spec, split, WORDS), "cpu", threads=runs,
                                   disabled_optimizers=disabled, model=split.text_side, spinning=False)
    return session


def split_pays_off(pairs: int) -> bool:
    """Whether a one-off command that will score ``pairs`` text x video pairs should cut the CPU
    scorer's text side out (``SPLIT_MIN_PAIRS``)."""
    return pairs >= SPLIT_MIN_PAIRS


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> int | None:
    value = os.environ.get(THREADS_ENV)
    return int(value) if value else None
