"""TensorRT engine sessions (optional backend): run the engines the export built, without torch.

An engine only accepts batch sizes inside its optimisation profile (``ucofia export --trt``
defaults: 1..64 texts, 1..16 videos): ``TensorRTSession`` splits larger calls into pieces and
``max_rows`` lets the tile planner size tiles to the profile. TensorRT calls are checked against
the 10.x Python bindings' return values (``set_input_shape``, ``set_tensor_address`` and
``execute_async_v3`` return False on failure; output shapes with -1 mean unresolved inputs).
Engines are loaded (and checked against this GPU) by ``tensorrt_engines``; device memory goes
through ``cuda_driver``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from runtime.backends.base import GraphSession
from runtime.backends.cuda_driver import CudaMemory
from runtime.backends.tensorrt_engines import TensorRTError, load_engine
from runtime.bundle import Bundle
from runtime.bundle.contract import GraphSpec
from runtime.errors import BackendError


@dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of one dynamic axis, sent as ``size`` rows (the last row repeated up to the
    profile's minimum)."""

    start: int
    stop: int
    size: int

    def rows(self) -> np.ndarray:
        return np.minimum(np.arange(self.start, self.start + self.size), self.stop - 1)


def split_axis(n: int, low: int, high: int) -> list[_Piece]:
    """Pieces of ``n`` rows that each fit an optimisation profile allowing ``low``..``high`` rows."""
    return [_Piece(start, min(start + high, n), max(min(start + high, n) - start, low))
            for start in range(0, n, high)]


class TensorRTSession(GraphSession):
    """Runs one serialized TensorRT engine (TensorRT >= 10 tensor API) within its optimisation profile.

    Every call is split along the dynamic axes (texts ``T``, videos ``V``) into pieces inside
    profile 0's min..max, a piece below the minimum is padded by repeating its last row (rows are
    independent in all three graphs) and the results are reassembled. Every TensorRT call's
    result is checked; a failure is a one-line BackendError naming the engine and the shape.
    """

    backend = "tensorrt"

    def __init__(self, spec: GraphSpec, bundle: Bundle, memory: CudaMemory | None = None) -> None:
        import tensorrt as trt

        super().__init__(spec)
        self._trt = trt
        try:
            engine = load_engine(bundle.root, spec.key, trt)
        except TensorRTError as exc:
            raise BackendError(str(exc)) from None
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for the {spec.key} engine "
                               "(out of GPU memory?)")
        self._memory = memory or CudaMemory()
        self.axes = self._profile_axes()

    def _profile_axes(self) -> dict[str, tuple[int, int]]:
        """Dynamic axis name -> (min, max) rows allowed by optimisation profile 0 of the engine."""
        axes: dict[str, tuple[int, int]] = {}
        for tensor in self.spec.inputs.values():
            low, _opt, high = (tuple(int(d) for d in dims) for dims in
                               self._engine.get_tensor_profile_shape(tensor.name, 0))
            for i, dim in enumerate(tensor.shape):
                if isinstance(dim, str):
                    lo, hi = axes.get(dim, (1, high[i]))
                    axes[dim] = (max(lo, low[i], 1), min(hi, high[i]))
        for name, (lo, hi) in axes.items():
            if hi < lo:
                raise BackendError(f"the {self.spec.key} engine's optimisation profile allows no size of axis "
                                   f"{name!r} (min {lo} > max {hi}); rebuild it with `ucofia export --trt --force`")
        return axes

    def max_rows(self, role: str) -> int | None:
        axis = self.spec.inputs[role].shape[0]
        return self.axes[axis][1] if isinstance(axis, str) and axis in self.axes else None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes: dict[str, int] = {}
        for tensor in self.spec.inputs.values():
            for i, dim in enumerate(tensor.shape):
                if isinstance(dim, str):
                    size = int(feeds[tensor.name].shape[i])
                    if sizes.setdefault(dim, size) != size:
                        raise ValueError(f"{self.spec.key}: inputs disagree on axis {dim!r} ({sizes[dim]} vs {size} "
                                         f"rows in {tensor.name!r})")
        outputs = {}
        for tensor in self.spec.outputs.values():
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(tensor.name)))
            shape = tuple(sizes[d] if isinstance(d, str) else int(d) for d in tensor.shape)
            outputs[tensor.name] = np.empty(shape, dtype=dtype)
        if 0 in sizes.values():
            return outputs
        names = list(sizes)
        for pieces in itertools.product(*(split_axis(sizes[n], *self.axes[n]) for n in names)):
            chosen = dict(zip(names, pieces))
            piece_feeds = {tensor.name: self._take(feeds[tensor.name], tensor.shape, chosen)
                           for tensor in self.spec.inputs.values()}
            result = self._run_piece(piece_feeds)
            for tensor in self.spec.outputs.values():
                target = tuple(slice(chosen[d].start, chosen[d].stop) if isinstance(d, str) else slice(None)
                               for d in tensor.shape)
                valid = tuple(slice(0, chosen[d].stop - chosen[d].start) if isinstance(d, str) else slice(None)
                              for d in tensor.shape)
                outputs[tensor.name][target] = result[tensor.name][valid]
        return outputs

    @staticmethod
    def _take(array: np.ndarray, shape: tuple, chosen: dict[str, _Piece]) -> np.ndarray:
        for i, dim in enumerate(shape):
            if isinstance(dim, str):
                array = np.take(array, chosen[dim].rows(), axis=i)
        return np.ascontiguousarray(array)

    def _run_piece(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One engine execution on feeds inside the profile."""
        trt, ctx, engine, memory = self._trt, self._context, self._engine, self._memory
        key = self.spec.key
        buffers: list[int] = []
        outputs: dict[str, np.ndarray] = {}
        try:
            for name, array in feeds.items():
                host = np.ascontiguousarray(array, dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
                if not ctx.set_input_shape(name, host.shape):
                    raise BackendError(f"TensorRT rejected input {name!r} of shape {list(host.shape)} for the {key} "
                                       f"engine (its optimisation profile: {self._profile_text(name)}); rebuild it "
                                       "with wider --min/--max-texts|videos")
                buffers.append(memory.alloc(host.nbytes))
                memory.to_device(buffers[-1], host)
                self._bind(name, buffers[-1])
            for tensor in self.spec.outputs.values():
                shape = tuple(int(d) for d in ctx.get_tensor_shape(tensor.name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"TensorRT could not infer the shape of output {tensor.name!r} of the {key} "
                                       f"engine from inputs {({n: list(a.shape) for n, a in feeds.items()})}")
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor.name)))
                outputs[tensor.name] = np.empty(shape, dtype=dtype)
                buffers.append(memory.alloc(outputs[tensor.name].nbytes))
                self._bind(tensor.name, buffers[-1])
            if not ctx.execute_async_v3(memory.stream):
                raise BackendError(f"TensorRT failed to run the {key} engine on inputs "
                                   f"{({n: list(a.shape) for n, a in feeds.items()})} (see its log above)")
            memory.synchronize()
            for host, ptr in zip(outputs.values(), buffers[len(feeds):]):
                memory.to_host(host, ptr)
            return outputs
        finally:
            for ptr in buffers:
                memory.free(ptr)

    def _bind(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, ptr):
            raise BackendError(f"TensorRT refused the device address of tensor {name!r} of the {self.spec.key} engine")

    def _profile_text(self, name: str) -> str:
        low, _opt, high = ([int(d) for d in dims] for dims in self._engine.get_tensor_profile_shape(name, 0))
        return f"{low}..{high}"
