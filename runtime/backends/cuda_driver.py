"""GPU 0 through the CUDA driver API (libcuda via ctypes): its name and compute capability, device
buffers, copies and a stream. Lets the TensorRT backend run without torch, cupy or pycuda."""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from runtime.errors import BackendError

_CU_ATTR_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_CU_ATTR_CC_MINOR = 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
_NAME_BYTES = 256
_context = ctypes.c_void_p()


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    """libcuda, initialised once per process with device 0's primary context retained in ``_context``
    (a failure raises and is retried on the next call: lru_cache keeps results only)."""
    lib = ctypes.CDLL("libcuda.so.1")
    _check(lib.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(_context), dev), "cuDevicePrimaryCtxRetain")
    return lib


def _driver() -> ctypes.CDLL:
    """libcuda with the primary context of device 0 current on the calling thread (raises OSError /
    BackendError). A CUDA context is current per thread, so every call makes it current again."""
    lib = _library()
    _check(lib.cuCtxSetCurrent(_context), "cuCtxSetCurrent")
    return lib


def _check(code: int, what: str) -> None:
    if code != 0:
        raise BackendError(f"CUDA driver call {what} failed with error {code}")


def gpu_device() -> dict[str, str]:
    """{"gpu": name, "compute_capability": "major.minor"} of GPU 0, read through libcuda.

    Raises OSError / BackendError without an NVIDIA driver or GPU.
    """
    lib = _driver()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, 0), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, 0), "cuDeviceGetAttribute")
    name = ctypes.create_string_buffer(_NAME_BYTES)
    _check(lib.cuDeviceGetName(name, len(name), 0), "cuDeviceGetName")
    return {"gpu": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}


class CudaMemory:
    """Device buffers, host<->device copies and one CUDA stream, through libcuda (no torch/cupy)."""

    def __init__(self) -> None:
        self._lib = _driver()
        stream = ctypes.c_void_p()
        _check(self._lib.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
        self.stream = int(stream.value or 0)

    def alloc(self, nbytes: int) -> int:
        """A device buffer of ``nbytes``; the first call of every engine run, so it also makes the
        context current on the running thread."""
        _driver()
        ptr = ctypes.c_uint64()
        _check(self._lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self._lib.cuMemFree_v2(ctypes.c_uint64(ptr))

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        _check(self._lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), host.ctypes.data_as(ctypes.c_void_p),
                                         ctypes.c_size_t(host.nbytes)), "cuMemcpyHtoD")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        _check(self._lib.cuMemcpyDtoH_v2(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                                         ctypes.c_size_t(host.nbytes)), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        _check(self._lib.cuStreamSynchronize(ctypes.c_void_p(self.stream)), "cuStreamSynchronize")
