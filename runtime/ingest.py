"""``ucofia-run index``: decode videos in a worker pool, encode them in batches, store shards,
then compute the per-level SK video biases against a caption bank.

Resumable: ids already in the index are skipped unless their file's content changed, in which case
the new features replace every row made from the old file (:func:`plan_ingest`); a killed run
loses at most the batch in flight. Videos that fail to decode are listed in ``failed.jsonl`` and
skipped (a rerun retries them).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ucofia.data.video import DecodedVideo, VideoSpec, decode_many
from ucofia.io_utils import file_sha256

from runtime.backends import open_session
from runtime.bundle import Bundle
from runtime.finite import NON_FINITE_FIX, non_finite_rows
from runtime.index import KEEP_BIASES, IndexWriter, ids_digest, source_key
from runtime.index.store import unstorable_rows
from runtime.scoring import LEVELS, Scorer, VideoSource, score_matrix
from runtime.sinkhorn import video_bias
from runtime.sources import read_captions
from runtime.text import TextEncoder

DEFAULT_BATCH = 16
# Bank captions encoded and scored per pass (bounds the text features held at once).
BANK_CHUNK = 1024
BANK_SIMS_TMP = ".bank_sims.tmp.npy"

Log = Callable[[str], None]


@dataclass
class IngestReport:
    """What one ``index`` run did."""

    total: int = 0
    skipped: int = 0
    replaced: int = 0
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    biases: str = "none"

    @property
    def videos_per_second(self) -> float:
        return (self.indexed + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0


def file_identity(path: Path) -> dict[str, Any]:
    """What identifies a video file's content in an index entry: absolute path, sha256, size, mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": stat.st_size,
            "mtime": stat.st_mtime}


def unreadable_reason(exc: OSError) -> str:
    """Why a decoded video has no index entry: its file could not be read to hash it."""
    return f"cannot read the file to hash it ({exc}); check it exists and is readable"


def video_entry(video_id: str, identity: dict[str, Any], video: DecodedVideo) -> dict[str, Any]:
    """The index entry of one decoded video file (see docs/index-format.md)."""
    info = video.info
    return {"id": video_id, **identity, "duration_s": info.duration_s, "fps": info.cv_fps,
            "width": info.width, "height": info.height, "frames": video.num_frames}


