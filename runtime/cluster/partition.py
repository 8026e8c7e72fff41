"""Which gallery rows each shard owns, and a shard's view of the index.

A shard owns whole files: the gallery's rows are cut into ``shards`` equal shares and each file
goes to the shard whose share holds its first row, with all its rows. On a
whole-file index (every row is its own file) that is a contiguous row range per shard; on an index
of time windows no file is split, so grouping by file happens within one shard and the merged
result is the one-process result. The plan is a pure function of the index's entries: the ingress
and every shard replica compute the same one.
"""
from __future__ import annotations

import hashlib

import numpy as np

from runtime.index import GalleryIndex, file_of
from runtime.search.subset import GallerySubset


def plan_parts(index: GalleryIndex, shards: int) -> list[np.ndarray]:
    """Ascending gallery rows of each of ``shards`` shards (disjoint, covering every row; a shard
    may be empty when the index has fewer files than shards)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    owner: dict[str, int] = {}
    first_row: list[int] = []
    file_of_row = np.empty(len(index), dtype=np.int64)
    for row, entry in enumerate(index.entries):
        number = owner.setdefault(file_of(entry), len(owner))
        if number == len(first_row):
            first_row.append(row)
        file_of_row[row] = number
    # a file goes to the shard whose equal share of the gallery holds its first row
    shard_of_file = np.asarray(first_row, dtype=np.int64) * shards // max(len(index), 1)
    shard_of_row = shard_of_file[file_of_row]
    return [np.flatnonzero(shard_of_row == shard) for shard in range(shards)]


class IndexPart(GallerySubset):
    """The rows one shard owns, looking like an opened index of those rows alone (ids, entries,
    features, the whole gallery's SK biases sliced), so that the one-process searcher runs on it
    unchanged. Its stage-1 FAISS index is cached under its own key (the digest of its ids)."""

    def __init__(self, index: GalleryIndex, rows: np.ndarray) -> None:
        super().__init__(index, rows)
        self.root = index.root
        self.config = index.config
        self.fingerprint = index.fingerprint
        self._digest: str | None = None

    @property
    def ids_digest(self) -> str:
        if self._digest is None:
            joined = "\n".join(self.ids).encode()
            self._digest = hashlib.sha256(b"part:" + joined).hexdigest()
        return self._digest

    def subset(self, rows: np.ndarray):
        """A video source over the given rows of this part (positions in the part)."""
        return self.index.subset(self.rows[np.asarray(rows, dtype=np.int64)])

    def global_rows(self, rows: np.ndarray) -> np.ndarray:
        """Gallery rows of positions ``rows`` in this part (-1 stays -1)."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows >= 0, self.rows[np.maximum(rows, 0)], -1)

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        """Positions in this part of gallery rows ``rows`` (which it must own)."""
        rows = np.asarray(rows, dtype=np.int64)
        positions = np.searchsorted(self.rows, rows)
        if len(rows) and (positions.max(initial=0) >= len(self.rows) or (self.rows[positions] != rows).any()):
            raise ValueError("rows outside this shard")
        return positions
