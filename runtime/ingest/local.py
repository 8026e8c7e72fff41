"""The local indexing engine for whole files: decode videos in a worker pool (threads or
processes), encode them in batches with the video encoder, store each batch as a shard.

A killed run loses at most the batch in flight. Videos that fail to decode, and URLs that cannot be
read, are listed in ``failed.jsonl`` and skipped (a rerun retries them).
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import open_session
from runtime.bundle import Bundle
from runtime.index import IndexWriter
from runtime.ingest.batches import store_batch
from runtime.ingest.files import unreadable_reason, video_entry
from runtime.ingest.report import IngestReport
from runtime.ingest.staging import Staged, scratch, stage
from runtime.remote import Source
from ucofia.data.video import VideoSpec, decode_many

DEFAULT_BATCH = 16


def encode_videos(writer: IndexWriter, bundle: Bundle, todo: list[tuple[str, Source]], *, backend: str,
                  batch_size: int, workers: int, processes: bool, threads: int | None,
                  report: IngestReport, progress: Callable[[int], None] | None = None,
                  replaces: dict[str, list[str]] | None = None,
                  on_stored: Callable[[list[dict[str, Any]]], None] | None = None,
                  metadata: dict[str, dict[str, Any]] | None = None, url_thumbnails: bool = False) -> None:
    """Decode ``todo`` in a pool, encode batches with the video encoder, append shards.

    Each file is hashed (for its index entry) on a thread pool while the decoders work ahead; a
    URL is downloaded ahead of the decoders and decoded from its local copy
    (``runtime.ingest.staging``); one that cannot be read is recorded as failed like a bad file.
    ``replaces`` (from :func:`plan_ingest`): id -> ids of rows its new features supersede, marked
    removed in the commit that adds them. ``on_stored`` gets the entries of every stored batch
    (e.g. to make their thumbnails). ``metadata``: id -> the user metadata of its list row.
    ``url_thumbnails``: make the thumbnail of a URL from its download, into the index directory.
    """
    replaces, metadata = replaces or {}, metadata or {}
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

    def fail(vid: str, source: Source, error: str) -> None:
        writer.record_failure(vid, str(source), error)
        report.failed.append((vid, error))
        if progress:
            progress(1)

    with scratch() as directory, ThreadPoolExecutor(max_workers=max(workers, 1),
                                                    thread_name_prefix="ucofia-fetch") as pool:
        decoding: deque[Staged] = deque()   # handed to the decoders, in order
        unread: list[Staged] = []           # URLs that failed before decoding

        def paths() -> Iterator[Path]:  # decode_many reads ahead; downloads and hashes run ahead of it
            staged = stage(todo, pool, max(2 * workers, batch_size), directory,
                           thumbnails=writer.root if url_thumbnails else None)
            try:
                for item in staged:
                    if item.error is not None:
                        unread.append(item)
                        continue
                    decoding.append(item)
                    assert item.local is not None
                    yield item.local
            finally:
                staged.close()

        outcomes = decode_many(paths(), spec, workers=max(workers, 1), processes=processes,
                               prefetch=max(2 * workers, batch_size))
        try:
            for outcome in outcomes:
                while unread:
                    item = unread.pop(0)
                    fail(item.vid, item.source, str(item.error))
                item = decoding.popleft()
                item.release()
                vid, path = item.vid, item.source
                if not outcome.ok:
                    fail(vid, path, str(outcome.error).replace(str(item.local), str(path)))
                    continue
                try:
                    entry = video_entry(vid, item.identity_now(), outcome.video, metadata.get(vid))
                except OSError as exc:  # the file went away or became unreadable after decoding
                    fail(vid, path, f"{path}: {unreadable_reason(exc)}")
                    continue
                batch_entries.append(entry)
                batch_frames.append(outcome.video.to_model_input(spec))
                batch_masks.append(outcome.video.video_mask)
                if len(batch_entries) >= batch_size:
                    flush()
        except BaseException:  # interrupted: drop the downloads queued ahead rather than finish them
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        for item in unread:
            fail(item.vid, item.source, str(item.error))
        flush()


def default_workers() -> int:
    """Decoder workers: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
