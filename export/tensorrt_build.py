"""TensorRT engines for a bundle: building them (``ucofia export --trt``).

Follows TensorRT's Python build flow: ``trt.Builder`` -> network from ``trt.OnnxParser`` ->
builder config (workspace memory-pool limit, timing cache, one optimisation profile giving
min/opt/max for every dynamic axis) -> ``build_serialized_network`` -> ``<graph>.plan`` next to
the ONNX file.

Precision: every network is *strongly typed*, so the ONNX graph decides each tensor's type — a
float32 bundle builds a float32 engine, a float16 bundle keeps its float32 islands (LayerNorm,
softmax, top-k, the scorer) in float32. TensorRT 10.x needs the ``STRONGLY_TYPED`` creation flag
for that (with ``BuilderFlag.FP16`` instead, weak typing — deprecated since 10.12 — lets TensorRT
run float32 layers in float16); TensorRT 11.x removed weak typing and ``BuilderFlag.FP16``, and
every network is strongly typed. TF32 is switched off where the flag exists (it rounds float32
matrix products to 10-bit mantissas). The API is detected, not the version.

Timing cache: by default one file per TensorRT version and GPU in the user cache directory
(``$XDG_CACHE_HOME/ucofia/tensorrt``, else ``~/.cache/ucofia/tensorrt``), so a re-export on the
same machine reuses the measured tactics; a cache TensorRT refuses (another GPU or version) is
replaced by a fresh one.

Engines only run on the GPU model / TensorRT version that built them: the manifest section
records them as the runtime checks them (``runtime.backends.tensorrt_engines``, which also loads
engines). ``tensorrt`` is imported lazily (optional extra).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from runtime.backends.tensorrt_engines import TensorRTError, engine_target, import_tensorrt
from runtime.bundle.contract import SCORER, TEXT_ENCODER, TEXTS_AXIS, VIDEOS_AXIS, GraphSpec
from ucofia.io_utils import atomic_write_bytes

PLAN_SUFFIX = ".plan"
CACHE_SUBDIR = ("ucofia", "tensorrt")
GIB = 1 << 30

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisRange:
    """min/opt/max size of one dynamic axis in the optimisation profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (isinstance(self.min, int) and isinstance(self.opt, int) and isinstance(self.max, int)):
            raise ValueError(f"profile sizes must be integers, got {self}")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"profile sizes need 1 <= min <= opt <= max, got min={self.min} "
                             f"opt={self.opt} max={self.max}")


@dataclass(frozen=True)
class TrtBuildOptions:
    """Engine build settings (CLI: --min/--opt/--max-texts, ...-videos, --scorer-opt/max-texts|videos,
    --workspace-gib, --timing-cache).

    ``texts``/``videos``: the encoders' profile (a text-encoder call encodes a query batch, a
    video-encoder call a decode batch). ``scorer_texts``/``scorer_videos``: the scorer's own profile,
    sized for scoring tiles (texts x stored videos), which the runtime's tile planner follows.
    """

    texts: AxisRange = AxisRange(1, 16, 64)
    videos: AxisRange = AxisRange(1, 4, 16)
    scorer_texts: AxisRange = AxisRange(1, 16, 64)
    scorer_videos: AxisRange = AxisRange(1, 256, 1024)
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # None: default_timing_cache(...) in the user cache directory

    def __post_init__(self) -> None:
        if not self.workspace_gib > 0:
            raise ValueError(f"workspace must be positive, got {self.workspace_gib} GiB")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * GIB)

    def axis_ranges(self, key: str = TEXT_ENCODER) -> dict[str, AxisRange]:
        """The dynamic-axis ranges of graph ``key``'s profile."""
        if key == SCORER:
            return {TEXTS_AXIS: self.scorer_texts, VIDEOS_AXIS: self.scorer_videos}
        return {TEXTS_AXIS: self.texts, VIDEOS_AXIS: self.videos}


def input_profiles(spec: GraphSpec, ranges: dict[str, AxisRange]) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes of every input of ``spec`` (dynamic axes from ``ranges``)."""
    out = {}
    for tensor in spec.inputs.values():
        shapes = {}
        for which in ("min", "opt", "max"):
            dims = []
            for d in tensor.shape:
                if isinstance(d, str):
                    if d not in ranges:
                        raise ValueError(f"no profile range for dynamic axis {d!r} of {tensor.name}")
                    dims.append(getattr(ranges[d], which))
                else:
                    dims.append(int(d))
            shapes[which] = dims
        out[tensor.name] = shapes
    return out


@dataclass(frozen=True)
class PrecisionPlan:
    """How the network and builder config are set up for a dtype on the installed TensorRT."""

    mode: str
    network_flags: int = 0
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()


def precision_plan(trt: ModuleType, dtype: str) -> PrecisionPlan:
    """A strongly typed network on every TensorRT >= 10, so the ONNX graph's casts decide precision.

    10.x (``BuilderFlag.FP16`` still there, weak typing possible): the ``STRONGLY_TYPED`` network
    creation flag. 11.x (no ``BuilderFlag.FP16``): networks are always strongly typed and the
    flag is deprecated, so none is passed. No precision builder flag is ever set; TF32 is cleared.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"unsupported engine dtype {dtype!r}")
    clear = ("TF32",) if hasattr(trt.BuilderFlag, "TF32") else ()
    what = "float32 engine" if dtype == "float32" else "float16 with float32 islands, as the ONNX graph casts"
    if not hasattr(trt.BuilderFlag, "FP16"):
        return PrecisionPlan(f"{what}; strongly typed network (TensorRT 11.x: always)", clear_flags=clear)
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is None or not hasattr(creation, "STRONGLY_TYPED"):
        raise TensorRTError(f"TensorRT {getattr(trt, '__version__', '?')} cannot build strongly typed networks; "
                            "install TensorRT 10 or newer (`pip install 'tensorrt>=10'`)")
    return PrecisionPlan(f"{what}; strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED)",
                         network_flags=1 << int(creation.STRONGLY_TYPED), clear_flags=clear)


