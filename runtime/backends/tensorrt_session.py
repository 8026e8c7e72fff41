"""TensorRT engine sessions (optional backend): run the engines the export built, without torch.

An engine only accepts batch sizes inside its optimisation profile (``ucofia export --trt``
defaults: encoders 1..64 texts and 1..16 videos, the scorer its own 1..64 texts x 1..1024 videos):
``TensorRTSession`` splits larger calls into pieces and ``max_rows`` lets the tile planner size
tiles to the profile. TensorRT calls are checked against the 10.x/11.x Python bindings' return
values (``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` return False on
failure; output shapes with -1 mean unresolved inputs).

Every session owns one CUDA stream and, per tensor, one device buffer and one page-locked host
buffer, allocated on first use and grown (never shrunk) when a larger piece comes: a call
allocates nothing once the largest piece has been seen. A piece is staged into the pinned input
buffers, copied to the device, run and copied back asynchronously on the session's stream, and
read only after the stream is synchronised. Calls on one session are serialised (one execution
context); the CUDA context is made current on the calling thread at the start of each.
Engines are loaded (and checked against this GPU) by ``tensorrt_engines``; device memory goes
through ``cuda_driver``.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
from dataclasses import dataclass
from typing import Any

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


@dataclass
class _Buffers:
    """One tensor's device buffer and pinned host buffer, both ``capacity`` bytes."""

    device: int
    host: np.ndarray  # uint8, page-locked
    capacity: int


