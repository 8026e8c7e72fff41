"""The interface every execution backend implements: one bundle graph, run on arrays keyed by role."""
from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np

from runtime.bundle.contract import GraphSpec


class GraphSession(abc.ABC):
    """One bundle graph, run on arrays keyed by contract role.

    Tensor names and input dtypes come from the manifest (``spec``): inputs are cast to them and
    float outputs come back as float32. ``concurrency``: how many ``run`` calls may usefully
    execute at once from different threads (1 unless the session was opened for parallel tiles,
    see ``runtime.backends.selection.open_session``).
    """

    backend: str
    concurrency: int = 1
    precision: str = "float32"  # what the graph computes in (``--scorer-precision``: the scorer may be int8)

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    def max_rows(self, role: str) -> int | None:
        """Most rows (texts or videos) one graph call should get for input ``role`` (None: no limit).

        ``run`` accepts any number; sessions with a limit (TensorRT profiles) split larger calls.
        """
        return None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cast ``inputs`` (role -> array) to the manifest dtypes, run, return role -> array."""
        missing = [role for role in self.spec.inputs if role not in inputs]
        if missing:
            raise ValueError(f"{self.spec.key}: missing inputs {missing}")
        feeds = {spec.name: np.ascontiguousarray(inputs[role], dtype=np.dtype(spec.dtype))
                 for role, spec in self.spec.inputs.items()}
        raw = self._run(feeds)
        out = {}
        for role, spec in self.spec.outputs.items():
            value = np.asarray(raw[spec.name])
            out[role] = value.astype(np.float32, copy=False) if value.dtype.kind == "f" else value
        return out

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on name -> array feeds; return name -> array for every output."""