def device_info() -> dict[str, str]:
    """{"gpu": name, "compute_capability": "major.minor"} of CUDA device 0.

    Uses torch when it can see CUDA, else ``nvidia-smi``; raises TensorRTError without a GPU.
    """
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            line = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
            name, cap = (part.strip() for part in line.rsplit(",", 1))
            return {"gpu": name, "compute_capability": cap}
        except (subprocess.SubprocessError, IndexError, ValueError):
            pass
    raise TensorRTError("no CUDA GPU found: TensorRT engines must be built and run on an NVIDIA GPU")


def _parse(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, flags: int) -> Any:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT's ONNX parser rejected {onnx_path.name}:\n  " + "\n  ".join(errors))
    return network, parser


def build_engine(trt: ModuleType, onnx_path: Path, plan_path: Path, spec: GraphSpec,
                 ranges: dict[str, AxisRange], plan: PrecisionPlan, workspace_bytes: int,
                 timing_cache: bytes) -> tuple[dict[str, Any], bytes]:
    """Build one engine; return (its manifest entry, the updated serialized timing cache).

    A timing cache TensorRT refuses (``set_timing_cache`` returns False: built on another GPU or
    TensorRT) is replaced by an empty one; when the config holds no cache afterwards
    (``get_timing_cache`` is None) the cache passed in is returned unchanged.
    """
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, plan.network_flags)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    _attach_timing_cache(config, timing_cache, onnx_path.name)
    profile = builder.create_optimization_profile()
    shapes = input_profiles(spec, ranges)
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    data = bytes(serialized)
    plan_path.write_bytes(data)
    used = config.get_timing_cache()
    new_cache = bytes(used.serialize()) if used is not None else timing_cache
    entry = {"file": plan_path.name, "onnx": onnx_path.name, "profile": shapes, "bytes": len(data),
             "build_seconds": round(time.perf_counter() - start, 2)}
    return entry, new_cache


def _attach_timing_cache(config: Any, data: bytes, what: str) -> None:
    """Give ``config`` the serialized cache ``data``; a cache TensorRT refuses (``set_timing_cache``
    returns False: another GPU or TensorRT wrote it) is replaced by a fresh one."""
    if config.set_timing_cache(config.create_timing_cache(data), False):
        return
    if data:
        logger.warning("TensorRT refused the timing cache (written on another GPU or TensorRT version); "
                       "building %s with a fresh one", what)
        if config.set_timing_cache(config.create_timing_cache(b""), False):
            return
    logger.warning("TensorRT refused an empty timing cache; building %s without one", what)


def default_timing_cache(trt_version: str, device: dict[str, str]) -> Path:
    """The timing cache file for this TensorRT version and GPU in the user cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    gpu = re.sub(r"[^A-Za-z0-9.]+", "-", str(device.get("gpu", "gpu"))).strip("-")
    name = f"timing-trt{trt_version}-sm{device.get('compute_capability', '?')}-{gpu}.cache"
    return base.joinpath(*CACHE_SUBDIR, name)


def _dynamic_axes(spec: GraphSpec) -> set[str]:
    return {d for tensor in spec.inputs.values() for d in tensor.shape if isinstance(d, str)}


def build_engines(directory: Path, specs: dict[str, GraphSpec], dtype: str, options: TrtBuildOptions,
                  trt: ModuleType | None = None, device: dict[str, str] | None = None) -> dict[str, Any]:
    """Build ``<graph>.plan`` for every graph in ``directory``; return the manifest's tensorrt section.

    The timing cache (``options.timing_cache``, else ``default_timing_cache``) is read before the
    first build and written back (atomically) after the last one; problems with it are logged.
    """
    trt = trt or import_tensorrt()
    device = device or device_info()
    plan = precision_plan(trt, dtype)
    cache_path = (Path(options.timing_cache) if options.timing_cache
                  else default_timing_cache(str(trt.__version__), device))
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    reused = len(cache)
    engines = {}
    for key, spec in specs.items():
        onnx_path = Path(directory) / spec.file
        plan_path = onnx_path.with_suffix(PLAN_SUFFIX)
        engines[key], cache = build_engine(trt, onnx_path, plan_path, spec, options.axis_ranges(key), plan,
                                           options.workspace_bytes, cache)
    if cache:
        try:
            atomic_write_bytes(cache_path, cache)
        except OSError as exc:  # a read-only cache directory must not fail the export
            logger.warning("could not save the TensorRT timing cache to %s: %s", cache_path, exc)
    return {
        **engine_target(str(trt.__version__), device),
        "precision": plan.mode,
        "dtype": dtype,
        "workspace_bytes": options.workspace_bytes,
        "timing_cache": {"path": str(cache_path), "bytes_read": reused, "bytes_written": len(cache)},
        "axes": {key: {name: {"min": r.min, "opt": r.opt, "max": r.max}
                       for name, r in options.axis_ranges(key).items() if name in _dynamic_axes(spec)}
                 for key, spec in specs.items()},
        "engines": engines,
    }