class TensorRTSession(GraphSession):
    """Runs one deserialized TensorRT engine (TensorRT >= 10 tensor API) within its optimisation profile.

    Every call is split along the dynamic axes (texts ``T``, videos ``V``) into pieces inside
    profile 0's min..max, a piece below the minimum is padded by repeating its last row (rows are
    independent in all three graphs) and the results are reassembled. Every TensorRT call's
    result is checked; a failure is a one-line BackendError naming the engine and the shape.
    ``from_bundle`` loads the bundle's engine for a graph; ``close`` frees the buffers.
    """

    backend = "tensorrt"

    def __init__(self, spec: GraphSpec, engine: Any, memory: CudaMemory | None = None, trt: Any = None) -> None:
        """``engine``: a deserialized engine of graph ``spec``; ``trt``: the tensorrt module (default:
        imported)."""
        if trt is None:
            import tensorrt as trt

        super().__init__(spec)
        self._trt = trt
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for the {spec.key} engine "
                               "(out of GPU memory?)")
        self._memory = memory or CudaMemory()
        self._buffers: dict[str, _Buffers] = {}
        self._lock = threading.Lock()
        self.allocations = 0  # device buffers allocated so far (grows only while pieces grow)
        self.axes = self._profile_axes()

    @classmethod
    def from_bundle(cls, spec: GraphSpec, bundle: Bundle, memory: CudaMemory | None = None) -> TensorRTSession:
        """A session on the bundle's engine for ``spec`` (checked against this GPU and TensorRT)."""
        import tensorrt as trt

        try:
            engine = load_engine(bundle.root, spec.key, trt)
        except TensorRTError as exc:
            raise BackendError(str(exc)) from None
        return cls(spec, engine, memory)

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

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))

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
            shape = tuple(sizes[d] if isinstance(d, str) else int(d) for d in tensor.shape)
            outputs[tensor.name] = np.empty(shape, dtype=self._dtype(tensor.name))
        if 0 in sizes.values():
            return outputs
        names = list(sizes)
        with self._lock:
            self._memory.make_current()
            for pieces in itertools.product(*(split_axis(sizes[n], *self.axes[n]) for n in names)):
                chosen = dict(zip(names, pieces))
                piece_feeds = {tensor.name: self._take(feeds[tensor.name], tensor.shape, chosen)
                               for tensor in self.spec.inputs.values()}
                result = self._run_piece(piece_feeds)  # views of the pinned buffers: copy them out now
                for tensor in self.spec.outputs.values():
                    target = tuple(slice(chosen[d].start, chosen[d].stop) if isinstance(d, str) else slice(None)
                                   for d in tensor.shape)
                    valid = tuple(slice(0, chosen[d].stop - chosen[d].start) if isinstance(d, str)
                                  else slice(None) for d in tensor.shape)
                    outputs[tensor.name][target] = result[tensor.name][valid]
        return outputs

    @staticmethod
    def _take(array: np.ndarray, shape: tuple, chosen: dict[str, _Piece]) -> np.ndarray:
        for i, dim in enumerate(shape):
            if isinstance(dim, str):
                piece = chosen[dim]
                if piece.size == piece.stop - piece.start:
                    array = array[(slice(None),) * i + (slice(piece.start, piece.stop),)]
                else:
                    array = np.take(array, piece.rows(), axis=i)
        return array

    def _staged(self, name: str, shape: tuple[int, ...]) -> tuple[_Buffers, np.ndarray]:
        """The buffers of tensor ``name`` grown to ``shape`` and a typed view of its pinned host buffer."""
        dtype = self._dtype(name)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffers = self._buffers.get(name)
        if buffers is None or buffers.capacity < nbytes:
            if buffers is not None:
                self._free(buffers)
                del self._buffers[name]
            capacity = max(nbytes, 1)
            host = self._memory.alloc_host(capacity)
            try:
                device = self._memory.alloc(capacity)
            except BaseException:
                self._memory.free_host(host)
                raise
            self.allocations += 1
            buffers = self._buffers[name] = _Buffers(device, host, capacity)
        return buffers, buffers.host[:nbytes].view(dtype).reshape(shape)

    def _run_piece(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One engine execution on feeds inside the profile; returns views of the pinned output buffers."""
        ctx, memory, key = self._context, self._memory, self.spec.key
        try:
            for name, array in feeds.items():
                if not ctx.set_input_shape(name, array.shape):
                    raise BackendError(f"TensorRT rejected input {name!r} of shape {list(array.shape)} for the {key} "
                                       f"engine (its optimisation profile: {self._profile_text(name)}); rebuild it "
                                       "with wider --min/--max-texts|videos")
                buffers, staged = self._staged(name, tuple(array.shape))
                np.copyto(staged, array, casting="unsafe")
                memory.to_device_async(buffers.device, staged)
                self._bind(name, buffers.device)
            outputs: dict[str, tuple[_Buffers, np.ndarray]] = {}
            for tensor in self.spec.outputs.values():
                shape = tuple(int(d) for d in ctx.get_tensor_shape(tensor.name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"TensorRT could not infer the shape of output {tensor.name!r} of the {key} "
                                       f"engine from inputs {({n: list(a.shape) for n, a in feeds.items()})}")
                outputs[tensor.name] = self._staged(tensor.name, shape)
                self._bind(tensor.name, outputs[tensor.name][0].device)
            if not ctx.execute_async_v3(memory.stream):
                raise BackendError(f"TensorRT failed to run the {key} engine on inputs "
                                   f"{({n: list(a.shape) for n, a in feeds.items()})} (see its log above)")
            for buffers, view in outputs.values():
                memory.to_host_async(view, buffers.device)
            memory.synchronize()
        except BaseException:
            with contextlib.suppress(Exception):  # copies queued before the error must finish before reuse
                memory.synchronize()
            raise
        return {name: view for name, (_buffers, view) in outputs.items()}

    def _bind(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, ptr):
            raise BackendError(f"TensorRT refused the device address of tensor {name!r} of the {self.spec.key} engine")

    def _profile_text(self, name: str) -> str:
        low, _opt, high = ([int(d) for d in dims] for dims in self._engine.get_tensor_profile_shape(name, 0))
        return f"{low}..{high}"

    def _free(self, buffers: _Buffers) -> None:
        self._memory.free(buffers.device)
        self._memory.free_host(buffers.host)

    def close(self) -> None:
        """Free the session's device and pinned buffers (it can run again: they are allocated anew)."""
        with self._lock:
            if self._buffers:
                self._memory.make_current()
            for buffers in self._buffers.values():
                self._free(buffers)
            self._buffers.clear()
