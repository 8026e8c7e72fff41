"""A gallery restricted to some of its rows: what a filtered exhaustive search scores.

:class:`GallerySubset` looks like the opened index to the scoring and grouping code (ids, entries,
SK biases, features by row range or rows) but holds only the given rows, in gallery order: a search
over it ranks exactly those rows, ties broken by gallery row as on the whole index. The biases are
the whole gallery's, sliced (SK biases depend on the gallery they were computed on).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime.index import FEATURE_ROLES, GalleryIndex
from runtime.scoring import VideoSource, gather_rows


class SelectedRows:
    """Rows ``rows`` of a video source, as a video source (reads only those rows)."""

    def __init__(self, source: VideoSource, rows: np.ndarray) -> None:
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, start: int, stop: int, roles: tuple[str, ...] = FEATURE_ROLES) -> dict[str, np.ndarray]:
        return self.gather(np.arange(start, stop), roles)

    def gather(self, rows: np.ndarray, roles: tuple[str, ...] = FEATURE_ROLES) -> dict[str, np.ndarray]:
        picked = self.rows[np.asarray(rows, dtype=np.int64)]
        if isinstance(self.source, GalleryIndex):
            return self.source.gather(picked, roles)
        return gather_rows(self.source, picked)


class GallerySubset(SelectedRows):
    """Rows ``rows`` (ascending gallery rows) of an opened index, with their ids, entries and biases."""

    def __init__(self, index: GalleryIndex, rows: np.ndarray, source: VideoSource | None = None) -> None:
        super().__init__(index if source is None else source, np.asarray(rows, dtype=np.int64))
        self.index = index
        self.ids = [index.ids[r] for r in self.rows]
        self.entries: list[dict[str, Any]] = [index.entries[r] for r in self.rows]
        biases = index.biases()
        self._biases = None if biases is None else {level: value[self.rows] for level, value in biases.items()}

    def biases(self) -> dict[str, np.ndarray] | None:
        return self._biases
