"""Creating and updating an index: appending shards, removals, biases, publishing an unfinished
run's rows, compaction. Every update is crash-safe: new files first, then one atomic replace of
``index.json`` (docs/index-format.md, "Format 3: updates and crash safety")."""
from __future__ import annotations

import enum
import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import GalleryIndexError
from runtime.faults import crash_point
from runtime.index.compaction import COMPACT_ROWS, plan_compaction, write_compacted
from runtime.index.failures import Failure, read_failures, write_failures
from runtime.index.format import (
    BIASES_PREFIX,
    INDEX_FORMAT,
    LEGACY_BIASES,
    LEGACY_STAGE1,
    LOCK,
    SHARDS,
    STAGE1_PREFIX,
    STATE,
    BiasesRecord,
    IndexState,
    PendingChanges,
    ShardRecord,
    ids_digest,
)
from runtime.index.locks import writer_lock
from runtime.index.reader import GalleryIndex
from runtime.index.shards import read_shard_ids, write_shard
from runtime.index.state import read_state, write_state
from runtime.index.store import DEFAULT_STORE, check_store
from ucofia.config import LEVELS
from ucofia.io_utils import atomic_path

if TYPE_CHECKING:  # a type only: the index never loads a bundle
    from runtime.bundle import Bundle


class KeepBiases(enum.Enum):
    """The biases argument of a commit that leaves the biases as they are."""

    KEEP = "keep"


KEEP_BIASES = KeepBiases.KEEP
# What a commit does to the biases: set this record, drop them (None), or keep them.
BiasesUpdate = BiasesRecord | None | KeepBiases


