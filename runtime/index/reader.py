"""Read access to an index: one consistent snapshot of its state, ids, entries and biases, and
float32 features by row range or by rows (docs/index-format.md describes the files)."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import GalleryIndexError
from runtime.index.format import ENTRIES, FEATURE_ROLES, SHARDS, IndexChangedError, ids_digest
from runtime.index.shards import OpenShard
from runtime.index.state import read_state
from ucofia.config import LEVELS, UCoFiAConfig

if TYPE_CHECKING:  # a type only: the index never loads a bundle
    from runtime.bundle import Bundle

# How often opening re-reads the state when an update replaced files while it was being read.
OPEN_ATTEMPTS = 5
# Scattered rows (a two-stage shortlist, spread over many shards) are read READ_THREADS files at a
# time, each file's rows with positioned reads into their places in the preallocated arrays, when
# at least PARALLEL_MIN_ROWS rows are asked for: a cold shortlist then waits for the disk's
# parallelism rather than for one read after another (benchmarks/million.py, "rerank").
READ_THREADS = 8
PARALLEL_MIN_ROWS = 32


@functools.cache
def _read_pool() -> ThreadPoolExecutor:
    """The process's pool of reader threads (made on first use; its tasks never submit to it)."""
    return ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ucofia-read")


class GalleryIndex:
    """Read access to an index: ids, entries, float32 features by row range or rows, biases.

    Opening reads the state, every shard's ids and the biases, so an open index is one consistent
    snapshot; features are read from the shard files when asked for. Shards an unfinished ``index``
    run has not yet published are left out (``include_pending``: included, for its writer).
    """

    def __init__(self, root: str | Path, include_pending: bool = False) -> None:
        self.root = Path(root)
        self.include_pending = include_pending
        if not self.root.is_dir():
            raise GalleryIndexError(f"index directory not found: {self.root}")
        for attempt in range(OPEN_ATTEMPTS):
            self.state = read_state(self.root)
            try:
                self._open()
                break
            except IndexChangedError:
                if attempt == OPEN_ATTEMPTS - 1 or read_state(self.root) == self.state:
                    raise
        self.config = UCoFiAConfig.from_dict(self.state.config)
        self._entries: list[dict[str, Any]] | None = None
        self._rows: dict[str, int] | None = None
        self._digest: str | None = None

    def _open(self) -> None:
        shards = [OpenShard(self.root / SHARDS / record.name, record)
                  for record in self.state.effective_shards(self.include_pending)]
        self._shards = shards
        self._offsets = np.cumsum([0] + [s.size for s in shards])
        self.ids = [vid for s in shards for vid in s.ids]
        meta = self.state.biases
        self._bias_values = None
        if meta is not None:
            path = self.root / meta.file_name
            try:
                self._bias_values = np.load(path)
            except FileNotFoundError:
                raise IndexChangedError(f"{path} is gone: the index was updated after it was opened; open it "
                                        f"again") from None

    # ---- identity --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.state.fingerprint

    @property
    def bundle_path(self) -> Path:
        if self.state.bundle is None:
            raise GalleryIndexError(f"{self.root} records no bundle; pass --bundle")
        return Path(self.state.bundle)

    @property
    def store(self) -> str:
        """The stored feature dtype of the index (float32, float16 or int8; see runtime.index.store)."""
        return self.state.store

    def check_bundle(self, bundle: Bundle) -> None:
        """Raise GalleryIndexError unless ``bundle`` is the one the index was built with."""
        if bundle.fingerprint != self.fingerprint:
            raise GalleryIndexError(
                f"index {self.root} was built with bundle fingerprint {self.fingerprint[:12]}… but "
                f"{bundle.root} has {bundle.fingerprint[:12]}…; use the bundle the index was built with "
                f"or index into a new directory")

    # ---- rows ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def shards(self) -> tuple[OpenShard, ...]:
        """The opened shards, in gallery order."""
        return tuple(self._shards)

    @property
    def ids_digest(self) -> str:
        """:func:`ids_digest` of this snapshot's ids (computed once)."""
        if self._digest is None:
            self._digest = ids_digest(self.ids)
        return self._digest

    @property
    def removed_rows(self) -> int:
        """Rows marked removed but still on disk (``ucofia-run compact`` reclaims them)."""
        return sum(s.count - s.size for s in self._shards)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """One dict per row, in row order: ``id`` always, plus the source file's details where the
        index recorded them (format >= 2; see docs/index-format.md)."""
        if self._entries is None:
            entries = [entry for shard in self._shards for entry in shard.entries()]
            if len(entries) != len(self):
                raise GalleryIndexError(f"{self.root}: the shards' {ENTRIES} hold {len(entries)} entries for "
                                        f"{len(self)} rows; rebuild the index")
            self._entries = entries
        return self._entries

    def row_of(self, video_id: str) -> int | None:
        """The gallery row of ``video_id``, or None when it is not indexed."""
        if self._rows is None:
            self._rows = {vid: row for row, vid in enumerate(self.ids)}
        return self._rows.get(video_id)

    def entry(self, video_id: str) -> dict[str, Any] | None:
        """The entry of ``video_id`` (see :attr:`entries`), or None when it is not indexed."""
        row = self.row_of(video_id)
        return None if row is None else self.entries[row]

    def features(self, start: int, stop: int, roles: tuple[str, ...] = FEATURE_ROLES) -> dict[str, np.ndarray]:
        """role -> float32 array of gallery rows [start, stop) (a copy read from the shard files)."""
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts: dict[str, list[np.ndarray]] = {role: [] for role in roles}
        i = max(first, 0)
        while i < len(self._shards) and self._offsets[i] < stop:
            lo, hi = max(start - self._offsets[i], 0), min(stop, self._offsets[i + 1]) - self._offsets[i]
            shard = self._shards[i]
            if hi > lo:
                physical = shard.physical(slice(int(lo), int(hi)))
                for role in roles:
                    parts[role].append(shard.read(role, physical))
            i += 1
        return {role: np.concatenate(p) if p else np.empty((0,), np.float32) for role, p in parts.items()}

    def gather(self, rows: np.ndarray, roles: tuple[str, ...] = FEATURE_ROLES) -> dict[str, np.ndarray]:
        """role -> float32 array of the given gallery rows, in the given order (reads only those rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for role in roles:
            out[role] = np.empty((len(rows),) + self._shards[0].layout(role).row_shape, dtype=np.float32)
        jobs = []
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            shard = self._shards[s]
            local = rows[sel] - self._offsets[s]
            order = np.argsort(local, kind="stable")  # ascending rows: consecutive ones are read at once
            jobs.extend((shard, role, shard.physical(local[order]), sel[order]) for role in roles)

        def read(job: tuple) -> None:  # one file's rows, decoded into their places in ``out``
            shard, role, physical, places = job
            out[role][places] = shard.read(role, physical)

        if len(rows) < PARALLEL_MIN_ROWS or len(jobs) < 2:
            for job in jobs:
                read(job)
        else:  # scattered rows (a shortlist) read by parallel positioned reads, a file per task
            futures = [_read_pool().submit(read, job) for job in jobs]
            wait(futures)  # every read has finished before returning, failed ones included
            for future in futures:
                future.result()
        return out

    def subset(self, rows: np.ndarray) -> GalleryIndex | RowSubset:
        """A video source over the given gallery rows, in that order (the index itself for all rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and (rows == np.arange(len(self))).all():
            return self
        return RowSubset(self, rows)

    # ---- biases ----------------------------------------------------------------------------
    def biases(self) -> dict[str, np.ndarray] | None:
        """level -> SK video bias [V], or None when the index was built without a caption bank."""
        meta = self.state.biases
        if meta is None or self._bias_values is None:
            return None
        if meta.ids_sha256 != self.ids_digest:
            raise GalleryIndexError(f"the SK biases of {self.root} do not match the indexed videos; re-run "
                                    f"`ucofia-run index` on this directory to recompute them")
        return {level: self._bias_values[i] for i, level in enumerate(LEVELS)}


@dataclass
class RowSubset:
    """Selected rows of an index, served by row range (see GalleryIndex.subset)."""

    index: GalleryIndex
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return self.index.gather(self.rows[start:stop])
