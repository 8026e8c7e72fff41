"""A fake ``tensorrt`` runtime for ``runtime.backends.tensorrt_session.TensorRTSession`` tests (no GPU,
no TensorRT).

The fake engine behaves like a TensorRT 10 engine built with one optimisation profile: its
execution context's ``set_input_shape`` returns False for a shape outside the profile (or of the
wrong rank / static size), ``set_tensor_address`` returns False for an address that was never
allocated, ``get_tensor_shape`` reports -1 for output axes whose inputs are unset, and
``execute_async_v3`` returns False unless every tensor has a valid shape and a large enough
buffer. It computes with onnxruntime (CPU) on the bundle's ONNX graph, reading and writing the
buffers of ``HostMemory``, a host-memory stand-in for the CUDA buffers, and records every
execution's shapes and addresses.

A "plan" file is JSON: {"onnx": file name, "profile": {input: {"min", "opt", "max"}}, "fail": ...}
where "fail" (optional) is one of "shape", "address", "execute", "output_shape".
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx

# ptr -> uint8 buffer of every live HostMemory allocation (shared with the fake contexts)
BUFFERS: dict[int, np.ndarray] = {}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


class HostMemory:
    """Stands in for ``runtime.backends.cuda_driver.CudaMemory``: buffers are host arrays, copies are numpy copies."""

    stream = 7  # any handle; the fake context checks it is passed through

    def __init__(self) -> None:
        self.allocated: list[int] = []

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(max(nbytes, 1), np.uint8)
        ptr = int(buf.ctypes.data)
        BUFFERS[ptr] = buf
        self.allocated.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        del BUFFERS[ptr]

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        BUFFERS[ptr][: host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        host.reshape(-1).view(np.uint8)[:] = BUFFERS[ptr][: host.nbytes]

    def synchronize(self) -> None:
        pass


class FakeEngine:
    """One engine: an ONNX graph plus profile 0, from a JSON "plan"."""

    def __init__(self, root: Path, plan: dict) -> None:
        import onnxruntime as ort

        self.path = root / plan["onnx"]
        model = onnx.load(str(self.path))
        self.profile = {name: (p["min"], p["opt"], p["max"]) for name, p in plan["profile"].items()}
        self.fail = plan.get("fail")
        self.io = {v.name: (_ONNX_DTYPES[v.type.tensor_type.elem_type],
                            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                   for v in list(model.graph.input) + list(model.graph.output)}
        self.inputs = [v.name for v in model.graph.input]
        self.outputs = [v.name for v in model.graph.output]
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
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

    def execute_async_v3(self, stream: int) -> bool:
        engine = self.engine
        if engine.fail == "execute" or stream != HostMemory.stream:
            return False
        feeds = {}
        for name in engine.inputs:
            shape = self.shapes.get(name)
            if shape is None or not self._in_profile(name, shape) or name not in self.addresses:
                return False
            dtype = np.dtype(engine.io[name][0])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            buf = BUFFERS.get(self.addresses[name])
            if buf is None or buf.nbytes < nbytes:
                return False
            feeds[name] = buf[:nbytes].view(dtype).reshape(shape).copy()
        results = engine.session.run(engine.outputs, feeds)
        for name, value in zip(engine.outputs, results):
            buf = BUFFERS.get(self.addresses.get(name, -1))
            if buf is None or buf.nbytes < value.nbytes or list(value.shape) != self.get_tensor_shape(name):
                return False
            buf[: value.nbytes] = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        engine.executions.append({"shapes": dict(self.shapes), "addresses": dict(self.addresses)})
        return True


def fake_tensorrt(version: str, root: Path, engines: list[FakeEngine]) -> types.ModuleType:
    """A ``tensorrt`` module whose Runtime deserializes the JSON plans of bundle ``root``; every
    engine it creates is appended to ``engines``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = "W"

        def __init__(self, level):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            engine = FakeEngine(root, json.loads(bytes(data)))
            engines.append(engine)
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.nptype = lambda dtype: np.dtype(dtype).type
    return trt


def add_fake_engines(bundle_root: Path, texts: tuple[int, int, int], videos: tuple[int, int, int],
                     device: dict[str, str], version: str, fail: dict[str, str] | None = None) -> None:
    """Write JSON "plans" for the three graphs of a bundle and its manifest's tensorrt section."""
    manifest_path = bundle_root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    ranges = {"T": texts, "V": videos}
    engines = {}
    for key, entry in manifest["graphs"].items():
        profile = {}
        for tensor in entry["inputs"]:
            profile[tensor["name"]] = {
                which: [ranges[d][i] if isinstance(d, str) else d for d in tensor["shape"]]
                for i, which in enumerate(("min", "opt", "max"))}
        plan = {"onnx": entry["file"], "profile": profile, "fail": (fail or {}).get(key)}
        (bundle_root / f"{key}.plan").write_text(json.dumps(plan))
        engines[key] = {"file": f"{key}.plan", "onnx": entry["file"], "profile": profile}
    manifest["tensorrt"] = {"version": version, "gpu": device["gpu"],
                            "compute_capability": device["compute_capability"], "engines": engines}
    manifest_path.write_text(json.dumps(manifest, indent=1))
