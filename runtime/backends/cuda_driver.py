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
    """Device buffers, page-locked host buffers, asynchronous copies and one CUDA stream, through
    libcuda (no torch/cupy).

    A CUDA context is current per thread: ``make_current`` must run on the calling thread before
    the other calls (``TensorRTSession`` calls it at the start of every run). Copies are queued on
    ``stream``: their results are visible only after ``synchronize``, and a host buffer handed to
    an asynchronous copy must not be changed until then.
    """

    def __init__(self) -> None:
        self._lib = _driver()
        stream = ctypes.c_void_p()
        _check(self._lib.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
        self.stream = int(stream.value or 0)

    def make_current(self) -> None:
        """Make device 0's primary context current on the calling thread."""
        _driver()

    def alloc(self, nbytes: int) -> int:
        """A device buffer of ``nbytes`` (at least 1)."""
        ptr = ctypes.c_uint64()
        _check(self._lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self._lib.cuMemFree_v2(ctypes.c_uint64(ptr))

    def alloc_host(self, nbytes: int) -> np.ndarray:
        """A page-locked (pinned) host buffer of ``nbytes`` as a uint8 array (free with ``free_host``)."""
        ptr = ctypes.c_void_p()
        _check(self._lib.cuMemAllocHost_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAllocHost")
        return np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(int(ptr.value or 0)))

    def free_host(self, host: np.ndarray) -> None:
        self._lib.cuMemFreeHost(ctypes.c_void_p(host.ctypes.data))

    def to_device_async(self, ptr: int, host: np.ndarray) -> None:
        """Queue a copy of ``host`` (pinned, unchanged until ``synchronize``) to device ``ptr``."""
        _check(self._lib.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(ptr), host.ctypes.data_as(ctypes.c_void_p),
                                              ctypes.c_size_t(host.nbytes), ctypes.c_void_p(self.stream)),
               "cuMemcpyHtoDAsync")

    def to_host_async(self, host: np.ndarray, ptr: int) -> None:
        """Queue a copy of device ``ptr`` into ``host`` (pinned); its content is there after ``synchronize``."""
        _check(self._lib.cuMemcpyDtoHAsync_v2(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                                              ctypes.c_size_t(host.nbytes), ctypes.c_void_p(self.stream)),
               "cuMemcpyDtoHAsync")

    def synchronize(self) -> None:
        _check(self._lib.cuStreamSynchronize(ctypes.c_void_p(self.stream)), "cuStreamSynchronize")

    def close(self) -> None:
        """Destroy the stream (the buffers are the caller's to free first)."""
        if self.stream:
            self._lib.cuStreamDestroy_v2(ctypes.c_void_p(self.stream))
            self.stream = 0


def device_memory() -> tuple[int, int]:
    """(free, total) bytes of GPU 0's memory (``cuMemGetInfo``)."""
    lib = _driver()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    _check(lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
    return int(free.value), int(total.value)
