"""A fake ``tensorrt`` runtime and a fake CUDA driver for ``runtime.backends.tensorrt_session.TensorRTSession``
tests (no GPU, no TensorRT).

``FakeCudaMemory`` stands in for ``runtime.backends.cuda_driver.CudaMemory`` and behaves like the CUDA
driver where it matters:

* a context is current per thread: every call but ``make_current`` fails (``BackendError`` with
  CUDA_ERROR_INVALID_CONTEXT, 201) on a thread that has not made it current;
* device buffers are host arrays in ``BUFFERS`` (by fake address); ``alloc_host`` returns page-locked
  ("pinned") buffers, and an asynchronous copy from or to anything else is counted in
  ``pageable_copies`` (the real driver falls back to a synchronous staged copy);
* copies and engine executions are queued on the memory's stream and happen at ``synchronize``, in
  order: a host buffer read before the stream is synchronised holds what it held before (outputs
  are not there yet), and a pinned input changed before then changes what the device receives;
* every device allocation is counted (``allocations``) and ``device_bytes()`` sums live buffers.

The fake engine behaves like a TensorRT 10/11 engine built with one optimisation profile: its
execution context's ``set_input_shape`` returns False for a shape outside the profile (or of the
wrong rank / static size), ``set_tensor_address`` returns False for an address that was never
allocated, ``get_tensor_shape`` reports -1 for output axes until the inputs they depend on are set,
and ``execute_async_v3`` returns False unless the calling thread has a current context, the stream
is a live one and every tensor has a valid shape and a buffer large enough for its dtype. It
computes with onnxruntime (CPU) on the bundle's ONNX graph and records every execution's shapes
and addresses.

A "plan" file is JSON: {"onnx": file name, "profile": {input: {"min", "opt", "max"}}, "fail": ...,
"perturb": {output: amount}} where "fail" (optional) is one of "shape", "address", "execute",
"output_shape", and "perturb" (optional) adds ``amount`` to an output (a numerically wrong engine).
"""
from __future__ import annotations

import itertools
import json
import threading
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from runtime.errors import BackendError

# fake device address -> uint8 buffer of every live device allocation (shared with the fake contexts)
BUFFERS: dict[int, np.ndarray] = {}
# data address -> size of every live pinned host allocation
PINNED: dict[int, int] = {}
# stream handle -> the FakeCudaMemory that owns it
STREAMS: dict[int, FakeCudaMemory] = {}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}
_ADDRESSES = itertools.count(0x7F0000000000, 0x100000)
_STREAM_HANDLES = itertools.count(7)
_CURRENT = threading.local()  # .context: whether the primary context is current on this thread


def _require_context(call: str) -> None:
    if not getattr(_CURRENT, "context", False):
        raise BackendError(f"CUDA driver call {call} failed with error 201 (CUDA_ERROR_INVALID_CONTEXT: no context "
                           "current on this thread)")


def release_context() -> None:
    """Forget the calling thread's current context (as a fresh thread would have none)."""
    _CURRENT.context = False


def _pinned(host: np.ndarray) -> bool:
    start = host.ctypes.data
    return any(base <= start and start + host.nbytes <= base + size for base, size in PINNED.items())


