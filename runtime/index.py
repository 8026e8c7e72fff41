"""The gallery index on disk: per-video features in .npy shards plus a small JSON state.

Layout of an index directory::

    index.json          state: format, bundle fingerprint + path, config, shard list, biases info
    shards/NNNNNN/      one shard per encoded batch: ids.json, entries.json (format 2), video.npy [n,D],
                        frame_features.npy [n,F,D], patches.npy [n,P,D], video_mask.npy [n,F]
    failed.jsonl        videos that could not be decoded/encoded (id, path, error), rewritten atomically
    biases.npy          [3, V] SK video bias per level (rows in LEVELS order), when a bank was given
    level1_kernel.npy   [D, D] video_sentence bilinear form (two-stage search cache)
    faiss.index         FAISS inner-product index over the video_sentence level (two-stage cache)
    .lock               held (flock) by the one process writing the index

Crash safety: a shard is written to a temporary directory and renamed into place, then the state
file is replaced atomically; shards not named by the state (a crash between the two renames) are
deleted on the next open, so a killed run loses at most the batch in flight.

Entries (format 2): ``entries.json`` holds one JSON object per row, in row order, describing what
the row was made from: ``id`` always; for a video file ``path`` (absolute, as resolved at index
time), ``sha256``, ``bytes`` and ``mtime`` of the file, and the stream's ``duration_s``, ``fps``,
``width``, ``height`` and the number of sampled ``frames``. Format 1 indexes (no entries.json)
still open; their entries hold only the id. Writing to a format 1 index upgrades its state to
format 2 (old shards keep working, only new rows get full entries).

Windowed rows (``ucofia-run index --window W --stride S``, see ``runtime.windows``): one row per
time window of a file. Their entries add ``file_id`` (the file's whole-file id), ``start`` and
``end`` (the span in seconds, float on a millisecond grid, ``end`` exclusive), ``window`` and
``stride`` (the setting, seconds); ``frames`` counts the window's sampled frames and the other
fields describe the file. Row ids are ``<file_id>@<start>-<end>`` (e.g. ``talk@2.5-12.5``), stable
across runs so that a rerun skips the windows already indexed. An index holds either whole-file
rows or windows of one setting.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ucofia.config import UCoFiAConfig
from ucofia.io_utils import atomic_path, atomic_write_text

from runtime.bundle import Bundle
from runtime.errors import GalleryIndexError
from runtime.scoring import LEVELS, VIDEO_ROLES

INDEX_FORMAT = "ucofia.index/2"
# Formats this code reads (format 1: no entries.json in the shards).
READABLE_FORMATS = ("ucofia.index/1", INDEX_FORMAT)
STATE = "index.json"
SHARDS = "shards"
ENTRIES = "entries.json"
FAILED = "failed.jsonl"
BIASES = "biases.npy"
LOCK = ".lock"
SHARD_ARRAYS = VIDEO_ROLES + ("video_mask",)


def ids_digest(ids: list[str]) -> str:
    """sha256 of the ordered gallery ids (ties caches such as biases to one gallery)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


@dataclass(frozen=True)
class _Layout:
    """Where one shard array's rows are in its .npy file."""

    dtype: np.dtype
    row_shape: tuple[int, ...]
    offset: int  # bytes before the first row (the .npy header)

    @property
    def row_items(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64))


@dataclass
class _Shard:
    name: str
    count: int
    layouts: dict[str, _Layout] = field(default_factory=dict)


def _read_state(root: Path) -> dict[str, Any]:
    path = root / STATE
    if not path.is_file():
        raise GalleryIndexError(f"{root} is not a ucofia index ({STATE} missing); build one with `ucofia-run index`")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GalleryIndexError(f"{path} is corrupt ({exc}); rebuild the index") from None
    if state.get("format") not in READABLE_FORMATS:
        raise GalleryIndexError(f"{path}: unsupported index format {state.get('format')!r} (this version reads "
                                f"{', '.join(READABLE_FORMATS)}); rebuild the index or upgrade ucofia")
    return state


