"""Shard directories: writing one atomically, bringing one in from another index, and reading the
rows of an opened shard (ids, entries, features).

Features are read with plain ``preadv`` file reads into fresh arrays, one read per run of
consecutive rows; no shard file stays open or memory-mapped between reads (docs/index-format.md,
"Reading").
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import GalleryIndexError
from runtime.faults import crash_point
from runtime.index.format import ENTRIES, IDS, SHARD_ARRAYS, IndexChangedError, ShardRecord
from runtime.index.store import DEFAULT_STORE, check_store, decode, encode, scale_name, stored_dtype

Rows = slice | np.ndarray  # a slice of rows, or ascending row numbers


def read_json(path: Path) -> Any:
    """JSON of a file the state names; a missing one means an update replaced it (IndexChangedError)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexChangedError(f"{path} is gone: the index was updated (e.g. compacted) after it was opened; "
                                f"open it again") from None
    except json.JSONDecodeError as exc:
        raise GalleryIndexError(f"{path} is corrupt ({exc}); rebuild the index") from None


def read_shard_ids(folder: Path) -> list[str]:
    """The ids of every physical row of the shard directory ``folder``."""
    return read_json(folder / IDS)


@dataclass(frozen=True)
class Layout:
    """Where one shard file's rows are in its .npy file."""

    dtype: np.dtype
    row_shape: tuple[int, ...]
    offset: int  # bytes before the first row (the .npy header)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