class FakeCudaMemory:
    """Stands in for ``runtime.backends.cuda_driver.CudaMemory`` (see the module doc)."""

    def __init__(self) -> None:
        _CURRENT.context = True  # the real constructor makes the context current on its thread
        self.stream = next(_STREAM_HANDLES)
        STREAMS[self.stream] = self
        self.queue: list[Callable[[], None]] = []
        self.allocations = 0
        self.live: set[int] = set()  # this memory's device buffers and pinned buffers not freed yet
        self.pageable_copies = 0
        self.synchronizations = 0

    def make_current(self) -> None:
        _CURRENT.context = True

    def alloc(self, nbytes: int) -> int:
        _require_context("cuMemAlloc")
        ptr = next(_ADDRESSES)
        BUFFERS[ptr] = np.full(max(nbytes, 1), 0xFF, np.uint8)  # garbage until written
        self.allocations += 1
        self.live.add(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        _require_context("cuMemFree")
        del BUFFERS[ptr]
        self.live.remove(ptr)

    def alloc_host(self, nbytes: int) -> np.ndarray:
        _require_context("cuMemAllocHost")
        host = np.full(max(nbytes, 1), 0xFF, np.uint8)  # garbage (NaN as float) until written
        PINNED[host.ctypes.data] = host.nbytes
        self.live.add(host.ctypes.data)
        return host

    def free_host(self, host: np.ndarray) -> None:
        _require_context("cuMemFreeHost")
        del PINNED[host.ctypes.data]
        self.live.remove(host.ctypes.data)

    def to_device_async(self, ptr: int, host: np.ndarray) -> None:
        _require_context("cuMemcpyHtoDAsync")
        if ptr not in BUFFERS or BUFFERS[ptr].nbytes < host.nbytes:
            raise BackendError("CUDA driver call cuMemcpyHtoDAsync failed with error 1 (invalid device buffer)")
        if not _pinned(host):
            self.pageable_copies += 1
        source = host.reshape(-1).view(np.uint8)  # read when the stream gets there, as the driver does

        def copy() -> None:
            BUFFERS[ptr][: source.nbytes] = source

        self.queue.append(copy)

    def to_host_async(self, host: np.ndarray, ptr: int) -> None:
        _require_context("cuMemcpyDtoHAsync")
        if ptr not in BUFFERS or BUFFERS[ptr].nbytes < host.nbytes:
            raise BackendError("CUDA driver call cuMemcpyDtoHAsync failed with error 1 (invalid device buffer)")
        if not _pinned(host):
            self.pageable_copies += 1
        target = host.reshape(-1).view(np.uint8)

        def copy() -> None:
            target[:] = BUFFERS[ptr][: target.nbytes]

        self.queue.append(copy)

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        queue, self.queue = self.queue, []
        for operation in queue:
            operation()
        self.synchronizations += 1

    def close(self) -> None:
        STREAMS.pop(self.stream, None)


HostMemory = FakeCudaMemory  # the name the first tests used


def device_bytes() -> int:
    """Bytes of every live fake device buffer."""
    return sum(buf.nbytes for buf in BUFFERS.values())


class FakeEngine:
    """One engine: an ONNX graph plus profile 0, from a JSON "plan"."""

    def __init__(self, root: Path, plan: dict) -> None:
        import onnxruntime as ort

        self.path = root / plan["onnx"]
        model = onnx.load(str(self.path))
        self.profile = {name: (p["min"], p["opt"], p["max"]) for name, p in plan["profile"].items()}
        self.fail = plan.get("fail")
        self.perturb = plan.get("perturb") or {}
        self.io = {v.name: (_ONNX_DTYPES[v.type.tensor_type.elem_type],
                            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                   for v in list(model.graph.input) + list(model.graph.output)}
        self.inputs = [v.name for v in model.graph.input]
        self.outputs = [v.name for v in model.graph.output]
        # as export.verify.ORT_FP16_CPU_DISABLED_OPTIMIZERS: onnxruntime's NCHWc transformer crashes on
        # float16 encoder graphs on the CPU (the fake computes an fp16 engine with them)
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["NchwcTransformer"])
        self.executions: list[dict] = []

    def get_tensor_dtype(self, name: str) -> str:
        return self.io[name][0]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
        assert profile_index == 0
        return [list(s) for s in self.profile[name]]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _in_profile(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _opt, high = self.engine.profile[name]
        return len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high))

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        if self.engine.fail == "shape" or not self._in_profile(name, shape):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if self.engine.fail == "address" or ptr not in BUFFERS:
            return False
        self.addresses[name] = ptr
        return True

    def _axis_sizes(self) -> dict[str, int]:
        sizes = {}
        for name in self.engine.inputs:
            if name in self.shapes:
                for dim, size in zip(self.engine.io[name][1], self.shapes[name]):
                    if isinstance(dim, str):
                        sizes[dim] = size
        return sizes

    def get_tensor_shape(self, name: str) -> list[int]:
        if name in self.engine.inputs:
            return list(self.shapes.get(name, [-1] * len(self.engine.io[name][1])))
        sizes = self._axis_sizes()
        if self.engine.fail == "output_shape":
            sizes = {}
        return [sizes.get(d, -1) if isinstance(d, str) else d for d in self.engine.io[name][1]]

    def _buffer(self, name: str, shape: list[int] | tuple[int, ...]) -> np.ndarray | None:
        """The bound buffer of ``name`` when it holds ``shape`` elements of its dtype, else None."""
        buf = BUFFERS.get(self.addresses.get(name, -1))
        nbytes = int(np.prod(shape)) * np.dtype(self.engine.io[name][0]).itemsize
        return buf if buf is not None and buf.nbytes >= nbytes else None

    def execute_async_v3(self, stream: int) -> bool:
        engine = self.engine
        if engine.fail == "execute" or stream not in STREAMS or not getattr(_CURRENT, "context", False):
            return False
        for name in engine.inputs:
            shape = self.shapes.get(name)
            if shape is None or not self._in_profile(name, shape) or self._buffer(name, shape) is None:
                return False
        out_shapes = {name: self.get_tensor_shape(name) for name in engine.outputs}
        if any(d < 0 for s in out_shapes.values() for d in s):
            return False
        if any(self._buffer(name, shape) is None for name, shape in out_shapes.items()):
            return False
        shapes, addresses = dict(self.shapes), dict(self.addresses)

        def run() -> None:  # when the stream gets there: reads and writes the device buffers then
            feeds = {}
            for name in engine.inputs:
                dtype = np.dtype(engine.io[name][0])
                nbytes = int(np.prod(shapes[name])) * dtype.itemsize
                feeds[name] = BUFFERS[addresses[name]][:nbytes].view(dtype).reshape(shapes[name]).copy()
            for name, value in zip(engine.outputs, engine.session.run(engine.outputs, feeds)):
                value = np.ascontiguousarray(value)
                if name in engine.perturb:
                    value = (value + engine.perturb[name]).astype(value.dtype)
                assert list(value.shape) == out_shapes[name], (name, value.shape, out_shapes[name])
                BUFFERS[addresses[name]][: value.nbytes] = value.reshape(-1).view(np.uint8)
            engine.executions.append({"shapes": shapes, "addresses": addresses, "thread": threading.get_ident()})

        STREAMS[stream].queue.append(run)
        return True