class GalleryIndex:
    """Read access to an index: ids, features by row range or by rows, biases.

    Features are read from the shard files with plain file reads into fresh arrays: nothing of
    the gallery stays mapped or cached in this process, so what a search holds is what its tiles
    hold (a memory map kept open made every page a search touched stay resident: peak memory grew
    with the gallery whatever --memory-mb said).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise GalleryIndexError(f"index directory not found: {self.root}")
        self.state = _read_state(self.root)
        self.config = UCoFiAConfig.from_dict(self.state["config"])
        self._shards = [_Shard(s["name"], int(s["count"])) for s in self.state["shards"]]
        self._offsets = np.cumsum([0] + [s.count for s in self._shards])
        self._ids: list[str] | None = None
        self._entries: list[dict[str, Any]] | None = None
        self._rows: dict[str, int] | None = None

    # ---- identity --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.state["fingerprint"])

    @property
    def bundle_path(self) -> Path:
        return Path(self.state["bundle"])

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
    def ids(self) -> list[str]:
        if self._ids is None:
            ids: list[str] = []
            for shard in self._shards:
                ids.extend(json.loads((self._shard_dir(shard.name) / "ids.json").read_text()))
            self._ids = ids
        return self._ids

    @property
    def entries(self) -> list[dict[str, Any]]:
        """One dict per row, in row order: ``id`` always, plus the source file's details where the
        index recorded them (format 2; see the module docstring)."""
        if self._entries is None:
            entries: list[dict[str, Any]] = []
            for shard in self._shards:
                path = self._shard_dir(shard.name) / ENTRIES
                if path.is_file():
                    try:
                        entries.extend(json.loads(path.read_text()))
                    except json.JSONDecodeError as exc:
                        raise GalleryIndexError(f"{path} is corrupt ({exc}); rebuild the index") from None
                else:  # a format 1 shard
                    start = len(entries)
                    entries.extend({"id": vid} for vid in self.ids[start:start + shard.count])
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

    def _shard_dir(self, name: str) -> Path:
        return self.root / SHARDS / name

    def _layout(self, shard: _Shard, role: str) -> _Layout:
        """The dtype, row shape and data offset of a shard array (read once from its header)."""
        if role not in shard.layouts:
            path = self._shard_dir(shard.name) / f"{role}.npy"
            try:
                with open(path, "rb") as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(fh)
                    offset = fh.tell()
            except (OSError, ValueError) as exc:
                raise GalleryIndexError(f"index shard file {path} is unreadable ({exc}); rebuild the index") from None
            if fortran or not shape or shape[0] != shard.count:
                raise GalleryIndexError(f"{path} has shape {shape}{' (Fortran order)' if fortran else ''}, the state "
                                        f"says {shard.count} rows; rebuild the index")
            shard.layouts[role] = _Layout(np.dtype(dtype), tuple(shape[1:]), offset)
        return shard.layouts[role]

    def _map(self, shard: _Shard, role: str) -> np.ndarray:
        """A read-only memory map of one shard array for a single read: the caller copies what it
        needs and drops the map (unmapped with it, so no page stays resident)."""
        layout = self._layout(shard, role)
        path = self._shard_dir(shard.name) / f"{role}.npy"
        try:
            return np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset,
                             shape=(shard.count,) + layout.row_shape)
        except (OSError, ValueError) as exc:  # ValueError: the file is shorter than its header says
            raise GalleryIndexError(f"index shard file {path} is unreadable ({exc}); rebuild the index") from None

    def _read(self, shard: _Shard, role: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of one shard array, read from its file into a fresh array."""
        layout = self._layout(shard, role)
        path = self._shard_dir(shard.name) / f"{role}.npy"
        count = (hi - lo) * layout.row_items
        try:
            flat = np.fromfile(path, dtype=layout.dtype, count=count,
                               offset=layout.offset + lo * layout.row_items * layout.dtype.itemsize)
        except OSError as exc:
            raise GalleryIndexError(f"index shard file {path} is unreadable ({exc}); rebuild the index") from None
        if flat.size != count:
            raise GalleryIndexError(f"index shard file {path} is truncated; rebuild the index")
        return flat.reshape((hi - lo,) + layout.row_shape)

    def features(self, start: int, stop: int, roles: tuple[str, ...] = VIDEO_ROLES) -> dict[str, np.ndarray]:
        """role -> float32 array of gallery rows [start, stop) (a copy; see the class docstring)."""
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts: dict[str, list[np.ndarray]] = {role: [] for role in roles}
        i = max(first, 0)
        while i < len(self._shards) and self._offsets[i] < stop:
            lo, hi = max(start - self._offsets[i], 0), min(stop, self._offsets[i + 1]) - self._offsets[i]
            for role in roles:
                parts[role].append(self._read(self._shards[i], role, int(lo), int(hi)).astype(np.float32, copy=False))
            i += 1
        return {role: (p[0] if len(p) == 1 else np.concatenate(p)) if p else np.empty((0,), np.float32)
                for role, p in parts.items()}

    def gather(self, rows: np.ndarray, roles: tuple[str, ...] = VIDEO_ROLES) -> dict[str, np.ndarray]:
        """role -> float32 array of the given gallery rows, in the given order (a copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        out = {role: np.empty((len(rows),) + self._layout(self._shards[0], role).row_shape, dtype=np.float32)
               for role in roles}
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = rows[sel] - self._offsets[s]
            for role in roles:
                out[role][sel] = self._map(self._shards[s], role)[local]
        return out

    def subset(self, rows: np.ndarray) -> "GalleryIndex | _Subset":
        """A video source over the given gallery rows, in that order (the index itself for all rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and (rows == np.arange(len(self))).all():
            return self
        return _Subset(self, rows)

    # ---- biases ----------------------------------------------------------------------------
    def biases(self) -> dict[str, np.ndarray] | None:
        """level -> SK video bias [V], or None when the index was built without a caption bank."""
        meta = self.state.get("biases")
        if not meta:
            return None
        if meta.get("ids_sha256") != ids_digest(self.ids):
            raise GalleryIndexError(f"{self.root / BIASES} does not match the indexed videos; re-run "
                                    f"`ucofia-run index` on this directory to recompute it")
        values = np.load(self.root / BIASES)
        return {level: values[i] for i, level in enumerate(LEVELS)}


@dataclass
class _Subset:
    """Selected rows of an index, served by row range (see GalleryIndex.subset)."""

    index: GalleryIndex
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return self.index.gather(self.rows[start:stop])


def write_shard(shard_root: Path, name: str, ids: list[str], features: Mapping[str, np.ndarray],
                entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write one shard directory ``shard_root/name`` atomically (temp dir + rename) and return its
    state record; the shard is part of an index only once :meth:`IndexWriter.commit_shards` has
    recorded it (until then the next writer to open the index deletes it as an orphan)."""
    for role in SHARD_ARRAYS:
        if features[role].shape[0] != len(ids):
            raise ValueError(f"{role} has {features[role].shape[0]} rows for {len(ids)} ids")
    if entries is None:
        entries = [{"id": vid} for vid in ids]
    if [e.get("id") for e in entries] != list(ids):
        raise ValueError("entries must describe the batch's ids, in the same order")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=shard_root))
    try:
        (tmp / "ids.json").write_text(json.dumps(ids))
        (tmp / ENTRIES).write_text(json.dumps(entries, ensure_ascii=False))
        for role in SHARD_ARRAYS:
            np.save(tmp / f"{role}.npy", np.ascontiguousarray(features[role]))
        os.replace(tmp, shard_root / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"name": name, "count": len(ids)}


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    handle = open(root / LOCK, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GalleryIndexError(f"another process is writing the index {root} (lock {root / LOCK} held)") from None
        yield
    finally:
        handle.close()


class IndexWriter:
    """Creates or appends to an index; every update is crash-safe (see the module docstring).

    Use as a context manager: it holds the index lock while open.
    """

    def __init__(self, root: str | Path, bundle: Bundle) -> None:
        self.root = Path(root)
        self.bundle = bundle
        self._lock_cm: Any = None

    def __enter__(self) -> "IndexWriter":
        if self.root.exists() and not self.root.is_dir():
            raise GalleryIndexError(f"{self.root} exists and is not a directory")
        if (self.root.is_dir() and not (self.root / STATE).exists()
                and any(p.name != LOCK for p in self.root.iterdir())):
            raise GalleryIndexError(f"{self.root} is a non-empty directory without {STATE}; "
                                    f"choose an empty or new directory for the index")
        self._check_fingerprint()  # before touching anything
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_cm = _locked(self.root)
        self._lock_cm.__enter__()
        try:
            state = self._check_fingerprint()  # again under the lock: another writer may have finished
            self.state = state or {"format": INDEX_FORMAT, "fingerprint": self.bundle.fingerprint,
                                   "config": self.bundle.config.to_dict(), "shards": [], "biases": None,
                                   "created": time.time()}
            self.state["bundle"] = str(self.bundle.root.resolve())
            self.state["format"] = INDEX_FORMAT  # format 1 shards stay readable (entries: ids only)
            self._save_state()  # a new index exists from here on, even if this run is killed
            self._clean_orphans()
            self.indexed = set(GalleryIndex(self.root).ids)
            self.failures = self._read_failures()
        except BaseException:
            self._lock_cm.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock_cm.__exit__(*exc)

    # ---- internals -------------------------------------------------------------------------
    def _check_fingerprint(self) -> dict[str, Any] | None:
        """The existing state (None for a new index); raises when it belongs to another bundle."""
        if not (self.root / STATE).exists():
            return None
        state = _read_state(self.root)
        if state["fingerprint"] != self.bundle.fingerprint:
            raise GalleryIndexError(
                f"index {self.root} was built with bundle fingerprint {state['fingerprint'][:12]}… "
                f"but {self.bundle.root} has {self.bundle.fingerprint[:12]}…; index into a new directory "
                f"(an index holds features of exactly one bundle)")
        return state

    def _clean_orphans(self) -> None:
        shard_root = self.root / SHARDS
        shard_root.mkdir(exist_ok=True)
        known = {s["name"] for s in self.state["shards"]}
        for entry in shard_root.iterdir():
            if entry.name not in known:  # temp dirs and shards renamed in before a crash
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def _save_state(self) -> None:
        self.state["updated"] = time.time()
        atomic_write_text(self.root / STATE, json.dumps(self.state, indent=1))

    def _read_failures(self) -> dict[str, dict[str, Any]]:
        path = self.root / FAILED
        if not path.is_file():
            return {}
        failures = {}
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                failures[record["id"]] = record
        return failures

    def _save_failures(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.failures.values())
        atomic_write_text(self.root / FAILED, text)

    # ---- updates ---------------------------------------------------------------------------
    def add_batch(self, ids: list[str], features: Mapping[str, np.ndarray],
                  entries: list[dict[str, Any]] | None = None) -> None:
        """Append one encoded batch as a new shard (temp dir + rename, then the state file).

        ``entries`` describe the rows (see the module docstring); by default they hold only the ids.
        """
        if not ids:
            return
        dup = [i for i in ids if i in self.indexed]
        if dup:
            raise GalleryIndexError(f"video ids already indexed: {dup[:5]}")
        name = f"{len(self.state['shards']):06d}"
        record = write_shard(self.root / SHARDS, name, ids, features, entries)
        self.commit_shards([record])

    def commit_shards(self, records: list[dict[str, Any]]) -> None:
        """Add shards already written by :func:`write_shard` (here or by other processes) to the
        index in one atomic state update. Refuses ids already indexed or repeated across shards."""
        new_ids: list[str] = []
        for record in records:
            new_ids.extend(json.loads((self.root / SHARDS / record["name"] / "ids.json").read_text()))
        dup = sorted(i for i, n in Counter(new_ids).items() if n > 1 or i in self.indexed)
        if dup:
            raise GalleryIndexError(f"video ids already indexed: {dup[:5]}")
        self.state["shards"].extend({"name": r["name"], "count": int(r["count"])} for r in records)
        self._save_state()
        self.indexed.update(new_ids)
        if any(i in self.failures for i in new_ids):
            for i in new_ids:
                self.failures.pop(i, None)
            self._save_failures()

    def record_failure(self, video_id: str, path: str, error: str) -> None:
        """List a video that could not be indexed in failed.jsonl (rewritten atomically)."""
        self.failures[video_id] = {"id": video_id, "path": path, "error": error, "time": time.time()}
        self._save_failures()

    def forget_failures(self, ids: list[str]) -> None:
        """Drop the failed.jsonl records of ``ids`` (e.g. a file whose windows are now indexed)."""
        if any(i in self.failures for i in ids):
            for i in ids:
                self.failures.pop(i, None)
            self._save_failures()

    def set_biases(self, values: np.ndarray | None, meta: dict[str, Any] | None) -> None:
        """Store the per-level SK video biases [3, V] (or drop them with None) for the current ids."""
        if values is None:
            self.state["biases"] = None
        else:
            ids = GalleryIndex(self.root).ids
            if values.shape != (len(LEVELS), len(ids)):
                raise ValueError(f"biases must be [{len(LEVELS)}, {len(ids)}], got {values.shape}")
            with atomic_path(self.root / BIASES) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, values.astype(np.float32))
            self.state["biases"] = {**(meta or {}), "ids_sha256": ids_digest(ids), "levels": list(LEVELS)}
        self._save_state()
