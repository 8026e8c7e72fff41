"""The search service: model, current index snapshot, batcher, keys, metrics; reload and --watch."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from runtime.deployment import load_query_models, open_index
from runtime.index import IndexChangedError
from runtime.serve.auth import KeyRing, MediaSigner
from runtime.serve.batching import DynamicBatcher
from runtime.serve.engine import TWO_STAGE, JobResult, SearchEngine, SearchJob
from runtime.serve.settings import MEDIA_URL_TTL_S, THUMBNAIL_CONCURRENCY, ServeSettings
from runtime.serve.snapshot import Snapshot, SnapshotHolder, load_snapshot, open_gallery, read_state_digest, state_stamp

logger = logging.getLogger(__name__)


class SearchService:
    """Everything the HTTP layer calls; built once by ``open`` (blocking, before serving)."""

    def __init__(self, settings: ServeSettings, engine: SearchEngine, snapshot: Snapshot,
                 keyring: KeyRing | None, metrics: Any = None) -> None:
        self.settings = settings
        self.engine = engine
        self.holder = SnapshotHolder(snapshot)
        self.keyring = keyring
        self.metrics = metrics
        self.signer = MediaSigner(MEDIA_URL_TTL_S) if keyring is not None else None
        self.batcher = DynamicBatcher(self._process, max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
                                      observer=metrics)
        self.started_at = time.time()
        self.last_reload_error: str | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._build_lock = threading.Lock()
        self._watch_task: asyncio.Task | None = None
        self.thumbnail_slots: asyncio.Semaphore | None = None
        self._observe_snapshot(snapshot)

    def attach_metrics(self, metrics: Any) -> None:
        """Report to ``metrics`` (runtime.serve.metrics.Metrics) from now on."""
        self.metrics = metrics
        self.batcher.observer = metrics
        self._observe_snapshot(self.snapshot)

    @classmethod
    def open(cls, settings: ServeSettings, metrics: Any = None) -> SearchService:
        """Load the bundle's sessions, the index and the key file (errors: RuntimeUserError)."""
        keyring = KeyRing.load(settings.api_keys) if settings.api_keys is not None else None
        gallery, bundle = open_index(settings.index_dir, settings.bundle_dir)
        models = load_query_models(bundle, settings.backend, settings.threads)
        engine = SearchEngine(bundle, models.text, models.scorer, settings)
        snapshot = load_snapshot(gallery, models.scorer, version=1, memory_mb=settings.memory_mb, probe=engine.probe,
                                 two_stage=engine.mode(len(gallery), None) == TWO_STAGE,
                                 preload_mb=settings.preload_mb)
        engine.warm_up(snapshot)
        return cls(settings, engine, snapshot, keyring, metrics)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()
        self._reload_lock = asyncio.Lock()
        self.thumbnail_slots = asyncio.Semaphore(THUMBNAIL_CONCURRENCY)
        if self.settings.watch:
            self._watch_task = asyncio.create_task(self._watch(), name="ucofia-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except asyncio.CancelledError:
                pass
        await self.batcher.stop()

    # ---- state -----------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self.holder.current

    @property
    def auth_required(self) -> bool:
        return self.keyring is not None

    def readiness(self) -> dict[str, bool]:
        """What /readyz checks: sessions loaded, index open (and still on disk), batcher running."""
        snapshot = self.snapshot
        return {"sessions": self.engine.text.session is not None and self.engine.scorer.session is not None,
                "index": len(snapshot.index) > 0 and (Path(snapshot.index.root) / "index.json").is_file(),
                "batcher": self.batcher.alive}

    def _observe_snapshot(self, snapshot: Snapshot) -> None:
        if self.metrics is not None:
            self.metrics.gallery_videos.set(snapshot.videos)
            self.metrics.snapshot_version.set(snapshot.version)

    # ---- search ----------------------------------------------------------------------------
    def _process(self, jobs: list[SearchJob]) -> list[JobResult | Exception]:
        """One batch on the snapshot current when it starts (runs on the batcher's thread); when
        an update deleted the shards that snapshot reads (compaction), the index is opened again
        and the batch retried once on it."""
        snapshot = self.holder.current
        try:
            results = self.engine.run_batch(jobs, snapshot)
        except IndexChangedError as exc:
            logger.info("the index changed under snapshot %d (%s); reloading", snapshot.version, exc)
            results = self.engine.run_batch(jobs, self._reload_blocking("changed", stale=snapshot)[1])
        if self.metrics is not None:
            done = next((r for r in results if isinstance(r, JobResult)), None)
            if done is not None:
                self.metrics.stage_seconds.labels("encode").observe(done.encode_s)
                self.metrics.stage_seconds.labels("score").observe(done.score_s)
        return results

    async def search(self, job: SearchJob) -> JobResult:
        """Queue ``job`` (QueueFull / RequestTimeout / the search's own errors propagate)."""
        return await self.batcher.submit(job, self.settings.request_timeout_s)

    # ---- reload ----------------------------------------------------------------------------
    def _build(self) -> tuple[Snapshot, KeyRing | None]:
        current = self.holder.current
        gallery = open_gallery(Path(current.index.root), self.engine.bundle)
        snapshot = load_snapshot(gallery, self.engine.scorer, version=current.version + 1,
                                 memory_mb=self.settings.memory_mb, probe=self.engine.probe,
                                 two_stage=self.engine.mode(len(gallery), None) == TWO_STAGE,
                                 preload_mb=self.settings.preload_mb)
        keyring = KeyRing.load(self.settings.api_keys) if self.settings.api_keys is not None else None
        return snapshot, keyring

    def _reload_blocking(self, trigger: str, stale: Snapshot | None = None) -> tuple[Snapshot, Snapshot]:
        """Build a new snapshot and swap it in (one at a time, from any thread); returns (old, new).
        With ``stale``: nothing to do when the current snapshot is already newer than it."""
        with self._build_lock:
            current = self.holder.current
            if stale is not None and current is not stale:
                return current, current
            try:
                snapshot, keyring = self._build()
            except Exception as exc:
                self.last_reload_error = str(exc)
                if self.metrics is not None:
                    self.metrics.reloads.labels(trigger, "failed").inc()
                    self.metrics.errors.labels("reload").inc()
                raise
            old = self.holder.swap(snapshot)
            if keyring is not None:
                self.keyring = keyring
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
        checked_stamp = last_stamp
        failed_digest: str | None = None
        while True:
            await asyncio.sleep(interval)
            stamp = state_stamp(root)
            if stamp != last_stamp:  # still changing (or just changed): look again next poll
                last_stamp = stamp
                continue
            if stamp is None or stamp == checked_stamp:
                continue
            checked_stamp = stamp
            digest = read_state_digest(root)
            if digest is None or digest == self.snapshot.digest or digest == failed_digest:
                continue
            try:
                await self.reload("watch")
                failed_digest = None
            except Exception as exc:  # keep serving the old snapshot; try again on the next change
                failed_digest = digest
                logger.warning("--watch: reload of %s failed, still serving version %d: %s", root,
                            self.snapshot.version, exc)
