"""The gallery index on disk: per-video features in .npy shards plus a small JSON state.

Layout of an index directory::

    index.json          state: format, bundle fingerprint + path, config, stored dtype, shard list
                        (with removed rows), biases info, pending rows of an unfinished index run
    shards/NAME/        one shard per encoded batch: ids.json, entries.json, video.npy [n,D],
                        frame_features.npy [n,F,D], patches.npy [n,P,D], video_mask.npy [n,F];
                        with the int8 store also frame_features.scale.npy [n,F], patches.scale.npy [n,P]
    failed.jsonl        videos that could not be decoded/encoded (id, path, error), rewritten atomically
    biases-HASH.npy     [3, V] SK video bias per level (rows in LEVELS order), when a bank was given
    level1_kernel.npy   [D, D] video_sentence bilinear form (two-stage search cache)
    stage1-HASH.faiss   FAISS index over the video_sentence level + bias (two-stage search cache;
    stage1-HASH.json    its kind and parameters: flat, IVF or HNSW, runtime/stage1.py)
    .lock               held (flock) by the one process writing the index

Stored dtype (format 3): ``state["store"]`` is ``float32``, ``float16`` or ``int8`` (see
runtime.store); every shard record repeats its own ``store``. Readers always get float32.

Rows: the gallery is the shards' rows in state order, minus each shard record's ``removed`` local
rows (``ucofia-run remove`` and replacement mark rows removed; ``ucofia-run compact`` rewrites the
shards without them). Row numbers seen by readers count live rows only.

Crash safety: every file but ``index.json`` is written once under a new name (shards to a
temporary directory renamed into place, biases and stage-1 files named by content) and never
changed afterwards; an update then replaces ``index.json`` atomically, which is the one moment it
takes effect. A reader that opens the index therefore sees the state before or after an update,
never a mix. Files no state names (a crash before the state replace; shards a compaction
replaced) are deleted by the next writer; a reader that opened the index before a compaction
deleted its shards gets :class:`IndexChangedError` and opens it again.

Entries (format >= 2): ``entries.json`` holds one JSON object per row, in row order, describing
what the row was made from: ``id`` always; for a video file ``path`` (absolute, as resolved at
index time), ``sha256``, ``bytes`` and ``mtime`` of the file, and the stream's ``duration_s``,
``fps``, ``width``, ``height`` and the number of sampled ``frames``. Format 1 indexes (no
entries.json) still open; their entries hold only the id. Formats 1 and 2 (float32, no removed
rows) open as they are; writing to one upgrades its state to format 3.

Windowed rows (``ucofia-run index --window W --stride S``, see ``runtime.windows``): one row per
time window of a file. Their entries add ``file_id`` (the file's whole-file id), ``start`` and
``end`` (the span in seconds, float on a millisecond grid, ``end`` exclusive), ``window`` and
``stride`` (the setting, seconds); ``frames`` counts the window's sampled frames and the other
fields describe the file. Row ids are ``<file_id>@<start>-<end>`` (e.g. ``talk@2.5-12.5``), stable
across runs so that a rerun skips the windows already indexed. An index holds either whole-file
rows or windows of one setting.

Reading: features are read from the shard files with plain file reads into fresh arrays, nothing
of the gallery stays mapped in the reading process, so what a search holds is what its tiles hold
(a memory map kept open let every page a search touched stay resident: peak memory grew with the
gallery whatever ``--memory-mb`` said).
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
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ucofia.config import UCoFiAConfig
from ucofia.io_utils import atomic_path, atomic_write_text

from runtime.bundle import Bundle
from runtime.errors import GalleryIndexError
from runtime.faults import crash_point
from runtime.scoring import LEVELS, VIDEO_ROLES
from runtime.index.store import DEFAULT_STORE, check_store, decode, encode, scale_name, stored_dtype

INDEX_FORMAT = "ucofia.index/3"
# Formats this code reads (1: no entries.json; 2: float32 shards without removed rows).
READABLE_FORMATS = ("ucofia.index/1", "ucofia.index/2", INDEX_FORMAT)
LEGACY_STORE = "float32"  # the store of format 1 and 2 indexes
STATE = "index.json"
SHARDS = "shards"
IDS = "ids.json"
ENTRIES = "entries.json"
FAILED = "failed.jsonl"
LEGACY_BIASES = "biases.npy"  # format 1/2 name; format 3 names the file by content
BIASES_PREFIX = "biases-"
STAGE1_PREFIX = "stage1-"
LEGACY_STAGE1 = ("faiss.index", "faiss.json")  # format 2's stage-1 cache
LOCK = ".lock"
SHARD_ARRAYS = VIDEO_ROLES + ("video_mask",)
# Live rows per shard that ``compact`` writes (coalescing smaller shards).
COMPACT_ROWS = 4096
# How often opening re-reads the state when an update replaced files while it was being read.
OPEN_ATTEMPTS = 5


class IndexChangedError(GalleryIndexError):
    """Files of the state this reader opened were replaced by a later update (e.g. compaction)."""


def ids_digest(ids: list[str]) -> str:
    """sha256 of the ordered gallery ids (ties caches such as biases to one gallery)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def source_key(entry: Mapping[str, Any]) -> str:
    """What a row was made from: its ``file_id`` (time windows of one file) or source ``path``, else
    its id. Replacing a changed file replaces every row with the same key."""
    return str(entry.get("file_id") or entry.get("path") or entry["id"])


