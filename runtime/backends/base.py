"""The interface every execution backend implements: one bundle graph, run on arrays keyed by role."""
from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np

from runtime.backends.text_side import PROJECTED_WORDS
from runtime.bundle.contract import TEXT_ROLES, GraphSpec

_, WORDS = TEXT_ROLES  # the word-feature role of the scorer's inputs


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
    # A scorer whose text side was cut out (runtime.backends.text_side): the session that computes
    # the projected words, which this graph then takes as its ``words`` input.
    text_side: GraphSession | None = None

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    def max_rows(self, role: str) -> int | None:
        """Most rows (texts or videos) one graph call should get for input ``role`` (None: no limit).

        ``run`` accepts any number; sessions with a limit (TensorRT profiles) split larger calls.
        """
        return None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cast ``inputs`` (role -> array) to the manifest dtypes, run, return role -> array.

        A split scorer (``text_side`` set) takes the raw ``words``, or the words its text side has
        already projected as ``projected_words`` (``project_words``), which saves repeating it."""
        if self.text_side is not None:
            inputs = self._with_projected_words(inputs)
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

    def project_words(self, words: np.ndarray) -> np.ndarray | None:
        """The text side of a split scorer on ``words`` [T, L, D] (None when this graph is whole)."""
        if self.text_side is None:
            return None
        return self.text_side.run({WORDS: words})[PROJECTED_WORDS]

    def _with_projected_words(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {role: value for role, value in inputs.items() if role != PROJECTED_WORDS}
        if PROJECTED_WORDS in inputs:
            out[WORDS] = inputs[PROJECTED_WORDS]
        elif WORDS in inputs:
            out[WORDS] = self.project_words(inputs[WORDS])
        return out

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on name -> array feeds; return name -> array for every output."""
