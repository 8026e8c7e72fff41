"""Index updates beyond appending: remove videos, merge indexes (``ucofia-run remove`` / ``merge``).

Both keep the SK video biases right for the gallery they leave behind: SK normalises over all
videos, so each video's bias depends on the whole gallery and is recomputed (from the caption bank
the biases came from, or ``--bank``) before the update is committed, in the same state update. The
caller supplies that computation (:class:`BiasesFor`): it needs the bundle's text encoder and scorer.

* remove: marks rows removed in one atomic state update (their files stay until
  ``ucofia-run compact``); removed videos never appear in results again.
* merge: builds the merged index in a temporary sibling directory (shards hard-linked from the
  inputs where the stored dtype matches, else rewritten) and renames it onto ``-o`` at the end,
  so a killed merge leaves no output and the inputs untouched.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from runtime.errors import GalleryIndexError
from runtime.faults import crash_point
from runtime.index.format import SHARD_ARRAYS, SHARDS, ShardRecord
from runtime.index.locks import file_lock, writer_lock
from runtime.index.reader import GalleryIndex, RowSubset
from runtime.index.shards import link_shard, write_shard
from runtime.index.writer import KEEP_BIASES, BiasesUpdate, IndexWriter

if TYPE_CHECKING:  # a type only: the index never loads a bundle
    from runtime.bundle import Bundle

logger = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("error", "first", "last")


class BiasesFor(Protocol):
    """Computes the SK video biases of a gallery for ``writer``'s index: the rows ``ids``, whose
    features ``videos`` serves in that order, scored against the caption bank ``bank`` (None: the
    bank the stored biases came from). Returns ``(biases, what happened)``; ``biases`` is a record
    from :meth:`IndexWriter.stage_biases`, None to drop them, or KEEP_BIASES when the stored ones
    still fit. The model side supplies it (``runtime.ingest.biases.BankBiases``): the index has no encoder."""

    def __call__(self, writer: IndexWriter, bank: Path | None, videos: GalleryIndex | RowSubset,
                 ids: list[str]) -> tuple[BiasesUpdate, str]: ...


def read_id_list(path: Path) -> list[str]:
    """Video ids, one per line (``id<TAB>path`` lines, as ``index --videos`` lists take, give their id);
    blank lines and lines starting with # are skipped."""
    if not path.is_file():
        raise GalleryIndexError(f"--ids {path}: file not found")
    ids = []
    for line in path.read_text().splitlines():
        text = line.split("\t", 1)[0].strip()
        if text and not text.startswith("#"):
            ids.append(text)
    if not ids:
        raise GalleryIndexError(f"--ids {path} lists no video ids (one id per line)")
    return ids


def remove_videos(writer: IndexWriter, ids: list[str], *, bank: Path | None, allow_missing: bool,
                  biases_for: BiasesFor | None) -> dict[str, Any]:
    """Remove ``ids`` from the index of ``writer`` and recompute its biases, in one commit.
    ``biases_for`` None (no bundle at hand): refused when the index has biases or ``bank`` is given."""
    wanted = set(ids)
    missing = sorted(wanted - writer.indexed)
    if missing and not allow_missing:
        raise GalleryIndexError(f"{len(missing)} of the ids are not in the index {writer.root} (e.g. {missing[:5]}); "
                                f"nothing was removed; pass --allow-missing to remove the others")
    remove = wanted & writer.indexed
    if not remove:
        return {"removed": 0, "missing": len(missing), "biases": "unchanged"}
    index = writer.index
    kept = np.array([row for row, vid in enumerate(index.ids) if vid not in remove], dtype=np.int64)
    kept_ids = [index.ids[row] for row in kept]
    record, what = _biases(writer, biases_for, bank, index.subset(kept), kept_ids)
    writer.remove(remove, biases=record)
    return {"removed": len(remove), "missing": len(missing), "biases": what, "videos": len(kept_ids)}


def _biases(writer: IndexWriter, biases_for: BiasesFor | None, bank: Path | None, videos: GalleryIndex | RowSubset,
            ids: list[str]) -> tuple[BiasesUpdate, str]:
    if biases_for is None:
        if writer.state.biases is not None or bank is not None:
            raise GalleryIndexError(f"the SK biases of {writer.root} must be recomputed, which needs its bundle "
                                    f"{writer.state.bundle}; pass --bundle")
        return KEEP_BIASES, "none"
    return biases_for(writer, bank, videos, ids)


# ---- merge ------------------------------------------------------------------------------------
def _merge_bank(inputs: list[GalleryIndex], bank: Path | None) -> Path | None:
    """The caption bank for the merged biases: ``bank``, else the one every input's biases came from."""
    if bank is not None:
        return bank
    metas = [g.state.biases for g in inputs]
    banks = {m.bank.sha256: Path(m.bank.path) for m in metas if m is not None}
    if not banks:
        return None
    if len(banks) > 1 or not all(metas):
        raise GalleryIndexError("the inputs' SK biases come from different caption banks (or only some inputs have "
                                "biases); pass --bank FILE to compute the merged gallery's biases from one bank")
    path = next(iter(banks.values()))
    if not path.is_file():
        logger.warning("the caption bank %s of the inputs' biases is gone; the merged index has no biases "
                       "(pass --bank to compute them)", path)
        return None
    return path


