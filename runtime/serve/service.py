"""The search service: model, current index snapshot, batcher, keys, metrics; reload, --watch and
the key file's watch."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from runtime.deployment import load_query_models, open_index
from runtime.index import IndexChangedError
from runtime.serve.auth import KeyFile, KeyRing, MediaSigner, default_link_secret, load_link_secret
from runtime.serve.batching import DynamicBatcher
from runtime.serve.engine import TWO_STAGE, JobResult, SearchEngine, SearchJob
from runtime.serve.settings import MEDIA_URL_BUCKET_S, MEDIA_URL_TTL_S, THUMBNAIL_CONCURRENCY, ServeSettings
from runtime.serve.snapshot import (
    SearcherFactory,
    Snapshot,
    SnapshotHolder,
    load_snapshot,
    open_gallery,
    read_state_digest,
    state_stamp,
)

logger = logging.getLogger(__name__)
# What a batch answers for a job whose client had gone before the model ran it.
ABANDONED = RuntimeError("the client went away before the search ran")


class SearchService:
    """Everything the HTTP layer calls; built once by ``open`` (blocking, before serving)."""

    def __init__(self, settings: ServeSettings, engine: SearchEngine, snapshot: Snapshot,
                 key_file: KeyFile | None, metrics: Any = None, signer: MediaSigner | None = None,
                 make_searcher: SearcherFactory | None = None) -> None:
        self.settings = settings
        self.make_searcher = make_searcher
        self.engine = engine
        self.holder = SnapshotHolder(snapshot)
        self.key_file = key_file
        self.metrics = metrics
        self.signer = signer
        self.batcher = DynamicBatcher(self._process, max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
                                      observer=metrics)
        self.started_at = time.time()
        self.last_reload_error: str | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._build_lock = threading.Lock()
        self._watch_task: asyncio.Task | None = None
        self._keys_task: asyncio.Task | None = None
        self.thumbnail_slots: asyncio.Semaphore | None = None
        self._observe_snapshot(snapshot)

    def attach_metrics(self, metrics: Any) -> None:
        """Report to ``metrics`` (runtime.serve.metrics.Metrics) from now on."""
        self.metrics = metrics
        self.batcher.observer = metrics
        self._observe_snapshot(self.snapshot)

    @classmethod
    def open(cls, settings: ServeSettings, metrics: Any = None,
             make_searcher: SearcherFactory | None = None) -> SearchService:
        """Load the bundle's sessions, the index, the key file and the link secret (errors:
        RuntimeUserError). ``make_searcher``: how each snapshot's searcher is made (default: one
        process; ``runtime.cluster``: the shards')."""
        key_file = KeyFile(settings.api_keys) if settings.api_keys is not None else None
        signer = None
        if key_file is not None:
            secret = load_link_secret(settings.link_secret or default_link_secret(key_file.path))
            signer = MediaSigner(secret, MEDIA_URL_TTL_S, MEDIA_URL_BUCKET_S)
        gallery, bundle = open_index(settings.index_dir, settings.bundle_dir)
        # a long-lived process: the scorer's text side is cut out once and saves on every request
        models = load_query_models(bundle, settings.backend, settings.threads, settings.scorer_precision,
                                   split_text_side=True)
        engine = SearchEngine(bundle, models.text, models.scorer, settings)
        snapshot = load_snapshot(gallery, models.scorer, version=1, memory_mb=settings.memory_mb, probe=engine.probe,
                                 two_stage=engine.mode(len(gallery), None) == TWO_STAGE,
                                 preload_mb=settings.preload_mb, make_searcher=make_searcher)
        if make_searcher is None:
            engine.warm_up(snapshot)
        return cls(settings, engine, snapshot, key_file, metrics, signer, make_searcher)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()
        self._reload_lock = asyncio.Lock()
        self.thumbnail_slots = asyncio.Semaphore(THUMBNAIL_CONCURRENCY)
        if self.settings.watch:
            self._watch_task = asyncio.create_task(self._watch(), name="ucofia-watch")
        if self.key_file is not None:
            self._keys_task = asyncio.create_task(self._watch_keys(), name="ucofia-watch-keys")

    async def stop(self) -> None:
        for task in (self._watch_task, self._keys_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        await self.batcher.stop()

    # ---- state -----------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self.holder.current

    @property
    def keyring(self) -> KeyRing | None:
        """The keys accepted now (None: no key file, every route is open)."""
        return None if self.key_file is None else self.key_file.ring

    @property
    def auth_required(self) -> bool:
        return self.key_file is not None

    def refresh_keys(self, force: bool = False) -> None:
        """Re-read the key file if it changed (blocking: a stat, and a read when it changed)."""
        if self.key_file is None:
            return
        outcome = self.key_file.refresh(force)
        if outcome is not None and self.metrics is not None:
            self.metrics.key_reloads.labels(outcome).inc()

    async def _watch_keys(self) -> None:
        """Look at the key file every key_check_interval_s; re-read it when it changed."""
        while True:
            await asyncio.sleep(self.settings.key_check_interval_s)
            try:
                await asyncio.to_thread(self.refresh_keys)
            except Exception:  # keep watching; the next change is read again
                logger.exception("checking the API key file failed")

    def readiness(self) -> dict[str, bool]:
        """What a request needs: sessions loaded, index open (and still on disk), batcher running.
        (Shards that failed their last call are not among them: the search asks them again and
        answers 503 or a partial answer while they are down; /readyz reports them beside.)"""
        snapshot = self.snapshot
        return {"sessions": self.engine.text.session is not None and self.engine.scorer.session is not None,
                "index": len(snapshot.index) > 0 and (Path(snapshot.index.root) / "index.json").is_file(),
                "batcher": self.batcher.alive}

    def shard_status(self) -> dict[str, int] | None:
        """Shards up and in all on a sharded gallery (``serve --ray``); None in one process."""
        status = getattr(self.snapshot.searcher, "shard_status", None)
        return None if status is None else status()

    def _observe_snapshot(self, snapshot: Snapshot) -> None:
        if self.metrics is not None:
            self.metrics.gallery_videos.set(snapshot.videos)
            self.metrics.snapshot_version.set(snapshot.version)

    # ---- search ----------------------------------------------------------------------------
    def _process(self, jobs: list[SearchJob]) -> list[JobResult | Exception]:
        """One batch on the snapshot current when it starts (runs on the batcher's thread); when
        an update deleted the shards that snapshot reads (compaction), the index is opened again
        and the batch retried once on it."""
        live = [job for job in jobs if not job.abandoned]  # a client that has gone costs no model time
        for job in jobs:
            if job.abandoned:
                self._dropped(job)
        snapshot = self.holder.current
        results: list[JobResult | Exception] = []
        if live:
            try:
                results = self.engine.run_batch(live, snapshot)
            except IndexChangedError as exc:
                logger.info("the index changed under snapshot %d (%s); reloading", snapshot.version, exc)
                results = self.engine.run_batch(live, self._reload_blocking("changed", stale=snapshot)[1])
        if self.metrics is not None:
            done = next((r for r in results if isinstance(r, JobResult)), None)
            if done is not None:
                self.metrics.stage_seconds.labels("encode").observe(done.encode_s)
                self.metrics.stage_seconds.labels("score").observe(done.score_s)
        by_job = dict(zip(map(id, live), results))
        return [by_job.get(id(job), ABANDONED) for job in jobs]

    def _dropped(self, job: SearchJob) -> None:
        if self.metrics is not None:
            self.metrics.request_dropped(job.abandoned_because or "disconnected")

    async def search(self, job: SearchJob) -> JobResult:
        """Queue ``job`` (QueueFull / RequestTimeout / the search's own errors propagate)."""
        return await self.batcher.submit(job, self.settings.request_timeout_s)

    # ---- reload ----------------------------------------------------------------------------
    def _build(self) -> Snapshot:
        current = self.holder.current
        gallery = open_gallery(Path(current.index.root), self.engine.bundle)
        snapshot = load_snapshot(gallery, self.engine.scorer, version=current.version + 1,
                                 memory_mb=self.settings.memory_mb, probe=self.engine.probe,
                                 two_stage=self.engine.mode(len(gallery), None) == TWO_STAGE,
                                 preload_mb=self.settings.preload_mb, make_searcher=self.make_searcher)
        self.refresh_keys(force=True)
        return snapshot

    def _reload_blocking(self, trigger: str, stale: Snapshot | None = None) -> tuple[Snapshot, Snapshot]:
        """Build a new snapshot and swap it in (one at a time, from any thread); returns (old, new).
        With ``stale``: nothing to do when the current snapshot is already newer than it."""
        with self._build_lock:
            current = self.holder.current
            if stale is not None and current is not stale:
                return current, current
            try:
                snapshot = self._build()
            except Exception as exc:
                self.last_reload_error = str(exc)
                if self.metrics is not None:
                    self.metrics.reloads.labels(trigger, "failed").inc()
                    self.metrics.errors.labels("reload").inc()
                logger.error("reload of %s (%s) failed, still serving snapshot %d: %s", current.index.root, trigger,
                             current.version, exc)
                raise
            old = self.holder.swap(snapshot)
            self.last_reload_error = None
            self._observe_snapshot(snapshot)
            if self.metrics is not None:
                self.metrics.reloads.labels(trigger, "ok").inc()
            return old, snapshot

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Open the index again off the event loop (and re-read the key file), then swap the
        snapshot in one assignment; batches already running finish on the old one. On error
        the old snapshot stays and the error (RuntimeUserError) propagates."""
        assert self._reload_lock is not None, "start() the service first"
        async with self._reload_lock:
            start = time.perf_counter()
            old, snapshot = await asyncio.get_running_loop().run_in_executor(None, self._reload_blocking, trigger)
            seconds = time.perf_counter() - start
            logger.info("reloaded %s (%s): %d -> %d videos in %.2f s", snapshot.index.root, trigger, old.videos,
                     snapshot.videos, seconds)
            return {"reloaded": True, "trigger": trigger, "seconds": round(seconds, 3),
                    "snapshot": snapshot.describe(), "previous": old.describe(),
                    "changed": snapshot.digest != old.digest}

    async def _watch(self) -> None:
        """Poll index.json every --watch-interval; reload once a change has held still for one
        poll (an indexing run rewrites it after every batch), not again for a state that failed."""
        root = Path(self.snapshot.index.root)
        interval = self.settings.watch_interval_s
        last_stamp = state_stamp(root)
        # not yet checked: an index changed between opening the snapshot and starting the watch
        # (a replica started during an indexing run) is reloaded on the first poll
        checked_stamp: tuple[int, int] | None = None
        failed_digest: str | None = None
        started_stamp = last_stamp
        while True:
            await asyncio.sleep(interval)
            stamp = state_stamp(root)
            if stamp != last_stamp:  # still changing (or just changed): look again next poll
                if stamp != checked_stamp:
                    logger.info("--watch: %s changed; reloading once it holds still for %g s", root / "index.json",
                                interval)
                last_stamp = stamp
                continue
            if stamp is None or stamp == checked_stamp:
                continue
            checked_stamp = stamp
            digest = read_state_digest(root)
            if stamp == started_stamp and digest == self.snapshot.digest:
                continue  # the state it started with, and the snapshot has it: nothing to say
            if digest is None or digest == self.snapshot.digest or digest == failed_digest:
                logger.info("--watch: %s holds still; nothing to reload (%s)", root / "index.json",
                            "unreadable" if digest is None else "the same rows" if digest == self.snapshot.digest
                            else "its reload failed before")
                continue
            try:
                await self.reload("watch")
                failed_digest = None
            except Exception as exc:  # keep serving the old snapshot; try again on the next change
                failed_digest = digest
                logger.warning("--watch: reload of %s failed, still serving version %d: %s", root,
                            self.snapshot.version, exc)