def content_changed(entry: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` now holds other content than the file ``entry`` was made from: same path,
    size and mtime mean unchanged; otherwise the sha256 decides. Rows without a recorded sha256
    (format 1) and files that are gone count as unchanged (remove those with ``ucofia-run remove``)."""
    sha = entry.get("sha256")
    if not sha:
        return False
    try:
        stat = path.stat()
        if (str(path.resolve()) == entry.get("path") and stat.st_size == entry.get("bytes")
                and stat.st_mtime == entry.get("mtime")):
            return False
        return file_sha256(path) != sha
    except OSError:
        return False


def plan_ingest(writer: IndexWriter, pairs: list[tuple[str, Path]]
                ) -> tuple[list[tuple[str, Path]], dict[str, list[str]], int]:
    """(videos to encode, id -> ids of the rows its new features replace, videos unchanged).

    A listed id that is indexed is encoded again when its file's content changed
    (:func:`content_changed`); its new rows then replace every row made from the same source file
    (same ``file_id`` or ``path``: all time windows of a file), in the same commit."""
    todo = [(vid, path) for vid, path in pairs if vid not in writer.indexed]
    if len(todo) == len(pairs):
        return todo, {}, 0
    index = writer.index
    by_source: dict[str, list[str]] = {}
    for entry in index.entries:
        by_source.setdefault(source_key(entry), []).append(entry["id"])
    replaces: dict[str, list[str]] = {}
    claimed: set[str] = set()
    unchanged = 0
    for vid, path in pairs:
        if vid not in writer.indexed:
            continue
        entry = index.entry(vid)
        if entry is not None and content_changed(entry, path):
            todo.append((vid, path))
            replaces[vid] = [old for old in by_source[source_key(entry)] if old not in claimed]
            claimed.update(replaces[vid])
        else:
            unchanged += 1
    return todo, replaces, unchanged


ReplaceFor = Callable[[list[dict[str, Any]]], list[str]]


def screen_features(entries: list[dict[str, Any]], features: dict[str, np.ndarray], store: str
                    ) -> tuple[np.ndarray, list[tuple[dict[str, Any], str]]]:
    """(rows to drop, [(entry, error)] for each): rows whose features are NaN/inf, or beyond what
    ``store`` can hold, must never be stored; each error names the video and the fix."""
    bad = non_finite_rows(features.values())
    too_big = unstorable_rows(features, store) & ~bad
    bad |= too_big
    errors = []
    for i in np.flatnonzero(bad):
        what = f"{entries[i]['id']} ({entries[i]['path']})"
        errors.append((entries[i], f"the video encoder produced features beyond the float16 range for {what}; "
                                   f"index with --store float32" if too_big[i] else
                                   f"the video encoder produced non-finite features (NaN/inf) for {what}; "
                                   f"{NON_FINITE_FIX}"))
    return bad, errors


def store_batch(writer: IndexWriter, entries: list[dict[str, Any]], features: dict[str, np.ndarray],
                report: IngestReport, replace_for: ReplaceFor | None = None) -> list[str]:
    """Add one encoded batch to the index as a shard and return the ids stored.

    Rows :func:`screen_features` drops are never stored: they are listed in failed.jsonl with the
    cause and the fix. ``replace_for(stored entries)`` names the rows the stored ones supersede
    (an earlier version of a changed file), removed in the same commit."""
    bad, errors = screen_features(entries, features, writer.store)
    if bad.any():
        for entry, error in errors:
            writer.record_failure(entry["id"], entry["path"], error)
            report.failed.append((entry["id"], error))
        entries = [entry for entry, failed in zip(entries, bad) if not failed]
        features = {role: value[~bad] for role, value in features.items()}
    ids = [entry["id"] for entry in entries]
    replace = replace_for(entries) if replace_for is not None and entries else []
    writer.add_batch(ids, features, entries, replace)  # no-op when every row failed
    report.indexed += len(ids)
    return ids


def encode_videos(writer: IndexWriter, bundle: Bundle, todo: list[tuple[str, Path]], *, backend: str,
                  batch_size: int, workers: int, processes: bool, threads: int | None,
                  report: IngestReport, progress: Callable[[int], None] | None = None,
                  replaces: dict[str, list[str]] | None = None,
                  on_stored: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
    """Decode ``todo`` in a pool, encode batches with the video encoder, append shards.

    Each file is hashed (for its index entry) on a thread pool while the decoders work ahead.
    ``replaces`` (from :func:`plan_ingest`): id -> ids of rows its new features supersede, marked
    removed in the commit that adds them. ``on_stored`` gets the entries of every stored batch
    (e.g. to make their thumbnails).
    """
    replaces = replaces or {}
    encoder = open_session(bundle, "video_encoder", backend, threads)
    spec = VideoSpec.from_config(bundle.config)
    batch_entries: list[dict[str, Any]] = []
    batch_frames: list[np.ndarray] = []
    batch_masks: list[np.ndarray] = []

    def flush() -> None:
        if not batch_entries:
            return
        frames = np.stack(batch_frames)
        mask = np.stack(batch_masks).astype(np.float32)
        out = encoder.run({"frames": frames, "video_mask": mask})
        ids = store_batch(writer, batch_entries, {**out, "video_mask": mask}, report,
                          lambda kept: [old for entry in kept for old in replaces.get(entry["id"], ())])
        report.replaced += sum(vid in replaces for vid in ids)
        if on_stored and ids:
            stored = set(ids)
            on_stored([entry for entry in batch_entries if entry["id"] in stored])
        if progress:
            progress(len(batch_entries))
        batch_entries.clear(), batch_frames.clear(), batch_masks.clear()

    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="ucofia-hash") as hasher:
        identities: dict[str, Future] = {}

        def paths() -> Iterator[Path]:  # decode_many reads ahead; hashing starts as each file is taken
            for vid, path in todo:
                identities[vid] = hasher.submit(file_identity, path)
                yield path

        outcomes = decode_many(paths(), spec, workers=max(workers, 1), processes=processes,
                               prefetch=max(2 * workers, batch_size))
        for (vid, path), outcome in zip(todo, outcomes):
            identity = identities.pop(vid)
            if not outcome.ok:
                writer.record_failure(vid, str(path), str(outcome.error))
                report.failed.append((vid, str(outcome.error)))
                if progress:
                    progress(1)
                continue
            try:
                entry = video_entry(vid, identity.result(), outcome.video)
            except OSError as exc:  # the file went away or became unreadable after decoding
                error = f"{path}: {unreadable_reason(exc)}"
                writer.record_failure(vid, str(path), error)
                report.failed.append((vid, error))
                if progress:
                    progress(1)
                continue
            batch_entries.append(entry)
            batch_frames.append(outcome.video.to_model_input(spec))
            batch_masks.append(outcome.video.video_mask)
            if len(batch_entries) >= batch_size:
                flush()
        flush()


def biases_from_bank_scores(scratch: Path, n_bank: int, n_video: int, iterations: int,
                            fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """[3, V] SK video bias per level: ``fill`` writes the [3, B, V] bank x gallery similarities
    into a memory-mapped scratch file (deleted afterwards) and SK streams over it, so memory stays
    bounded for large banks."""
    sims = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(len(LEVELS), n_bank, n_video))
    try:
        fill(sims)
        sims.flush()
        return np.stack([video_bias(sims[i], iterations) for i in range(len(LEVELS))])
    finally:
        del sims
        scratch.unlink(missing_ok=True)


def compute_bank_biases(index: VideoSource, bundle: Bundle, captions: list[str], *, backend: str,
                        memory_mb: float, threads: int | None, scratch: Path,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """[3, V] SK video bias per level from bank captions x all indexed videos, scored here
    (see :func:`biases_from_bank_scores`)."""
    text = TextEncoder(bundle, backend, threads)
    scorer = Scorer(open_session(bundle, "scorer", backend, threads), bundle.config)
    n_bank = len(captions)

    def fill(sims: np.ndarray) -> None:
        for c0 in range(0, n_bank, BANK_CHUNK):
            c1 = min(c0 + BANK_CHUNK, n_bank)
            feats = text.encode(captions[c0:c1], what="bank caption", first_number=c0 + 1)
            score_matrix(scorer, feats, index, memory_mb,
                         out={lv: sims[i, c0:c1] for i, lv in enumerate(LEVELS)}, progress=progress)

    return biases_from_bank_scores(scratch, n_bank, len(index), bundle.config.sk_iterations, fill)


ComputeBiases = Callable[..., np.ndarray]  # the signature of compute_bank_biases


def biases_for(writer: IndexWriter, bundle: Bundle, bank: Path | None, videos: VideoSource, ids: list[str], *,
               backend: str, memory_mb: float, threads: int | None, log: Log, progress_factory=None,
               compute: "ComputeBiases | None" = None) -> tuple[Any, str]:
    """The biases of the gallery ``ids`` (features served by ``videos``, in that order), which may
    differ from the committed one (e.g. the rows a removal keeps): ``(record, what happened)``
    where record is KEEP_BIASES when the stored biases still fit, None to drop them, or a record
    from :meth:`IndexWriter.stage_biases` to commit. ``bank`` None: the bank the stored biases came
    from, when there are any."""
    meta = writer.state.biases
    digest = ids_digest(ids)
    if bank is None:
        if meta is None:
            return KEEP_BIASES, "none (no --bank given)"
        bank = Path(meta.bank.path)
        if meta.ids_sha256 == digest:
            return KEEP_BIASES, "unchanged"
        if not bank.is_file():
            log(f"warning: the videos changed but the caption bank {bank} used for the biases is gone; "
                f"biases dropped, re-run `ucofia-run index` with --bank to compute them")
            return None, "dropped"
    bank = bank.resolve()
    sha = file_sha256(bank)
    if meta is not None and meta.bank.sha256 == sha and meta.ids_sha256 == digest:
        return KEEP_BIASES, "unchanged"
    if not ids:
        return None, "none (no videos indexed)"
    captions = read_captions(bank, "bank captions")
    progress = progress_factory(len(captions) * len(ids)) if progress_factory else None
    start = time.perf_counter()
    values = (compute or compute_bank_biases)(videos, bundle, captions, backend=backend, memory_mb=memory_mb,
                                              threads=threads, scratch=writer.root / BANK_SIMS_TMP, progress=progress)
    record = writer.stage_biases(values, {"bank": {"path": str(bank), "sha256": sha, "captions": len(captions)},
                                          "sk_iterations": bundle.config.sk_iterations}, ids)
    return record, f"computed from {len(captions)} bank captions in {time.perf_counter() - start:.1f}s"


@dataclass
class BankBiases:
    """:func:`biases_for` with one bundle and scoring setup: what ``runtime.index.updates`` asks
    the caller for when ``remove`` or ``merge`` changes the gallery (the index has no encoder)."""

    bundle: Bundle
    backend: str = "cpu"
    memory_mb: float = 1024
    threads: int | None = None
    log: Log = print
    progress_factory: Callable[[int], Callable[[int], None] | None] | None = None

    def __call__(self, writer: IndexWriter, bank: Path | None, videos: VideoSource, ids: list[str]) -> tuple[Any, str]:
        return biases_for(writer, self.bundle, bank, videos, ids, backend=self.backend, memory_mb=self.memory_mb,
                          threads=self.threads, log=self.log, progress_factory=self.progress_factory)


def update_biases(writer: IndexWriter, bundle: Bundle, bank: Path | None, *, backend: str, memory_mb: float,
                  threads: int | None, log: Log, progress_factory=None, compute: "ComputeBiases | None" = None) -> str:
    """Recompute biases when the bank or the set of videos changed; returns what happened.
    ``compute`` replaces :func:`compute_bank_biases` (same signature; e.g. spread over a Ray cluster)."""
    index = writer.index
    record, what = biases_for(writer, bundle, bank, index, index.ids, backend=backend, memory_mb=memory_mb,
                              threads=threads, log=log, progress_factory=progress_factory, compute=compute)
    writer.publish(record)  # pending rows become visible together with the biases that fit them
    return what


def default_workers() -> int:
    """Decoder workers: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