class IndexWriter:
    """Creates or updates an index; every update is crash-safe (see the module docstring).

    Use as a context manager: it holds the index lock while open. ``store`` is the stored dtype of
    a new index (default runtime.index.store.DEFAULT_STORE); for an existing index it must be None
    or the index's own. ``bundle`` None: update an existing index without its bundle (removal
    without biases, compaction).
    """

    def __init__(self, root: str | Path, bundle: Bundle | None, store: str | None = None) -> None:
        self.root = Path(root)
        self.bundle = bundle
        self.requested_store = None if store is None else check_store(store)
        self.publish_later = False  # set when biases will be computed before the run ends
        self._lock_cm: AbstractContextManager[None] | None = None

    def __enter__(self) -> IndexWriter:
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
            if state is None:
                state = IndexState.new(self.bundle.fingerprint, self.bundle.config.to_dict(),
                                       self.requested_store or DEFAULT_STORE, time.time())
            if self.bundle is not None:
                state.bundle = str(self.bundle.root.resolve())
            state.format = INDEX_FORMAT  # format 1/2 shards stay readable (float32, ids-only entries)
            if state.next_shard is None:
                state.next_shard = state.first_free_shard_number()
            self.state = state
            self._save_state()  # a new index exists from here on, even if this run is killed
            self._clean_orphans()
            self._index: GalleryIndex | None = GalleryIndex(self.root, include_pending=True)
            self.indexed = set(self._index.ids)
            self.failures: dict[str, Failure] = read_failures(self.root)
        except BaseException:
            self._lock_cm.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock_cm.__exit__(*exc)

    @property
    def store(self) -> str:
        return self.state.store

    @property
    def index(self) -> GalleryIndex:
        """The index as committed so far, pending rows included (re-opened after a commit when next
        asked for)."""
        if self._index is None:
            self._index = GalleryIndex(self.root, include_pending=True)
        return self._index

    # ---- internals -------------------------------------------------------------------------
    def _check_existing(self) -> IndexState | None:
        """The existing state (None for a new index); raises when it belongs to another bundle or
        stores another dtype than the one asked for."""
        if not (self.root / STATE).exists():
            return None
        state = read_state(self.root)
        if self.bundle is not None and state.fingerprint != self.bundle.fingerprint:
            raise GalleryIndexError(
                f"index {self.root} was built with bundle fingerprint {state.fingerprint[:12]}… "
                f"but {self.bundle.root} has {self.bundle.fingerprint[:12]}…; index into a new directory "
                f"(an index holds features of exactly one bundle)")
        if self.requested_store is not None and self.requested_store != state.store:
            raise GalleryIndexError(
                f"index {self.root} stores features as {state.store}, not {self.requested_store}; drop --store "
                f"(or pass --store {state.store}) to add to it, or convert it with "
                f"`ucofia-run merge {self.root} -o NEW --store {self.requested_store}`")
        return state

    def _clean_orphans(self) -> None:
        """Delete what no state names: shards and files of updates killed before their commit, shards
        a compaction replaced, superseded bias and stage-1 files."""
        shard_root = self.root / SHARDS
        shard_root.mkdir(exist_ok=True)
        known = self.state.shard_names()
        for entry in shard_root.iterdir():
            if entry.name not in known:  # temp dirs and shards renamed in before a crash
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        keep = self.state.biases.file_name if self.state.biases is not None else LEGACY_BIASES
        for entry in self.root.iterdir():
            if entry.name.startswith(BIASES_PREFIX) and entry.name != keep:
                entry.unlink()

    def _drop_stage1_caches(self) -> None:
        """Delete the stage-1 FAISS indexes: built over rows and biases a commit just changed."""
        for entry in self.root.iterdir():
            if entry.name.startswith(STAGE1_PREFIX) or entry.name in LEGACY_STAGE1:
                entry.unlink(missing_ok=True)

    def _save_state(self) -> None:
        self.state.updated = time.time()
        crash_point("state:before")
        write_state(self.root, self.state)
        crash_point("state:after")

    def _save_failures(self) -> None:
        write_failures(self.root, self.failures)

    def new_shard_name(self) -> str:
        """A shard name no shard of this index has had since the counter was introduced."""
        taken = self.state.shard_names()
        number = int(self.state.next_shard)
        while f"{number:06d}" in taken or (self.root / SHARDS / f"{number:06d}").exists():
            number += 1
        self.state.next_shard = number + 1  # saved with the commit that records the shard
        return f"{number:06d}"

    def _locate(self, ids: Iterable[str]) -> dict[str, list[int]]:
        """shard name -> physical local rows of the given live ids (GalleryIndexError for unknown ids)."""
        wanted = set(ids)
        unknown = sorted(wanted - self.indexed)
        if unknown:
            raise GalleryIndexError(f"{len(unknown)} ids are not in the index {self.root} (e.g. {unknown[:5]})")
        found: dict[str, list[int]] = {}
        for shard in self.index.shards:
            rows = [i for i, vid in enumerate(shard.ids) if vid in wanted]
            if rows:
                found[shard.name] = [int(r) for r in shard.physical(np.asarray(rows, dtype=np.int64))]
        return found

    @property
    def defers(self) -> bool:
        """Whether commits of new rows wait for :meth:`publish`: when the index has SK biases (or
        ``publish_later`` is set because they are about to be computed), new rows become visible
        only together with the biases of the new gallery."""
        return self.publish_later or self.state.biases is not None

    @property
    def has_pending(self) -> bool:
        """Whether committed rows (or removals) wait for :meth:`publish` (an unfinished index run)."""
        return self.state.pending is not None

    def check_no_pending(self, what: str) -> None:
        """GalleryIndexError when an interrupted ``index`` run left unpublished rows."""
        if self.has_pending:
            raise GalleryIndexError(f"{self.root} holds videos of an interrupted `ucofia-run index` run that are not "
                                    f"yet published; re-run that command to finish it before {what}")

    def _commit(self, records: Iterable[ShardRecord] = (), remove: Iterable[str] = (),
                biases: BiasesUpdate = KEEP_BIASES, defer: bool = False) -> None:
        """One atomic state update: mark ``remove`` ids removed, append shards, set biases; with
        ``defer`` the shards and removals are recorded as pending instead (see :meth:`publish`)."""
        records = list(records)
        remove = set(remove)
        new_ids: list[str] = []
        recorded = self.state.shard_names()
        for record in records:
            if record.name in recorded:
                raise GalleryIndexError(f"shard {record.name} is already recorded in the index {self.root}; a shard "
                                        f"is committed once")
            recorded.add(record.name)
            if record.store != self.store:
                raise GalleryIndexError(f"shard {record.name} stores {record.store} but the index {self.root} "
                                        f"stores {self.store}; write it with write_shard(..., store={self.store!r})")
            removed = set(record.removed)
            ids = read_shard_ids(self.root / SHARDS / record.name)
            new_ids.extend(vid for row, vid in enumerate(ids) if row not in removed)
        dup = sorted(i for i, n in Counter(new_ids).items() if n > 1 or (i in self.indexed and i not in remove))
        if dup:
            raise GalleryIndexError(f"video ids already indexed: {dup[:5]}")
        state = self.state.copy()  # the new state is built aside, then saved at once
        located = self._locate(remove) if remove else {}
        if defer:
            if state.pending is None:
                state.pending = PendingChanges()
            state.pending.remove(located)
            state.pending.shards.extend(records)
        else:
            state.shards = [r.with_removed(located[r.name]) if r.name in located else r for r in state.shards]
            state.shards.extend(records)
        old_biases = state.biases.file if state.biases is not None else None
        if biases is not KEEP_BIASES:
            state.biases = biases
        self.state = state
        self._save_state()
        new_biases = state.biases.file if state.biases is not None else None
        if old_biases and old_biases != new_biases:
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

        ``entries`` describe the rows (docs/index-format.md); by default they hold only the ids.
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

    def commit_shards(self, records: Iterable[ShardRecord], replace: Iterable[str] = ()) -> None:
        """Add shards already written by :func:`write_shard` (here or by other processes) to the
        index in one atomic state update, marking the ``replace`` ids removed in the same update.
        Refuses ids already indexed (unless replaced) or repeated across shards, and shards of
        another store. When the index has SK biases (:attr:`defers`) the rows are committed as
        pending: durable (a re-run resumes after them) but visible to readers only once
        :meth:`publish` adds them together with the new gallery's biases
        (``runtime.ingest.update_biases`` does)."""
        self._commit(records, replace, defer=self.defers)

    def publish(self, biases: BiasesUpdate = KEEP_BIASES) -> None:
        """Make pending rows and removals part of the index, with ``biases`` (a :meth:`stage_biases`
        record, None, or KEEP_BIASES), in one atomic state update."""
        if self.state.pending is None and biases is KEEP_BIASES:
            return
        state = self.state.copy()
        state.shards = state.effective_shards(include_pending=True)
        state.pending = None
        self.state = state
        self._commit(biases=biases)

    def remove(self, ids: Iterable[str], biases: BiasesUpdate = KEEP_BIASES) -> int:
        """Mark the rows of ``ids`` removed (and set ``biases``, a :meth:`stage_biases` result or
        None, in the same state update); returns how many rows were removed."""
        self.check_no_pending("removing videos")
        ids = set(ids)
        self._commit([], ids, biases)
        return len(ids)

    def stage_biases(self, values: np.ndarray, meta: Mapping[str, Any], ids: list[str]) -> BiasesRecord:
        """Write the biases [3, V] of the gallery ``ids`` to a new file and return the state record
        that names it (it takes effect with the next commit). ``meta``: the record's other fields
        (``bank``: {"path", "sha256", "captions"}, ``sk_iterations``)."""
        if values.shape != (len(LEVELS), len(ids)):
            raise ValueError(f"biases must be [{len(LEVELS)}, {len(ids)}], got {values.shape}")
        values = np.ascontiguousarray(values, dtype=np.float32)
        digest = ids_digest(ids)
        name = f"{BIASES_PREFIX}{hashlib.sha256(values.tobytes() + digest.encode()).hexdigest()[:16]}.npy"
        with atomic_path(self.root / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, values)
        crash_point("biases:written")
        return BiasesRecord.from_dict({**meta, "file": name, "ids_sha256": digest, "levels": list(LEVELS)})

    def commit_biases(self, record: BiasesRecord | None) -> None:
        """Make a :meth:`stage_biases` record (or None: no biases) the index's biases, publishing
        pending rows with them."""
        self.publish(record)

    def set_biases(self, values: np.ndarray | None, meta: Mapping[str, Any] | None) -> None:
        """Store the per-level SK video biases [3, V] (or drop them with None) for the current ids."""
        self.commit_biases(None if values is None else self.stage_biases(values, meta or {}, self.index.ids))

    def compact(self, rows_per_shard: int = COMPACT_ROWS,
                progress: Callable[[int], None] | None = None) -> dict[str, int]:
        """Rewrite the shards that hold removed rows or fewer than half ``rows_per_shard`` rows,
        coalescing neighbours, without their removed rows; rows keep their order (biases and
        caches stay valid). New shards, then one state update, then the old shard files go."""
        self.check_no_pending("compacting")
        shards = self.index.shards
        plan = plan_compaction(shards, rows_per_shard)
        if plan.changes_nothing:
            return {"shards_before": len(shards), "shards_after": len(shards), "rows_reclaimed": 0}
        records = write_compacted(plan, self.root / SHARDS, self.new_shard_name, self.store, progress)
        crash_point("compact:written")
        self.state.shards = records
        self._save_state()
        crash_point("compact:committed")
        self._index = None
        for shard in plan.rewritten:
            shutil.rmtree(self.root / SHARDS / shard.name, ignore_errors=True)
            crash_point("compact:deleting")
        return {"shards_before": len(shards), "shards_after": len(records), "rows_reclaimed": plan.rows_reclaimed}

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
