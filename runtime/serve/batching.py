"""Dynamic batching as Triton's dynamic batcher does it: concurrent requests wait in one bounded
queue; a worker takes what is queued, waits at most ``max_wait`` for more while the batch holds
fewer than ``max_batch`` queries, and hands the batch to ``process`` on a worker thread (model
calls never run on the event loop). While a batch runs, new requests queue up and form the next.

A full queue refuses a request at once (``QueueFull``: the app answers 503 with Retry-After)
instead of letting the backlog and the latency grow without limit; a request that waits longer
than its timeout gets ``RequestTimeout`` and is dropped from the queue if it has not started.
A request is never split across batches; one larger than ``max_batch`` runs as a batch of its own.
A request whose client went away (``SearchJob.abandon``) is dropped when its batch is formed, and
``process`` skips one abandoned later, before the text encoder runs.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from runtime.serve.engine import SearchJob


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class RequestTimeout(Exception):
    """The request did not finish within its timeout."""


class BatchObserver(Protocol):
    """Where the batcher reports what it does (the service's metrics)."""

    def batch_started(self, queries: int, requests: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queue_depth(self, requests: int) -> None: ...

    def request_dropped(self, reason: str) -> None: ...


Process = Callable[[list[SearchJob]], Sequence[Any]]


class DynamicBatcher:
    """Coalesces concurrent ``SearchJob``s into batches for ``process`` (see the module docstring)."""

    def __init__(self, process: Process, *, max_batch: int, max_wait_s: float, max_queue: int,
                 observer: BatchObserver | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.observer = observer
        self._pending: deque[SearchJob] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ucofia-batch")
        self._task = asyncio.create_task(self._worker(), name="ucofia-batcher")

    async def stop(self) -> None:
        """Stop the worker; queued requests fail with a shutdown error."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            job = self._pending.popleft()
            if job.future is not None and not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return len(self._pending)

    # ---- requests --------------------------------------------------------------------------
    async def submit(self, job: SearchJob, timeout_s: float) -> Any:
        """Queue ``job`` and wait for its result (or the exception ``process`` gave for it)."""
        if not self.alive or self._wakeup is None:
            raise RuntimeError("the batcher is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting (--max-queue {self.max_queue})")
        job.future = asyncio.get_running_loop().create_future()
        job.enqueued = time.monotonic()
        self._pending.append(job)
        self._report_depth()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.abandon("timeout")
            raise RequestTimeout(f"the search did not finish within {timeout_s:g} s") from None

    # ---- worker ----------------------------------------------------------------------------
    def _queued_queries(self) -> int:
        return sum(job.size for job in self._pending if not job.abandoned)

    def _report_depth(self) -> None:
        if self.observer is not None:
            self.observer.queue_depth(len(self._pending))

    async def _collect(self) -> list[SearchJob]:
        """Wait (at most max_wait) for the batch to fill, then take jobs up to max_batch queries."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._queued_queries() < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[SearchJob] = []
        queries = 0
        while self._pending:
            job = self._pending[0]
            if job.abandoned:  # its client gave up or went away while it waited
                self._pending.popleft()
                if job.future is not None:
                    job.future.cancel()
                if self.observer is not None:
                    self.observer.request_dropped(job.abandoned_because or "disconnected")
                continue
            if batch and queries + job.size > self.max_batch:
                break
            self._pending.popleft()
            batch.append(job)
            queries += job.size
        self._report_depth()
        return batch

    async def _worker(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._collect()
            if not batch:
                continue
            now = time.monotonic()
            for job in batch:
                job.started = now
                if self.observer is not None:
                    self.observer.queue_wait(now - job.enqueued)
            if self.observer is not None:
                self.observer.batch_started(sum(job.size for job in batch), len(batch))
            try:
                results = list(await loop.run_in_executor(self._executor, self.process, batch))
            except Exception as exc:  # the batch failed as a whole: every request gets the error
                results = [exc] * len(batch)
            self.batches += 1
            for job, result in zip(batch, results):
                future = job.future
                if future is None or future.done():
                    continue
                if job.abandoned:  # nobody awaits it: do not leave an unretrieved exception behind
                    future.cancel()
                elif isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