@dataclass(frozen=True)
class _Layout:
    """Where one shard file's rows are in its .npy file."""

    dtype: np.dtype
    row_shape: tuple[int, ...]
    offset: int  # bytes before the first row (the .npy header)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class _Shard:
    name: str
    count: int  # physical rows in the files
    store: str
    live: np.ndarray | None  # sorted local rows still in the gallery; None: all of them
    ids: list[str] = field(default_factory=list)  # live ids
    layouts: dict[str, "_Layout"] = field(default_factory=dict)  # file stem -> where its rows are

    @property
    def size(self) -> int:
        return self.count if self.live is None else len(self.live)

    def physical(self, local: slice | np.ndarray) -> slice | np.ndarray:
        """Physical rows of live rows ``local`` (a slice or an index array)."""
        return local if self.live is None else self.live[local]


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
    state.setdefault("store", LEGACY_STORE)
    for record in state["shards"]:
        record.setdefault("store", LEGACY_STORE)
    return state


def _read_json(path: Path) -> Any:
    """JSON of a file the state names; a missing one means an update replaced it (IndexChangedError)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexChangedError(f"{path} is gone: the index was updated (e.g. compacted) after it was opened; "
                                f"open it again") from None
    except json.JSONDecodeError as exc:
        raise GalleryIndexError(f"{path} is corrupt ({exc}); rebuild the index") from None


def effective_shards(state: Mapping[str, Any], include_pending: bool) -> list[dict[str, Any]]:
    """The state's shard records, with the pending (unpublished) shards and removals applied when
    ``include_pending`` (what the writer of an unfinished ``index`` run works on)."""
    pending = state.get("pending") or {}
    if not include_pending or not pending:
        return list(state["shards"])
    removed = pending.get("removed", {})
    out = []
    for record in list(state["shards"]) + list(pending.get("shards", [])):
        rows = set(record.get("removed") or []) | set(removed.get(record["name"], []))
        out.append({**record, "removed": sorted(rows)} if rows else dict(record))
    return out


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
            self.state = _read_state(self.root)
            try:
                self._open()
                break
            except IndexChangedError:
                if attempt == OPEN_ATTEMPTS - 1 or _read_state(self.root) == self.state:
                    raise
        self.config = UCoFiAConfig.from_dict(self.state["config"])
        self._entries: list[dict[str, Any]] | None = None
        self._rows: dict[str, int] | None = None
        self._digest: str | None = None

    def _open(self) -> None:
        shards = []
        for record in effective_shards(self.state, self.include_pending):
            removed = record.get("removed") or []
            live = np.setdiff1d(np.arange(int(record["count"])), removed) if removed else None
            shard = _Shard(record["name"], int(record["count"]), check_store(record["store"]), live)
            ids = _read_json(self._shard_dir(shard.name) / IDS)
            shard.ids = ids if live is None else [ids[i] for i in live]
            shards.append(shard)
        self._shards = shards
        self._offsets = np.cumsum([0] + [s.size for s in shards])
        self.ids = [vid for s in shards for vid in s.ids]
        meta = self.state.get("biases")
        self._bias_values = None
        if meta:
            path = self.root / meta.get("file", LEGACY_BIASES)
            try:
                self._bias_values = np.load(path)
            except FileNotFoundError:
                raise IndexChangedError(f"{path} is gone: the index was updated after it was opened; open it "
                                        f"again") from None

    # ---- identity --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.state["fingerprint"])

    @property
    def bundle_path(self) -> Path:
        return Path(self.state["bundle"])

    @property
    def store(self) -> str:
        """The stored feature dtype of the index (float32, float16 or int8; see runtime.store)."""
        return str(self.state["store"])

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
        index recorded them (format >= 2; see the module docstring)."""
        if self._entries is None:
            entries = [entry for shard in self._shards for entry in self.entries_of_shard(shard)]
            if len(entries) != len(self):
                raise GalleryIndexError(f"{self.root}: the shards' {ENTRIES} hold {len(entries)} entries for "
                                        f"{len(self)} rows; rebuild the index")
            self._entries = entries
        return self._entries

    def entries_of_shard(self, shard: _Shard) -> list[dict[str, Any]]:
        """The entries of one shard's live rows."""
        folder = self._shard_dir(shard.name)
        if not (folder / ENTRIES).is_file() and (folder / IDS).is_file():  # a format 1 shard
            return [{"id": vid} for vid in shard.ids]
        rows = _read_json(folder / ENTRIES)
        return rows if shard.live is None else [rows[i] for i in shard.live]

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

    def _layout(self, shard: _Shard, stem: str) -> _Layout:
        """The dtype, row shape and data offset of one shard file (read once from its .npy header)."""
        if stem not in shard.layouts:
            path = self._shard_dir(shard.name) / f"{stem}.npy"
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
            if fortran or not shape or shape[0] != shard.count:
                raise GalleryIndexError(f"{path} has shape {shape}{' (Fortran order)' if fortran else ''}, the state "
                                        f"says {shard.count} rows; rebuild the index")
            shard.layouts[stem] = _Layout(np.dtype(dtype), tuple(shape[1:]), offset)
        return shard.layouts[stem]

    def _read_stored(self, shard: _Shard, stem: str, physical: slice | np.ndarray) -> np.ndarray:
        """Physical rows of one shard file as stored (a slice, or ascending row numbers), read with
        file reads into a fresh array: one read per run of consecutive rows."""
        layout = self._layout(shard, stem)
        path = self._shard_dir(shard.name) / f"{stem}.npy"
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

    def _read(self, shard: _Shard, role: str, physical: slice | np.ndarray) -> np.ndarray:
        """float32 rows of one role of one shard (only those rows are read from the file)."""
        scale = None
        if stored_dtype(shard.store, role) == "int8":
            scale = self._read_stored(shard, scale_name(role), physical)
        return decode(self._read_stored(shard, role, physical), scale)

    def features(self, start: int, stop: int, roles: tuple[str, ...] = VIDEO_ROLES) -> dict[str, np.ndarray]:
        """role -> float32 array of gallery rows [start, stop) (a copy; see the module docstring)."""
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts: dict[str, list[np.ndarray]] = {role: [] for role in roles}
        i = max(first, 0)
        while i < len(self._shards) and self._offsets[i] < stop:
            lo, hi = max(start - self._offsets[i], 0), min(stop, self._offsets[i + 1]) - self._offsets[i]
            shard = self._shards[i]
            if hi > lo:
                physical = shard.physical(slice(int(lo), int(hi)))
                for role in roles:
                    parts[role].append(self._read(shard, role, physical))
            i += 1
        return {role: np.concatenate(p) if p else np.empty((0,), np.float32) for role, p in parts.items()}

    def gather(self, rows: np.ndarray, roles: tuple[str, ...] = VIDEO_ROLES) -> dict[str, np.ndarray]:
        """role -> float32 array of the given gallery rows, in the given order (reads only those rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for role in roles:
            out[role] = np.empty((len(rows),) + self._layout(self._shards[0], role).row_shape, dtype=np.float32)
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            shard = self._shards[s]
            local = rows[sel] - self._offsets[s]
            order = np.argsort(local, kind="stable")  # ascending rows: consecutive ones are read at once
            physical = shard.physical(local[order])
            for role in roles:
                out[role][sel[order]] = self._read(shard, role, physical)
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
        if not meta or self._bias_values is None:
            return None
        if meta.get("ids_sha256") != self.ids_digest:
            raise GalleryIndexError(f"the SK biases of {self.root} do not match the indexed videos; re-run "
                                    f"`ucofia-run index` on this directory to recompute them")
        return {level: self._bias_values[i] for i, level in enumerate(LEVELS)}


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
                entries: list[dict[str, Any]] | None = None, store: str = DEFAULT_STORE) -> dict[str, Any]:
    """Write one shard directory ``shard_root/name`` atomically (temp dir + rename) with its
    features in ``store`` (see runtime.store) and return its state record; the shard is part of an
    index only once :meth:`IndexWriter.commit_shards` has recorded it (until then the next writer
    to open the index deletes it as an orphan). The record's store must be the index's."""
    for role in SHARD_ARRAYS:
        if features[role].shape[0] != len(ids):
            raise ValueError(f"{role} has {features[role].shape[0]} rows for {len(ids)} ids")
    if entries is None:
        entries = [{"id": vid} for vid in ids]
    if [e.get("id") for e in entries] != list(ids):
        raise ValueError("entries must describe the batch's ids, in the same order")
    arrays = encode({role: features[role] for role in SHARD_ARRAYS}, store)
    with _new_shard_dir(shard_root, name) as tmp:
        (tmp / IDS).write_text(json.dumps(ids))
        (tmp / ENTRIES).write_text(json.dumps(entries, ensure_ascii=False))
        for stem, value in arrays.items():
            np.save(tmp / f"{stem}.npy", np.ascontiguousarray(value))
    return {"name": name, "count": len(ids), "store": store}


@contextmanager
def _new_shard_dir(shard_root: Path, name: str) -> Iterator[Path]:
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


def link_shard(source: Path, shard_root: Path, name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Bring a committed shard of another index in as ``shard_root/name`` (hard links where the file
    system allows, else copies; temp dir + rename) and return its state record. Shard files are
    never changed after they are written, so the two indexes can share them."""
    with _new_shard_dir(shard_root, name) as tmp:
        for path in source.iterdir():
            try:
                os.link(path, tmp / path.name)
            except OSError:
                shutil.copy2(path, tmp / path.name)
    out = {"name": name, "count": int(record["count"]), "store": record.get("store", LEGACY_STORE)}
    if record.get("removed"):
        out["removed"] = sorted(int(r) for r in record["removed"])
    return out