def _winners(inputs: list[GalleryIndex], on_duplicate: str) -> list[set[str]]:
    """Per input, the ids whose rows lose to another input's row with the same id."""
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ValueError(f"unknown duplicate policy {on_duplicate!r}; choose one of {', '.join(DUPLICATE_POLICIES)}")
    owner: dict[str, int] = {}
    losers: list[set[str]] = [set() for _ in inputs]
    clashes: list[str] = []
    for i, gallery in enumerate(inputs):
        for vid in gallery.ids:
            if vid not in owner:
                owner[vid] = i
                continue
            clashes.append(vid)
            if on_duplicate == "first":
                losers[i].add(vid)
            else:  # last
                losers[owner[vid]].add(vid)
                owner[vid] = i
    if clashes and on_duplicate == "error":
        raise GalleryIndexError(f"{len(clashes)} video ids are in more than one input (e.g. {sorted(clashes)[:5]}); "
                                f"pass --on-duplicate first or last to say which input's row wins")
    return losers


def merge_indexes(inputs: list[Path], out: Path, bundle: Bundle, *, biases_for: BiasesFor, on_duplicate: str = "error",
                  store: str | None = None, bank: Path | None = None) -> dict[str, Any]:
    """Merge indexes of one bundle into a new index ``out`` (rows: each input's rows in input order);
    ``biases_for`` computes the merged gallery's biases."""
    if out.exists():
        raise GalleryIndexError(f"{out} already exists; merge into a new directory")
    with ExitStack() as stack:
        for path in inputs:  # no writer may change an input while its shards are linked
            GalleryIndex(path)  # a clear error for a non-index before taking its lock
            stack.enter_context(writer_lock(Path(path)))
        galleries = [GalleryIndex(p) for p in inputs]
        for gallery in galleries:
            gallery.check_bundle(bundle)
        stores = {g.store for g in galleries}
        if store is None:
            if len(stores) > 1:
                raise GalleryIndexError(f"the inputs store features as {', '.join(sorted(stores))}; pass --store to "
                                        f"choose the merged index's")
            store = stores.pop()
        losers = _winners(galleries, on_duplicate)
        bank_path = _merge_bank(galleries, bank)
        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(_merge_lock(out))
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
        try:
            with IndexWriter(tmp, bundle, store) as writer:
                records = []
                for gallery, lost in zip(galleries, losers):
                    records.extend(_bring_shards(writer, gallery, lost))
                crash_point("merge:linked")
                writer.commit_shards(records)
                record, what = _biases(writer, biases_for, bank_path, writer.index, writer.index.ids)
                if record is not KEEP_BIASES:
                    writer.commit_biases(record)
                videos = len(writer.indexed)
            crash_point("merge:built")
            os.rename(tmp, out)
            crash_point("merge:renamed")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    duplicates = sum(len(x) for x in losers)
    return {"videos": videos, "inputs": len(inputs), "duplicates_dropped": duplicates, "store": store,
            "biases": what}


def _bring_shards(writer: IndexWriter, gallery: GalleryIndex, lost: set[str]) -> list[ShardRecord]:
    """The input's shards in the writer's index (linked, or rewritten for another store), with the
    rows of ``lost`` ids marked removed."""
    records = []
    shard_root = writer.root / SHARDS
    for shard in gallery.shards:
        if shard.size == 0:
            continue
        name = writer.new_shard_name()
        if shard.store == writer.store:
            record = link_shard(shard.folder, shard_root, name, shard.record)
            lost_rows = [int(shard.physical(np.array([i]))[0]) for i, vid in enumerate(shard.ids) if vid in lost]
        else:
            live = shard.physical(np.arange(shard.size))
            entries = shard.entries()
            feats = {role: shard.read(role, live) for role in SHARD_ARRAYS}
            record = write_shard(shard_root, name, list(shard.ids), feats, entries, writer.store)
            lost_rows = [i for i, vid in enumerate(shard.ids) if vid in lost]
        if lost_rows:
            record = record.with_removed(lost_rows)
        records.append(record)
    return records


@contextmanager
def _merge_lock(out: Path) -> Iterator[None]:
    """Exclusive lock on ``.OUT.merge.lock`` beside the output; temp dirs of killed merges into the
    same output are deleted once it is held."""
    lock = out.parent / f".{out.name}.merge.lock"
    with file_lock(lock, f"another merge into {out} is running ({lock} held)"):
        for stale in out.parent.glob(f".{out.name}.merge-*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