def read_layout(path: Path, rows: int) -> Layout:
    """The dtype, row shape and data offset of a .npy shard file that must hold ``rows`` rows."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise IndexChangedError(f"{path} is gone: the index was updated (e.g. compacted) after it was "
                                f"opened; open it again") from None
    except (OSError, ValueError) as exc:
        raise GalleryIndexError(f"index shard file {path} is unreadable ({exc}); rebuild the index") from None
    if fortran or not shape or shape[0] != rows:
        raise GalleryIndexError(f"{path} has shape {shape}{' (Fortran order)' if fortran else ''}, the state "
                                f"says {rows} rows; rebuild the index")
    return Layout(np.dtype(dtype), tuple(shape[1:]), offset)


def read_rows(path: Path, layout: Layout, physical: Rows) -> np.ndarray:
    """Physical rows of one .npy file as stored, read with ``preadv`` into a fresh array: one read
    per run of consecutive rows."""
    if isinstance(physical, slice):
        runs = [(int(physical.start or 0), int(physical.stop))]
    else:
        rows = np.asarray(physical, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks) if len(run)]
    count = sum(hi - lo for lo, hi in runs)
    out = np.empty((count,) + layout.row_shape, dtype=layout.dtype)
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    row_bytes = layout.row_bytes
    try:
        with open(path, "rb", buffering=0) as fh:
            done = 0
            for lo, hi in runs:
                want = (hi - lo) * row_bytes
                got = os.preadv(fh.fileno(), [buffer[done * row_bytes:done * row_bytes + want]],
                                layout.offset + lo * row_bytes)
                if got != want:
                    raise GalleryIndexError(f"index shard file {path} is truncated; rebuild the index")
                done += hi - lo
    except FileNotFoundError:
        raise IndexChangedError(f"{path} is gone: the index was updated (e.g. compacted) after it was opened; "
                                f"open it again") from None
    except OSError as exc:
        raise GalleryIndexError(f"index shard file {path} is unreadable ({exc}); rebuild the index") from None
    return out


class OpenShard:
    """One shard of an opened index: its record, its live rows and their ids (read at open), and
    float32 reads of its features. Local row numbers count live rows; physical ones count the
    rows in the files (removed rows included)."""

    def __init__(self, folder: Path, record: ShardRecord) -> None:
        self.folder = folder
        self.record = record
        self.store = check_store(record.store)
        # sorted physical rows still in the gallery; None: all of them
        self.live = np.setdiff1d(np.arange(record.count), record.removed) if record.removed else None
        ids = read_shard_ids(folder)
        self.ids: list[str] = ids if self.live is None else [ids[i] for i in self.live]
        self._layouts: dict[str, Layout] = {}  # file stem -> where its rows are (read once)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def count(self) -> int:
        """Physical rows in the files."""
        return self.record.count

    @property
    def size(self) -> int:
        """Live rows."""
        return self.count if self.live is None else len(self.live)

    def physical(self, local: Rows) -> Rows:
        """Physical rows of live rows ``local`` (a slice or an index array)."""
        return local if self.live is None else self.live[local]

    def entries(self) -> list[dict[str, Any]]:
        """The entries of the live rows (id-only ones for a format 1 shard, which has no entries.json)."""
        if not (self.folder / ENTRIES).is_file() and (self.folder / IDS).is_file():
            return [{"id": vid} for vid in self.ids]
        rows = read_json(self.folder / ENTRIES)
        return rows if self.live is None else [rows[i] for i in self.live]

    def layout(self, stem: str) -> Layout:
        """Where the rows of the file ``stem``.npy are (read from its header once)."""
        if stem not in self._layouts:
            self._layouts[stem] = read_layout(self.folder / f"{stem}.npy", self.count)
        return self._layouts[stem]

    def read(self, role: str, physical: Rows) -> np.ndarray:
        """float32 rows of one role (only those rows are read from the file)."""
        scale = None
        if stored_dtype(self.store, role) == "int8":
            scale = self._read_stored(scale_name(role), physical)
        return decode(self._read_stored(role, physical), scale)

    def _read_stored(self, stem: str, physical: Rows) -> np.ndarray:
        return read_rows(self.folder / f"{stem}.npy", self.layout(stem), physical)


def write_shard(shard_root: Path, name: str, ids: list[str], features: Mapping[str, np.ndarray],
                entries: list[dict[str, Any]] | None = None, store: str = DEFAULT_STORE) -> ShardRecord:
    """Write one shard directory ``shard_root/name`` atomically (temp dir + rename) with its
    features in ``store`` (see runtime.index.store) and return its state record; the shard is part
    of an index only once :meth:`IndexWriter.commit_shards` has recorded it (until then the next
    writer to open the index deletes it as an orphan). The record's store must be the index's."""
    for role in SHARD_ARRAYS:
        if features[role].shape[0] != len(ids):
            raise ValueError(f"{role} has {features[role].shape[0]} rows for {len(ids)} ids")
    if entries is None:
        entries = [{"id": vid} for vid in ids]
    if [e.get("id") for e in entries] != list(ids):
        raise ValueError("entries must describe the batch's ids, in the same order")
    arrays = encode({role: features[role] for role in SHARD_ARRAYS}, store)
    with new_shard_dir(shard_root, name) as tmp:
        (tmp / IDS).write_text(json.dumps(ids))
        (tmp / ENTRIES).write_text(json.dumps(entries, ensure_ascii=False))
        for stem, value in arrays.items():
            np.save(tmp / f"{stem}.npy", np.ascontiguousarray(value))
    return ShardRecord(name=name, count=len(ids), store=store)


@contextmanager
def new_shard_dir(shard_root: Path, name: str) -> Iterator[Path]:
    """A temporary directory to fill, renamed to ``shard_root/name`` when the block ends without
    an error (deleted otherwise): a shard directory appears whole or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=shard_root))
    try:
        yield tmp
        crash_point("shard:written")
        os.replace(tmp, shard_root / name)
        crash_point("shard:renamed")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def link_shard(source: Path, shard_root: Path, name: str, record: ShardRecord) -> ShardRecord:
    """Bring the committed shard directory ``source`` of another index in as ``shard_root/name``
    (hard links where the file system allows, else copies; temp dir + rename) and return its state
    record. Shard files are never changed after they are written, so the two indexes can share them."""
    with new_shard_dir(shard_root, name) as tmp:
        for path in source.iterdir():
            try:
                os.link(path, tmp / path.name)
            except OSError:
                shutil.copy2(path, tmp / path.name)
    return ShardRecord(name=name, count=record.count, store=record.store, removed=tuple(sorted(record.removed)))
