"""TensorRT engine backend (optional): runs the engines the export built, without torch.

The manifest's ``tensorrt`` section is expected as::

    {"version": "<tensorrt.__version__ at build>", "compute_capability": "9.0",
     "device": "<GPU name>", "engines": {"scorer": {"file": "scorer.plan"}, ...}}

Engines only run on the TensorRT version and GPU architecture they were built for; anything else
makes ``tensorrt_unusable_reason`` name the mismatch (auto falls back to onnxruntime). Device
memory is handled through the CUDA driver API (libcuda, present wherever the driver is), so no
torch / cupy / pycuda is needed.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
import numpy as np

from runtime.backends import GraphSession
from runtime.bundle import Bundle, GraphSpec
from runtime.errors import BackendError

_CU_ATTR_CC_MAJOR = 75
_CU_ATTR_CC_MINOR = 76
_cuda: ctypes.CDLL | None = None


def _driver() -> ctypes.CDLL:
    """libcuda with a current primary context on device 0 (raises OSError / BackendError)."""
    global _cuda
    if _cuda is None:
        lib = ctypes.CDLL("libcuda.so.1")
        _check(lib.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        ctx = ctypes.c_void_p()
        _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        _cuda = lib
    return _cuda


def _check(code: int, what: str) -> None:
    if code != 0:
        raise BackendError(f"CUDA driver call {what} failed with error {code}")


def gpu_compute_capability() -> str:
    """'major.minor' of GPU 0 (raises OSError when no NVIDIA driver is installed)."""
    lib = _driver()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, 0), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, 0), "cuDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


def _engine_file(bundle: Bundle, key: str) -> Path:
    entry = (bundle.tensorrt or {}).get("engines", {}).get(key)
    name = entry.get("file") if isinstance(entry, dict) else entry
    if not name:
        raise BackendError(f"{bundle.root}/manifest.json: tensorrt.engines has no engine for {key!r}")
    return bundle.root / str(name)


def tensorrt_unusable_reason(bundle: Bundle) -> str | None:
    """None when the manifest's TensorRT engines can run here, else why not (one sentence)."""
    section = bundle.tensorrt
    if not section or not section.get("engines"):
        return "the bundle has no TensorRT engines (export with --tensorrt on the target GPU)"
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt Python package is not installed (`pip install tensorrt`)"
    if str(section.get("version")) != trt.__version__:
        return (f"the engines were built with TensorRT {section.get('version')} but TensorRT "
                f"{trt.__version__} is installed; rebuild them on this machine")
    try:
        capability = gpu_compute_capability()
    except (OSError, BackendError) as exc:
        return f"no usable NVIDIA GPU ({exc})"
    if str(section.get("compute_capability")) != capability:
        return (f"the engines were built for compute capability {section.get('compute_capability')} "
                f"({section.get('device', 'unknown GPU')}) but this GPU is {capability}; rebuild them here")
    for key in ("text_encoder", "video_encoder", "scorer"):
        if not _engine_file(bundle, key).is_file():
            return f"engine file {_engine_file(bundle, key)} is missing"
    return None


class _DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.ptr = ctypes.c_uint64()
        _check(_driver().cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")

    def free(self) -> None:
        if self.ptr.value:
            _driver().cuMemFree_v2(self.ptr)
            self.ptr = ctypes.c_uint64()


class TensorRTSession(GraphSession):
    """Runs one serialized TensorRT engine (TensorRT >= 10 tensor API)."""

    backend = "tensorrt"

    def __init__(self, spec: GraphSpec, bundle: Bundle) -> None:
        import tensorrt as trt

        super().__init__(spec)
        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        path = _engine_file(bundle, spec.key)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize {path}; rebuild the engine on this machine")
        self._engine = engine
        self._context = engine.create_execution_context()

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, ctx, lib = self._trt, self._context, _driver()
        buffers: list[_DeviceBuffer] = []
        outputs: dict[str, np.ndarray] = {}
        try:
            for name, array in feeds.items():
                want = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                host = np.ascontiguousarray(array, dtype=want)
                buf = _DeviceBuffer(host.nbytes)
                buffers.append(buf)
                _check(lib.cuMemcpyHtoD_v2(buf.ptr, host.ctypes.data_as(ctypes.c_void_p),
                                           ctypes.c_size_t(host.nbytes)), "cuMemcpyHtoD")
                ctx.set_input_shape(name, host.shape)
                ctx.set_tensor_address(name, buf.ptr.value)
            for spec in self.spec.outputs.values():
                shape = tuple(ctx.get_tensor_shape(spec.name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(spec.name)))
                outputs[spec.name] = np.empty(shape, dtype=dtype)
                buf = _DeviceBuffer(outputs[spec.name].nbytes)
                buffers.append(buf)
                ctx.set_tensor_address(spec.name, buf.ptr.value)
            if not ctx.execute_async_v3(0):
                raise BackendError(f"TensorRT failed to run the {self.spec.key} engine")
            _check(lib.cuCtxSynchronize(), "cuCtxSynchronize")
            out_buffers = buffers[len(feeds):]
            for (name, host), buf in zip(outputs.items(), out_buffers):
                _check(lib.cuMemcpyDtoH_v2(host.ctypes.data_as(ctypes.c_void_p), buf.ptr,
                                           ctypes.c_size_t(host.nbytes)), "cuMemcpyDtoH")
            return outputs
        finally:
            for buf in buffers:
                buf.free()

