"""Which CUDA and cuDNN libraries onnxruntime-gpu's CUDA provider needs, and whether this process finds
them (for ``ucofia-run doctor``; no torch).

The list follows what onnxruntime-gpu loads (``onnxruntime.preload_dlls`` on Linux, and the
``NEEDED`` entries of ``libonnxruntime_providers_cuda.so``): for a build recording CUDA major M
(``onnxruntime.capi.build_and_package_info.cuda_version``) the CUDA runtime, cuBLAS and cuBLASLt of
major M, cuRAND 10, cuFFT (11 for CUDA 12, 12 for CUDA 13) and cuDNN 9. From CUDA 13 on, NVIDIA
ships them as unsuffixed pip packages (``nvidia-cuda-runtime``, ``nvidia-cublas``, ...); cuDNN keeps
its suffix (``nvidia-cudnn-cu13``). onnxruntime-gpu's own extras (``[cuda,cudnn]``) pull them.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

DRIVER_LIBRARY = "libcuda.so.1"
CUDNN_MAJOR = 9


@dataclass(frozen=True)
class CudaLibrary:
    """One shared library onnxruntime's CUDA provider needs, and the pip package that ships it."""

    soname: str
    package: str
    what: str


def cuda_major(cuda_version: str | None) -> int | None:
    """12 for "12.8", 13 for "13.0"; None when unknown or empty (a CPU build)."""
    head = (cuda_version or "").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def required_libraries(major: int) -> list[CudaLibrary]:
    """The CUDA/cuDNN libraries a CUDA-``major`` build of onnxruntime-gpu loads, in load order."""
    suffix = "" if major >= 13 else f"-cu{major}"
    cufft = 12 if major >= 13 else 11
    return [
        CudaLibrary(f"libcublasLt.so.{major}", f"nvidia-cublas{suffix}", f"cuBLASLt (CUDA {major})"),
        CudaLibrary(f"libcublas.so.{major}", f"nvidia-cublas{suffix}", f"cuBLAS (CUDA {major})"),
        CudaLibrary("libcurand.so.10", f"nvidia-curand{suffix}", "cuRAND 10"),
        CudaLibrary(f"libcufft.so.{cufft}", f"nvidia-cufft{suffix}", f"cuFFT {cufft}"),
        CudaLibrary(f"libcudart.so.{major}", f"nvidia-cuda-runtime{suffix}", f"CUDA runtime {major}"),
        CudaLibrary(f"libcudnn.so.{CUDNN_MAJOR}", f"nvidia-cudnn-cu{major}", f"cuDNN {CUDNN_MAJOR}"),
    ]


def loaded_path(soname: str) -> str | None:
    """Where ``soname`` is mapped in this process (Linux /proc/self/maps), else None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if Path(path).name == soname:
                    return path
    except OSError:
        pass
    return None


def find_library(soname: str) -> str | None:
    """Where the dynamic loader finds ``soname`` for this process (loading it), else None."""
    path = loaded_path(soname)
    if path:
        return path
    try:
        ctypes.CDLL(soname)
    except OSError:
        return None
    return loaded_path(soname) or soname


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_report(major: int, onnxruntime_gpu_version: str | None) -> list[dict[str, str | None]]:
    """For each library of ``required_libraries(major)``: where it was found, or the fix."""
    fix = (f"{sys.executable} -m pip install 'onnxruntime-gpu[cuda,cudnn]=={onnxruntime_gpu_version}'"
           if onnxruntime_gpu_version else f"{sys.executable} -m pip install 'onnxruntime-gpu[cuda,cudnn]'")
    rows = []
    for lib in required_libraries(major):
        path = find_library(lib.soname)
        rows.append({"library": lib.soname, "what": lib.what, "path": path, "package": lib.package,
                     "package_version": package_version(lib.package),
                     "fix": None if path else (f"install {lib.package} ({fix} brings it), or put a CUDA "
                                               f"{major}.x / cuDNN {CUDNN_MAJOR} installation on LD_LIBRARY_PATH")})
    return rows
