"""The batcher's bookkeeping and lifecycle (issue 27: the survivors of mutating runtime.serve.batching):
what it reports to its observer (the service's metrics), its settings, start / stop, a whole batch
failing, a request settled or abandoned while its batch runs, and the thread the model runs on.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runtime.serve.batching import DynamicBatcher
from runtime.serve.engine import SearchJob

WAIT_S = 10.0
HOLD_S = 3.0  # how long a gated batch is held when the test checks that something does not wait for it


class Observer:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.waits: list[float] = []
        self.depths: list[int] = []
        self.dropped: list[str] = []

    def batch_started(self, queries: int, requests: int) -> None:
        self.batches.append((queries, requests))

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def queue_depth(self, requests: int) -> None:
        self.depths.append(requests)

    def request_dropped(self, reason: str) -> None:
        self.dropped.append(reason)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT_S * 3))


def job(*queries: str) -> SearchJob:
    return SearchJob(queries=list(queries), top_k=1)


def echo(jobs):
    return [[q.upper() for q in j.queries] for j in jobs]


def held_at(gate: threading.Event):
    """A process function that answers like ``echo`` once ``gate`` opens (at most WAIT_S)."""
    def held(jobs):
        gate.wait(WAIT_S)
        return echo(jobs)

    return held


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_queue": 0}, {"max_wait_s": -0.001}])
def test_settings_out_of_range_are_refused(kwargs):
    settings = {"max_batch": 1, "max_wait_s": 0.0, "max_queue": 1, **kwargs}
    with pytest.raises(ValueError, match="max_batch and max_queue must be >= 1"):
        DynamicBatcher(echo, **settings)
    DynamicBatcher(echo, max_batch=1, max_wait_s=0.0, max_queue=1)  # the bounds themselves are fine


def test_the_observer_hears_of_every_batch_wait_and_queue_depth():
    observer = Observer()

    async def main():
        batcher = DynamicBatcher(echo, max_batch=8, max_wait_s=0.05, max_queue=10, observer=observer)
        await batcher.start()
        try:
            early = job("x")
            await asyncio.sleep(1.0)  # made a second before it is submitted: its wait counts from the submit
            jobs = [early, job("a", "b"), job("c")]
            results = await asyncio.gather(*(batcher.submit(j, WAIT_S) for j in jobs))
        finally:
            await batcher.stop()
        return jobs, results

    jobs, results = run(main())
    assert results == [["X"], ["A", "B"], ["C"]]
    assert observer.batches == [(4, 3)]
    assert len(observer.waits) == 3 and all(0 <= w < 0.9 for w in observer.waits)
    assert observer.depths[:3] == [1, 2, 3] and observer.depths[-1] == 0
    assert all(j.started is not None and j.started >= j.enqueued for j in jobs)


def test_a_full_batch_does_not_wait_for_more():
    async def main():
        batcher = DynamicBatcher(echo, max_batch=2, max_wait_s=WAIT_S, max_queue=10)
        await batcher.start()
        try:
            start = time.monotonic()
            result = await batcher.submit(job("a", "b"), WAIT_S * 2)
            return result, time.monotonic() - start
        finally:
            await batcher.stop()

    result, seconds = run(main())
    assert result == ["A", "B"] and seconds < WAIT_S / 2


def test_a_batch_that_fails_as_a_whole_fails_each_of_its_requests():
    def broken(jobs):
        raise RuntimeError("the model fell over")

    async def main():
        batcher = DynamicBatcher(broken, max_batch=4, max_wait_s=0.2, max_queue=10)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(job(q), WAIT_S) for q in "ab"), return_exceptions=True)
        finally:
            await batcher.stop()

    outcomes = run(main())
    assert len(outcomes) == 2 and all(isinstance(o, RuntimeError) and "fell over" in str(o) for o in outcomes)


def test_the_model_runs_on_the_batchers_own_thread():
    names: list[str] = []

    def where(jobs):
        names.append(threading.current_thread().name)
        return echo(jobs)

    async def main():
        batcher = DynamicBatcher(where, max_batch=1, max_wait_s=0.0, max_queue=10)
        await batcher.start()
        try:
            for q in "abc":
                await batcher.submit(job(q), WAIT_S)
        finally:
            await batcher.stop()

    run(main())
    assert len(names) == 3 and all(name.startswith("ucofia-batch") for name in names)


def test_lifecycle_start_stop_and_submit_when_not_running():
    async def main():
        batcher = DynamicBatcher(echo, max_batch=1, max_wait_s=0.0, max_queue=10)
        assert not batcher.alive
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(job("a"), WAIT_S)
        await batcher.stop()  # stopping one that never started is fine
        await batcher.start()
        assert batcher.alive
        await batcher.stop()
        assert not batcher.alive
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(job("a"), WAIT_S)

    run(main())


def test_stop_fails_the_queued_requests_and_does_not_wait_for_the_running_batch():
    gate = threading.Event()
    held = held_at(gate)

    async def main():
        batcher = DynamicBatcher(held, max_batch=1, max_wait_s=0.0, max_queue=10)
        await batcher.start()
        running = asyncio.create_task(batcher.submit(job("a"), WAIT_S))
        while batcher.depth:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # "a" is in the model now
        queued = asyncio.create_task(batcher.submit(job("b"), WAIT_S))
        await asyncio.sleep(0.1)
        timer = threading.Timer(HOLD_S, gate.set)
        timer.start()
        await batcher.stop()
        released_before_stop_returned = gate.is_set()
        outcome = await asyncio.gather(queued, return_exceptions=True)
        running.cancel()
        timer.join()
        return released_before_stop_returned, outcome[0]

    released, queued_outcome = run(main())
    assert not released  # stop() returned while the running batch was still held
    assert isinstance(queued_outcome, RuntimeError) and "shutting down" in str(queued_outcome)
    deadline = time.monotonic() + WAIT_S
    while any(t.name.startswith("ucofia-batch") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("ucofia-batch") for t in threading.enumerate())  # its thread was let go


def test_requests_abandoned_in_the_queue_are_dropped_and_reported_with_their_reason():
    gate = threading.Event()
    observer = Observer()
    seen: list[list[str]] = []

    def held(jobs):
        gate.wait(WAIT_S)
        seen.extend(j.queries for j in jobs)
        return echo(jobs)

    async def main():
        batcher = DynamicBatcher(held, max_batch=1, max_wait_s=0.0, max_queue=10, observer=observer)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(job("first"), WAIT_S))
            await asyncio.sleep(0.2)
            gone = job("gone")
            waiting = asyncio.create_task(batcher.submit(gone, WAIT_S))
            late = job("late")
            timed_out = asyncio.create_task(batcher.submit(late, 0.2))
            await asyncio.sleep(0.1)
            gone.abandon("disconnected")
            waiting.cancel()
            await asyncio.gather(timed_out, return_exceptions=True)
            gate.set()
            await first
            return await batcher.submit(job("next"), WAIT_S), gone, late
        finally:
            await batcher.stop()

    result, gone, late = run(main())
    assert result == ["NEXT"] and seen == [["first"], ["next"]]
    assert sorted(observer.dropped) == ["disconnected", "timeout"]
    assert gone.future.cancelled() and late.future.cancelled()


def test_a_request_settled_while_its_batch_ran_does_not_stop_the_batcher():
    gate = threading.Event()
    held = held_at(gate)

    async def main():
        batcher = DynamicBatcher(held, max_batch=1, max_wait_s=0.0, max_queue=10)
        await batcher.start()
        try:
            settled = job("a")
            task = asyncio.create_task(batcher.submit(settled, WAIT_S))
            while settled.future is None or batcher.depth:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            settled.future.set_result(["settled elsewhere"])
            gate.set()
            first = await task
            return first, await batcher.submit(job("b"), WAIT_S), batcher.alive
        finally:
            await batcher.stop()

    first, second, alive = run(main())
    assert first == ["settled elsewhere"] and second == ["B"] and alive


def test_a_request_abandoned_while_its_batch_runs_gets_no_result():
    gate = threading.Event()
    held = held_at(gate)

    async def main():
        batcher = DynamicBatcher(held, max_batch=1, max_wait_s=0.0, max_queue=10)
        await batcher.start()
        try:
            abandoned = job("a")
            task = asyncio.create_task(batcher.submit(abandoned, 0.3))
            outcome = await asyncio.gather(task, return_exceptions=True)  # times out while held
            gate.set()
            await batcher.submit(job("b"), WAIT_S)  # after the held batch
            return outcome[0], abandoned
        finally:
            await batcher.stop()

    outcome, abandoned = run(main())
    assert type(outcome).__name__ == "RequestTimeout"
    assert abandoned.future.cancelled()  # not left holding a result nobody reads
