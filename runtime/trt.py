"""TensorRT engine backend (optional): runs the engines the export built, without torch.

The manifest's ``tensorrt`` section (written by ``export.tensorrt_build.build_engines``) names the
TensorRT version, GPU model and compute capability the engines were built with. The compatibility
check and the guarded engine loading are the export's own (``compatibility_problem`` /
``load_engine``), fed with this GPU's name and capability read through the CUDA driver API
(libcuda), so torch is never imported. Device memory is handled through libcuda too (no torch /
cupy / pycuda needed). Anything that does not fit makes ``tensorrt_unusable_reason`` name it, and
``--backend auto`` then falls back to onnxruntime.
"""
from __future__ import annotations

import ctypes

import numpy as np

from export.tensorrt_build import TensorRTError, compatibility_problem, load_engine
from runtime.backends import GraphSession
from runtime.bundle import GRAPH_ROLES, Bundle, GraphSpec
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


def gpu_device() -> dict[str, str]:
    """{"gpu": name, "compute_capability": "major.minor"} of GPU 0, read through libcuda.

    Raises OSError / BackendError without an NVIDIA driver or GPU.
    """
    lib = _driver()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, 0), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, 0), "cuDeviceGetAttribute")
    name = ctypes.create_string_buffer(256)
    _check(lib.cuDeviceGetName(name, len(name), 0), "cuDeviceGetName")
    return {"gpu": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}


def tensorrt_unusable_reason(bundle: Bundle) -> str | None:
    """None when the manifest's TensorRT engines can run here, else why not (one sentence)."""
    section = bundle.tensorrt
    if not section or not section.get("engines"):
        return "the bundle has no TensorRT engines (export with `ucofia export ... --trt` on the target GPU)"
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt Python package is not installed (`pip install tensorrt`)"
    try:
        device = gpu_device()
    except (OSError, BackendError) as exc:
        return f"no usable NVIDIA GPU ({exc})"
    problem = compatibility_problem(section, str(trt.__version__), device)
    if problem:
        return problem
    for key in GRAPH_ROLES:
        entry = section["engines"].get(key)
        if not entry or not (bundle.root / entry["file"]).is_file():
            return f"the engine for {key} is missing from {bundle.root} (named by manifest.json tensorrt.engines)"
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
        try:
            engine = load_engine(bundle.root, spec.key, trt, gpu_device())
        except TensorRTError as exc:
            raise BackendError(str(exc)) from None
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