def runtime_class(root: Callable[[], Path], engines: list[FakeEngine], fallback: Callable[[bytes], object] | None):
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                if fallback is None:
                    return None
                return fallback(bytes(data))
            engine = FakeEngine(root(), plan)
            engines.append(engine)
            return engine

    return Runtime


def fake_tensorrt(version: str, root: Path, engines: list[FakeEngine]) -> types.ModuleType:
    """A ``tensorrt`` module whose Runtime deserializes the JSON plans of bundle ``root``; every
    engine it creates is appended to ``engines``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = "W"

        def __init__(self, level):
            self.level = level

    trt.Logger = Logger
    trt.Runtime = runtime_class(lambda: root, engines, None)
    trt.nptype = lambda dtype: np.dtype(dtype).type
    return trt


def engine_plan(onnx_file: str, profile: dict, fail: str | None = None, perturb: dict | None = None) -> bytes:
    """The JSON "plan" a fake engine is deserialized from."""
    return json.dumps({"onnx": onnx_file, "profile": profile, "fail": fail, "perturb": perturb or {}}).encode()


def add_fake_engines(bundle_root: Path, texts: tuple[int, int, int], videos: tuple[int, int, int],
                     device: dict[str, str], version: str, fail: dict[str, str] | None = None,
                     scorer: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> None:
    """Write JSON "plans" for the three graphs of a bundle and its manifest's tensorrt section
    (``scorer``: the scorer's own (texts, videos) ranges; default the encoders')."""
    manifest_path = bundle_root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    engines = {}
    for key, entry in manifest["graphs"].items():
        ranges = {"T": texts, "V": videos}
        if key == "scorer" and scorer is not None:
            ranges = {"T": scorer[0], "V": scorer[1]}
        profile = {}
        for tensor in entry["inputs"]:
            profile[tensor["name"]] = {
                which: [ranges[d][i] if isinstance(d, str) else d for d in tensor["shape"]]
                for i, which in enumerate(("min", "opt", "max"))}
        (bundle_root / f"{key}.plan").write_bytes(engine_plan(entry["file"], profile, (fail or {}).get(key)))
        engines[key] = {"file": f"{key}.plan", "onnx": entry["file"], "profile": profile}
    manifest["tensorrt"] = {"version": version, "gpu": device["gpu"],
                            "compute_capability": device["compute_capability"], "engines": engines}
    manifest_path.write_text(json.dumps(manifest, indent=1))
