"""``ucofia-run index --window W --stride S``: index the time windows of each video file.

Each file is probed to plan its windows (``runtime.windows``), then decoded ONCE, sequentially
(``ucofia.data.window_decode.decode_windows``): every window is sampled like a clip of its span
and comes out as soon as the decoder has passed it. Files are decoded by a pool of threads, each
feeding a small bounded queue, and the main thread encodes windows in batches across files, so
memory stays bounded whatever the files' lengths (at most ``workers`` files in flight, each with
at most ``QUEUE_WINDOWS`` decoded windows waiting).

Resumable like whole-file indexing: window ids are stable (``runtime.windows``), a rerun skips the
windows already indexed and decodes a file only when some of its windows are missing.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import open_session
from runtime.bundle import Bundle
from runtime.index import IndexWriter, is_windowed
from runtime.ingest.batches import store_batch
from runtime.ingest.files import content_changed, file_identity, unreadable_reason, video_entry
from runtime.ingest.report import IngestReport
from runtime.windows import FilePlan, WindowSetting, plan_file, window_entry, window_id
from ucofia.data.video import VideoDecodeError, VideoSpec
from ucofia.data.window_decode import WindowOutcome, decode_windows
from ucofia.progress import Update, progress_bar

# Decoded windows waiting per file for the encoder (bounds memory: windows are [F, S, S, 3] uint8).
QUEUE_WINDOWS = 32
# How often (s) a producer blocked on a full queue checks whether the run was stopped.
STOP_POLL_S = 0.1

def plan_windows(pairs: list[tuple[str, Path]], setting: WindowSetting, writer: IndexWriter,
                 report: IngestReport) -> list[FilePlan]:
    """Probe the listed files and plan the windows still to index (``report`` counts windows), with
    a progress bar for long lists."""
    report.total = 0
    changed = changed_files(writer, pairs)
    plans: list[FilePlan] = []
    with progress_bar(len(pairs), "planning windows", "file", leave=False) as update:
        for pair in pairs:
            plans.extend(plan_files([pair], setting, writer, report, changed))
            update(1)
    return plans


def changed_files(writer: IndexWriter, pairs: list[tuple[str, Path]]) -> dict[str, list[str]]:
    """file_id -> ids of its indexed windows, for the listed files whose content changed since they
    were indexed (``runtime.ingest.content_changed``): all their windows are indexed again and the
    new rows replace every old one (also windows the new content no longer has)."""
    if not writer.indexed:
        return {}
    rows: dict[str, list[str]] = {}
    first: dict[str, dict[str, Any]] = {}
    for entry in writer.index.entries:
        if is_windowed(entry):
            rows.setdefault(entry["file_id"], []).append(entry["id"])
            first.setdefault(entry["file_id"], entry)
    return {file_id: rows[file_id] for file_id, path in pairs
            if file_id in first and content_changed(first[file_id], path)}


def plan_files(pairs: list[tuple[str, Path]], setting: WindowSetting, writer: IndexWriter,
               report: IngestReport, changed: dict[str, list[str]] | None = None) -> list[FilePlan]:
    """Probe every file and keep those with windows left to index (all windows of the ``changed``
    files, see :func:`changed_files`). Files that cannot be probed are recorded as failed (under
    the file id); ``report`` counts windows."""
    changed = changed or {}
    plans = []
    for file_id, path in pairs:
        try:
            plan = plan_file(file_id, path, setting, set() if file_id in changed else writer.indexed)
            plan.replaces = changed.get(file_id, [])
        except VideoDecodeError as exc:
            writer.record_failure(file_id, str(path), str(exc))
            report.failed.append((file_id, str(exc)))
            continue
        writer.forget_failures([file_id])  # the file opens now: only its windows can fail
        report.total += plan.planned
        report.skipped += plan.planned - len(plan.spans)
        if plan.spans:
            plans.append(plan)
    return plans


@dataclass
class _Item:
    kind: str  # "identity" | "window" | "failed" | "done"
    value: Any = None


def _produce(plan: FilePlan, out: queue.Queue[_Item], stop: threading.Event, spec: VideoSpec,
             threads: int) -> None:
    """Hash and decode one file, feeding ``out``; gives up quietly once ``stop`` is set."""
    def put(item: _Item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        try:
            identity = file_identity(plan.path)
        except OSError as exc:
            raise VideoDecodeError(plan.path, unreadable_reason(exc)) from None
        if not put(_Item("identity", identity)):
            return
        windows = decode_windows(plan.path, spec, plan.spans, threads=threads)
        try:
            for outcome in windows:
                if not put(_Item("window", outcome)):
                    return
        finally:
            windows.close()
    except VideoDecodeError as exc:
        put(_Item("failed", exc))
    except Exception as exc:  # reported for this file, never raised in the pool
        put(_Item("failed", VideoDecodeError(plan.path, f"{exc.__class__.__name__}: {exc}")))
    finally:
        put(_Item("done"))


class _Batches:
    """Windows waiting for the video encoder; each full batch becomes one shard."""

    def __init__(self, writer: IndexWriter, bundle: Bundle, backend: str, threads: int | None, batch_size: int,
                 report: IngestReport, progress: Update | None) -> None:
        self.writer, self.report, self.progress, self.batch_size = writer, report, progress, batch_size
        self.encoder = open_session(bundle, "video_encoder", backend, threads)
        self.spec = VideoSpec.from_config(bundle.config)
        self.entries: list[dict[str, Any]] = []
        self.frames: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        # file_id -> old rows its new windows replace; taken by the first batch storing one of them
        self.replaces: dict[str, list[str]] = {}

    def add(self, entry: dict[str, Any], outcome: WindowOutcome) -> None:
        self.entries.append(entry)
        self.frames.append(outcome.video.to_model_input(self.spec))
        self.masks.append(outcome.video.video_mask)
        if len(self.entries) >= self.batch_size:
            self.flush()

    def fail(self, row_id: str, path: str, error: str) -> None:
        self.writer.record_failure(row_id, path, error)
        self.report.failed.append((row_id, error))
        if self.progress:
            self.progress(1)

    def flush(self) -> None:
        if not self.entries:
            return
        mask = np.stack(self.masks).astype(np.float32)
        out = self.encoder.run({"frames": np.stack(self.frames), "video_mask": mask})
        entries, count = list(self.entries), len(self.entries)
        self.entries.clear(), self.frames.clear(), self.masks.clear()
        store_batch(self.writer, entries, {**out, "video_mask": mask}, self.report, self._replaced_by)
        if self.progress:
            self.progress(count)

    def _replaced_by(self, stored: list[dict[str, Any]]) -> list[str]:
        files = [file_id for file_id in dict.fromkeys(entry["file_id"] for entry in stored) if file_id in self.replaces]
        self.report.replaced += len(files)
        return [old for file_id in files for old in self.replaces.pop(file_id)]


def encode_windows(writer: IndexWriter, bundle: Bundle, plans: list[FilePlan], setting: WindowSetting, *,
                   backend: str, batch_size: int, workers: int, threads: int | None, report: IngestReport,
                   progress: Update | None = None, metadata: dict[str, dict[str, Any]] | None = None) -> None:
    """Decode each planned file once and encode its windows in batches (shards), in file order;
    every window of a file gets the file's user ``metadata`` (file id -> its list row's)."""
    batches = _Batches(writer, bundle, backend, threads, batch_size, report, progress)
    batches.replaces = {plan.file_id: plan.replaces for plan in plans if plan.replaces}
    spec = batches.spec
    workers = max(workers, 1)
    decoder_threads = 1 if workers > 1 and len(plans) > 1 else 0  # one long file: let FFmpeg use the cores
    stop = threading.Event()
    queues = [queue.Queue(maxsize=QUEUE_WINDOWS) for _ in plans]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ucofia-windows") as pool:
        try:
            for plan, q in zip(plans, queues):  # started in this order, so file i never waits for file > i
                pool.submit(_produce, plan, q, stop, spec, decoder_threads)
            for plan, q in zip(plans, queues):
                _consume(plan, q, setting, batches, (metadata or {}).get(plan.file_id))
            batches.flush()
        finally:
            stop.set()


def _consume(plan: FilePlan, q: queue.Queue[_Item], setting: WindowSetting, batches: _Batches,
             metadata: dict[str, Any] | None = None) -> None:
    """Move one file's decoded windows from its queue into the batches."""
    base: dict[str, Any] | None = None
    remaining = {window_id(plan.file_id, s): s for s in plan.spans}
    while True:
        item = q.get()
        if item.kind == "done":
            break
        if item.kind == "identity":
            base = item.value
        elif item.kind == "failed":
            for row_id in list(remaining):
                batches.fail(row_id, str(plan.path), str(item.value))
            remaining.clear()
        else:
            outcome: WindowOutcome = item.value
            row_id = window_id(plan.file_id, outcome.span)
            remaining.pop(row_id, None)
            if not outcome.ok:
                batches.fail(row_id, str(plan.path), str(outcome.error))
                continue
            file_entry = video_entry(plan.file_id, base, outcome.video, metadata)
            batches.add(window_entry(file_entry, plan.file_id, outcome.span, outcome.video, setting), outcome)
    for row_id in remaining:  # not reached: the producer stopped early
        batches.fail(row_id, str(plan.path), f"cannot decode video {plan.path}: the decoder stopped before this window")