@contextmanager
def file_lock(path: Path, message: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed); GalleryIndexError(message) when taken."""
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GalleryIndexError(message) from None
        yield
    finally:
        handle.close()


def writer_lock(root: Path):
    """The lock of the one process that may write the index ``root``."""
    return file_lock(root / LOCK, f"another process is writing the index {root} (lock {root / LOCK} held)")


KEEP_BIASES = object()  # a commit that leaves the biases as they are


class IndexWriter:
    """Creates or updates an index; every update is crash-safe (see the module docstring).

    Use as a context manager: it holds the index lock while open. ``store`` is the stored dtype of
    a new index (default runtime.store.DEFAULT_STORE); for an existing index it must be None or
    the index's own. ``bundle`` None: update an existing index without its bundle (removal without
    biases, compaction).
    """

    def __init__(self, root: str | Path, bundle: Bundle | None, store: str | None = None) -> None:
        self.root = Path(root)
        self.bundle = bundle
        self.requested_store = None if store is None else check_store(store)
        self.publish_later = False  # set when biases will be computed before the run ends
        self._lock_cm: Any = None

    def __enter__(self) -> "IndexWriter":
        if self.root.exists() and not self.root.is_dir():
            raise GalleryIndexError(f"{self.root} exists and is not a directory")
        if (self.root.is_dir() and not (self.root / STATE).exists()
                and any(p.name != LOCK for p in self.root.iterdir())):
            raise GalleryIndexError(f"{self.root} is a non-empty directory without {STATE}; "
                                    f"choose an empty or new directory for the index")
        if self.bundle is None and not (self.root / STATE).exists():
            raise GalleryIndexError(f"{self.root} is not a ucofia index ({STATE} missing)")
        self._check_existing()  # before touching anything
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_cm = writer_lock(self.root)
        self._lock_cm.__enter__()
        try:
            state = self._check_existing()  # again under the lock: another writer may have finished
            self.state = state or {"format": INDEX_FORMAT, "fingerprint": self.bundle.fingerprint,
                                   "config": self.bundle.config.to_dict(), "store": self.requested_store or DEFAULT_STORE,
                                   "shards": [], "biases": None, "created": time.time()}
            if self.bundle is not None:
                self.state["bundle"] = str(self.bundle.root.resolve())
            self.state["format"] = INDEX_FORMAT  # format 1/2 shards stay readable (float32, ids-only entries)
            self.state.setdefault("next_shard", _first_free_number(self.state["shards"]))
            self._save_state()  # a new index exists from here on, even if this run is killed
            self._clean_orphans()
            self._index: GalleryIndex | None = GalleryIndex(self.root, include_pending=True)
            self.indexed = set(self._index.ids)
            self.failures = self._read_failures()
        except BaseException:
            self._lock_cm.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock_cm.__exit__(*exc)

    @property
    def store(self) -> str:
        return str(self.state["store"])

    @property
    def index(self) -> GalleryIndex:
        """The index as committed so far, pending rows included (re-opened after a commit when next
        asked for)."""
        if self._index is None:
            self._index = GalleryIndex(self.root, include_pending=True)
        return self._index

    # ---- internals -------------------------------------------------------------------------
    def _check_existing(self) -> dict[str, Any] | None:
        """The existing state (None for a new index); raises when it belongs to another bundle or
        stores another dtype than the one asked for."""
        if not (self.root / STATE).exists():
            return None
        state = _read_state(self.root)
        if self.bundle is not None and state["fingerprint"] != self.bundle.fingerprint:
            raise GalleryIndexError(
                f"index {self.root} was built with bundle fingerprint {state['fingerprint'][:12]}… "
                f"but {self.bundle.root} has {self.bundle.fingerprint[:12]}…; index into a new directory "
                f"(an index holds features of exactly one bundle)")
        if self.requested_store is not None and self.requested_store != state["store"]:
            raise GalleryIndexError(
                f"index {self.root} stores features as {state['store']}, not {self.requested_store}; drop --store "
                f"(or pass --store {state['store']}) to add to it, or convert it with "
                f"`ucofia-run merge {self.root} -o NEW --store {self.requested_store}`")
        return state

    def _clean_orphans(self) -> None:
        """Delete what no state names: shards and files of updates killed before their commit, shards
        a compaction replaced, superseded bias and stage-1 files."""
        shard_root = self.root / SHARDS
        shard_root.mkdir(exist_ok=True)
        known = {s["name"] for s in effective_shards(self.state, include_pending=True)}
        for entry in shard_root.iterdir():
            if entry.name not in known:  # temp dirs and shards renamed in before a crash
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        keep = (self.state.get("biases") or {}).get("file", LEGACY_BIASES)
        for entry in self.root.iterdir():
            if entry.name.startswith(BIASES_PREFIX) and entry.name != keep:
                entry.unlink()

    def _drop_stage1_caches(self) -> None:
        """Delete the stage-1 FAISS indexes: built over rows and biases a commit just changed."""
        for entry in self.root.iterdir():
            if entry.name.startswith(STAGE1_PREFIX) or entry.name in LEGACY_STAGE1:
                entry.unlink(missing_ok=True)

    def _save_state(self) -> None:
        self.state["updated"] = time.time()
        crash_point("state:before")
        atomic_write_text(self.root / STATE, json.dumps(self.state, indent=1))
        crash_point("state:after")

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

    def new_shard_name(self) -> str:
        """A shard name no shard of this index has had since the counter was introduced."""
        taken = {s["name"] for s in effective_shards(self.state, include_pending=True)}
        number = int(self.state["next_shard"])
        while f"{number:06d}" in taken or (self.root / SHARDS / f"{number:06d}").exists():
            number += 1
        self.state["next_shard"] = number + 1  # saved with the commit that records the shard
        return f"{number:06d}"

    def _locate(self, ids: Iterable[str]) -> dict[str, list[int]]:
        """shard name -> physical local rows of the given live ids (GalleryIndexError for unknown ids)."""
        wanted = set(ids)
        unknown = sorted(wanted - self.indexed)
        if unknown:
            raise GalleryIndexError(f"{len(unknown)} ids are not in the index {self.root} (e.g. {unknown[:5]})")
        found: dict[str, list[int]] = {}
        for shard in self.index._shards:
            rows = [i for i, vid in enumerate(shard.ids) if vid in wanted]
            if rows:
                found[shard.name] = [int(r) for r in shard.physical(np.asarray(rows, dtype=np.int64))]
        return found

    @property
    def defers(self) -> bool:
        """Whether commits of new rows wait for :meth:`publish`: when the index has SK biases (or
        ``publish_later`` is set because they are about to be computed), new rows become visible
        only together with the biases of the new gallery."""
        return self.publish_later or bool(self.state.get("biases"))

    @property
    def has_pending(self) -> bool:
        """Whether committed rows (or removals) wait for :meth:`publish` (an unfinished index run)."""
        return bool(self.state.get("pending"))

    def check_no_pending(self, what: str) -> None:
        """GalleryIndexError when an interrupted ``index`` run left unpublished rows."""
        if self.has_pending:
            raise GalleryIndexError(f"{self.root} holds videos of an interrupted `ucofia-run index` run that are not "
                                    f"yet published; re-run that command to finish it before {what}")

    def _commit(self, records: list[dict[str, Any]] = (), remove: Iterable[str] = (), biases: Any = KEEP_BIASES,
                defer: bool = False) -> None:
        """One atomic state update: mark ``remove`` ids removed, append shards, set biases; with
        ``defer`` the shards and removals are recorded as pending instead (see :meth:`publish`)."""
        remove = set(remove)
        new_ids: list[str] = []
        for record in records:
            if record.get("store", LEGACY_STORE) != self.store:
                raise GalleryIndexError(f"shard {record['name']} stores {record.get('store')} but the index {self.root} "
                                        f"stores {self.store}; write it with write_shard(..., store={self.store!r})")
            removed = set(record.get("removed") or [])
            ids = _read_json(self.root / SHARDS / record["name"] / IDS)
            new_ids.extend(vid for row, vid in enumerate(ids) if row not in removed)
        dup = sorted(i for i, n in Counter(new_ids).items() if n > 1 or (i in self.indexed and i not in remove))
        if dup:
            raise GalleryIndexError(f"video ids already indexed: {dup[:5]}")
        state = json.loads(json.dumps(self.state))  # the new state is built aside, then saved at once
        located = self._locate(remove) if remove else {}
        if defer:
            pending = state.setdefault("pending", {"shards": [], "removed": {}})
            for name, rows in located.items():
                pending["removed"][name] = sorted(set(pending["removed"].get(name, [])) | set(rows))
            pending["shards"].extend(dict(r) for r in records)
        else:
            for record in state["shards"]:
                if record["name"] in located:
                    record["removed"] = sorted(set(record.get("removed") or []) | set(located[record["name"]]))
            state["shards"].extend(dict(r) for r in records)
        old_biases = (state.get("biases") or {}).get("file")
        if biases is not KEEP_BIASES:
            state["biases"] = biases
        self.state = state
        self._save_state()
        if old_biases and old_biases != (state.get("biases") or {}).get("file"):
            (self.root / old_biases).unlink(missing_ok=True)  # superseded (readers loaded theirs at open)
        if not defer and (records or remove or biases is not KEEP_BIASES):
            self._drop_stage1_caches()
        self._index = None
        self.indexed = (self.indexed - remove) | set(new_ids)
        if any(i in self.failures for i in new_ids):
            for i in new_ids:
                self.failures.pop(i, None)
            self._save_failures()

    # ---- updates ---------------------------------------------------------------------------
    def add_batch(self, ids: list[str], features: Mapping[str, np.ndarray],
                  entries: list[dict[str, Any]] | None = None, replace: Iterable[str] = ()) -> None:
        """Append one encoded batch as a new shard (temp dir + rename, then the state file).

        ``entries`` describe the rows (see the module docstring); by default they hold only the ids.
        ``replace``: ids of rows this batch supersedes (e.g. an earlier version of a changed file),
        marked removed in the same state update.
        """
        if not ids:
            return
        replace = set(replace)
        dup = [i for i in ids if i in self.indexed and i not in replace]
        if dup:
            raise GalleryIndexError(f"video ids already indexed: {dup[:5]}")
        record = write_shard(self.root / SHARDS, self.new_shard_name(), ids, features, entries, self.store)
        self.commit_shards([record], replace=replace)

    def commit_shards(self, records: list[dict[str, Any]], replace: Iterable[str] = ()) -> None:
        """Add shards already written by :func:`write_shard` (here or by other processes) to the
        index in one atomic state update, marking the ``replace`` ids removed in the same update.
        Refuses ids already indexed (unless replaced) or repeated across shards, and shards of
        another store. When the index has SK biases (:attr:`defers`) the rows are committed as
        pending: durable (a re-run resumes after them) but visible to readers only once
        :meth:`publish` adds them together with the new gallery's biases
        (``runtime.ingest.update_biases`` does)."""
        self._commit(records, replace, defer=self.defers)

    def publish(self, biases: Any = KEEP_BIASES) -> None:
        """Make pending rows and removals part of the index, with ``biases`` (a :meth:`stage_biases`
        record, None, or KEEP_BIASES), in one atomic state update."""
        pending = self.state.get("pending")
        if not pending and biases is KEEP_BIASES:
            return
        state = json.loads(json.dumps(self.state))
        state["shards"] = effective_shards(state, include_pending=True)
        state.pop("pending", None)
        self.state = state
        self._commit(biases=biases)

    def remove(self, ids: Iterable[str], biases: Any = KEEP_BIASES) -> int:
        """Mark the rows of ``ids`` removed (and set ``biases``, a :meth:`stage_biases` result or
        None, in the same state update); returns how many rows were removed."""
        self.check_no_pending("removing videos")
        ids = set(ids)
        self._commit([], ids, biases)
        return len(ids)

    def stage_biases(self, values: np.ndarray, meta: dict[str, Any], ids: list[str]) -> dict[str, Any]:
        """Write the biases [3, V] of the gallery ``ids`` to a new file and return the state record
        that names it (it takes effect with the next commit)."""
        if values.shape != (len(LEVELS), len(ids)):
            raise ValueError(f"biases must be [{len(LEVELS)}, {len(ids)}], got {values.shape}")
        values = np.ascontiguousarray(values, dtype=np.float32)
        digest = ids_digest(ids)
        name = f"{BIASES_PREFIX}{hashlib.sha256(values.tobytes() + digest.encode()).hexdigest()[:16]}.npy"
        with atomic_path(self.root / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, values)
        crash_point("biases:written")
        return {**meta, "file": name, "ids_sha256": digest, "levels": list(LEVELS)}

    def commit_biases(self, record: dict[str, Any] | None) -> None:
        """Make a :meth:`stage_biases` record (or None: no biases) the index's biases, publishing
        pending rows with them."""
        self.publish(record)

    def set_biases(self, values: np.ndarray | None, meta: dict[str, Any] | None) -> None:
        """Store the per-level SK video biases [3, V] (or drop them with None) for the current ids."""
        self.commit_biases(None if values is None else self.stage_biases(values, meta or {}, self.index.ids))

    def compact(self, rows_per_shard: int = COMPACT_ROWS, progress=None) -> dict[str, int]:
        """Rewrite the shards that hold removed rows or fewer than half ``rows_per_shard`` rows,
        coalescing neighbours, without their removed rows; rows keep their order (biases and
        caches stay valid). New shards, then one state update, then the old shard files go."""
        self.check_no_pending("compacting")
        shards = self.index._shards
        old_records = {r["name"]: r for r in self.state["shards"]}
        plan: list[list[_Shard] | _Shard] = []
        run: list[_Shard] = []
        for shard in shards:
            if shard.live is None and shard.count >= rows_per_shard // 2:
                if run:
                    plan.append(run)
                    run = []
                plan.append(shard)
            else:
                run.append(shard)
        if run:
            plan.append(run)
        rewrite = [shard for item in plan if isinstance(item, list) for shard in item]
        if not rewrite or (len(rewrite) == 1 and rewrite[0].live is None):
            return {"shards_before": len(shards), "shards_after": len(shards), "rows_reclaimed": 0}
        records: list[dict[str, Any]] = []
        for item in plan:
            if not isinstance(item, list):
                records.append(old_records[item.name])
                continue
            for group in _groups(item, rows_per_shard):
                ids, entries, feats = self._live_rows(group)
                if ids:
                    records.append(write_shard(self.root / SHARDS, self.new_shard_name(), ids, feats, entries,
                                               self.store))
                if progress:
                    progress(sum(s.count for s in group))
        crash_point("compact:written")
        reclaimed = sum(s.count - s.size for s in rewrite)
        self.state["shards"] = records
        self._save_state()
        crash_point("compact:committed")
        self._index = None
        for shard in rewrite:
            shutil.rmtree(self.root / SHARDS / shard.name, ignore_errors=True)
            crash_point("compact:deleting")
        return {"shards_before": len(shards), "shards_after": len(records), "rows_reclaimed": reclaimed}

    def _live_rows(self, group: list[_Shard]) -> tuple[list[str], list[dict[str, Any]], dict[str, np.ndarray]]:
        """Live ids, entries and float32 features of a group of shards."""
        ids: list[str] = []
        entries: list[dict[str, Any]] = []
        parts: dict[str, list[np.ndarray]] = {role: [] for role in SHARD_ARRAYS}
        for shard in group:
            if shard.size == 0:
                continue
            ids.extend(shard.ids)
            entries.extend(self.index.entries_of_shard(shard))
            live = shard.physical(np.arange(shard.size))
            for role in SHARD_ARRAYS:
                parts[role].append(self.index._read(shard, role, live))
        return ids, entries, {role: np.concatenate(p) if p else np.empty((0,)) for role, p in parts.items()}

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


def _groups(shards: list[_Shard], rows: int) -> Iterator[list[_Shard]]:
    """Consecutive groups of shards holding about ``rows`` live rows each."""
    group: list[_Shard] = []
    total = 0
    for shard in shards:
        if group and total + shard.size > rows:
            yield group
            group, total = [], 0
        group.append(shard)
        total += shard.size
    if group:
        yield group


def _first_free_number(records: list[dict[str, Any]]) -> int:
    """The shard counter of an index written before it was recorded: past every numeric name."""
    numbers = [int(r["name"]) for r in records if str(r["name"]).isdigit()]
    return max(numbers, default=-1) + 1
