"""The dynamic batcher (coalescing, max batch, bounded queue, timeouts, per-request errors) and the
engine's batched search (a batch answers each request exactly as it would be answered alone)."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runtime.errors import QueryError
from runtime.serve.batching import DynamicBatcher, QueueFull, RequestTimeout
from runtime.serve.engine import SearchJob

WAIT_S = 10.0


class Recorder:
    """A process function that records its batches; optionally held at a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[list[str]]] = []
        self.gate = gate

    def __call__(self, jobs):
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        self.batches.append([job.queries for job in jobs])
        return [QueryError(f"bad {job.queries[0]}") if job.queries[0].startswith("bad") else
                [q.upper() for q in job.queries] for job in jobs]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT_S * 3))


def job(*queries: str) -> SearchJob:
    return SearchJob(queries=list(queries), top_k=1)


def test_concurrent_requests_coalesce_up_to_max_batch():
    gate = threading.Event()
    record = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(record, max_batch=4, max_wait_s=0.05, max_queue=100)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(job("a"), WAIT_S))  # runs alone, held at the gate
            while not record.batches and batcher.depth:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            rest = [asyncio.create_task(batcher.submit(job(f"q{i}"), WAIT_S)) for i in range(6)]
            await asyncio.sleep(0.1)  # all six queued while the first batch runs
            gate.set()
            results = await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()
        return results, batcher.batches

    results, batches = run(main())
    assert results == [["A"]] + [[f"Q{i}"] for i in range(6)]
    assert record.batches == [[["a"]], [[f"q{i}"] for i in range(4)], [["q4"], ["q5"]]]
    assert batches == 3


def test_batch_waits_at_most_max_wait_for_more():
    record = Recorder()

    async def main():
        batcher = DynamicBatcher(record, max_batch=64, max_wait_s=0.2, max_queue=10)
        await batcher.start()
        try:
            start = time.monotonic()
            result = await batcher.submit(job("alone"), WAIT_S)
            return result, time.monotonic() - start
        finally:
            await batcher.stop()

    result, seconds = run(main())
    assert result == ["ALONE"] and 0.15 <= seconds < 5


def test_a_request_larger_than_max_batch_runs_alone_and_is_not_split():
    record = Recorder()

    async def main():
        batcher = DynamicBatcher(record, max_batch=2, max_wait_s=0.05, max_queue=10)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit(job("x", "y", "z"), WAIT_S), batcher.submit(job("w"), WAIT_S))
        finally:
            await batcher.stop()

    assert run(main()) == [["X", "Y", "Z"], ["W"]]
    assert record.batches == [[["x", "y", "z"]], [["w"]]]


def test_full_queue_refuses_at_once():
    gate = threading.Event()
    record = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(record, max_batch=1, max_wait_s=0, max_queue=2)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit(job("r"), WAIT_S))
            await asyncio.sleep(0.1)  # taken into a batch, held at the gate
            queued = [asyncio.create_task(batcher.submit(job(f"w{i}"), WAIT_S)) for i in range(2)]
            await asyncio.sleep(0.05)
            assert batcher.depth == 2
            with pytest.raises(QueueFull, match="max-queue 2"):
                await batcher.submit(job("refused"), WAIT_S)
            gate.set()
            return await asyncio.gather(running, *queued)
        finally:
            await batcher.stop()

    assert run(main()) == [["R"], ["W0"], ["W1"]]
    assert ["refused"] not in [q for batch in record.batches for q in batch]


def test_timed_out_request_is_dropped_from_the_queue():
    gate = threading.Event()
    record = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(record, max_batch=1, max_wait_s=0, max_queue=10)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit(job("slow"), WAIT_S))
            await asyncio.sleep(0.1)
            with pytest.raises(RequestTimeout, match="within 0.2 s"):
                await batcher.submit(job("impatient"), 0.2)
            gate.set()
            await running
            return await batcher.submit(job("later"), WAIT_S)
        finally:
            await batcher.stop()

    assert run(main()) == ["LATER"]
    assert record.batches == [[["slow"]], [["later"]]]  # the abandoned request never ran


def test_an_error_reaches_only_its_request():
    record = Recorder()

    async def main():
        batcher = DynamicBatcher(record, max_batch=8, max_wait_s=0.1, max_queue=10)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit(job("good"), WAIT_S), batcher.submit(job("bad one"), WAIT_S),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    good, bad = run(main())
    assert good == ["GOOD"] and isinstance(bad, QueryError) and "bad one" in str(bad)
    assert len(record.batches) == 1  # both were in one batch


# ---- the engine on a real (hand-built) bundle and index -----------------------------------------
@pytest.fixture(scope="module")
def engine_and_snapshot(fake_bundle, tmp_path_factory):
    from serve_helpers import build_index

    from runtime.deployment import load_query_models, open_index
    from runtime.serve.engine import SearchEngine
    from runtime.serve.settings import ServeSettings
    from runtime.serve.snapshot import load_snapshot

    _, _, index = build_index(tmp_path_factory.mktemp("engine"), clips=6, bundle=fake_bundle)
    settings = ServeSettings(index_dir=index, backend="cpu")
    gallery, bundle = open_index(index)
    models = load_query_models(bundle, "cpu")
    engine = SearchEngine(bundle, models.text, models.scorer, settings)
    return engine, load_snapshot(gallery, models.scorer, version=1, two_stage=False, memory_mb=64,
                                 probe=engine.probe)


def test_a_batch_answers_each_request_as_if_alone(engine_and_snapshot):
    engine, snapshot = engine_and_snapshot
    jobs = [SearchJob(["a red car", "a dog"], top_k=2), SearchJob(["people talk"], top_k=5),
            SearchJob(["a red car"], top_k=4, two_stage=True), SearchJob(["x " * 100], top_k=1)]
    together = engine.run_batch(jobs, snapshot)
    assert [r.batch_queries for r in together] == [5] * 4 and [r.batch_requests for r in together] == [4] * 4
    assert [r.mode for r in together] == ["exhaustive", "exhaustive", "two_stage", "exhaustive"]
    for job_, result in zip(jobs, together):
        alone = engine.run_batch([SearchJob(job_.queries, job_.top_k, job_.two_stage)], snapshot)[0]
        assert [len(q["results"]) for q in result.queries] == [job_.top_k] * job_.size
        for got, want in zip(result.queries, alone.queries):
            assert [h["video_id"] for h in got["results"]] == [h["video_id"] for h in want["results"]]
            assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in want["results"]],
                                                                          rel=1e-5, abs=1e-6)
    assert together[3].queries[0]["truncated"] is True and together[0].queries[0]["truncated"] is False


def test_a_bad_query_fails_its_request_only(engine_and_snapshot):
    engine, snapshot = engine_and_snapshot
    results = engine.run_batch([SearchJob(["a dog"], top_k=1), SearchJob([""], top_k=1)], snapshot)
    assert results[0].queries[0]["results"][0]["rank"] == 1
    assert isinstance(results[1], QueryError) and "no text is left after cleaning" in str(results[1])


@pytest.fixture(scope="module")
def windowed_engine(tmp_path_factory):
    from runtime_helpers import build_fake_bundle, run_cli
    from serve_helpers import make_clips

    from runtime.deployment import load_query_models, open_index
    from runtime.serve.engine import SearchEngine
    from runtime.serve.settings import ServeSettings
    from runtime.serve.snapshot import load_snapshot

    root = tmp_path_factory.mktemp("windowed_engine")
    bundle = build_fake_bundle(root / "bundle")
    make_clips(root / "clips", 3, seconds=3.0)
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(root / "clips"), "-o", str(root / "index"),
                     "-q", "--workers", "1", "--window", "1", "--no-thumbnails")
    assert result.returncode == 0, result.stderr
    gallery, bundle_ = open_index(root / "index")
    models = load_query_models(bundle_, "cpu")
    engine = SearchEngine(bundle_, models.text, models.scorer, ServeSettings(index_dir=root / "index", backend="cpu"))
    return engine, load_snapshot(gallery, models.scorer, version=1, two_stage=False, memory_mb=64, probe=engine.probe)


def test_a_batch_of_different_groupings_answers_each_as_if_alone(windowed_engine):
    engine, snapshot = windowed_engine
    jobs = [SearchJob(["a red car"], top_k=2), SearchJob(["a red car", "a dog"], top_k=3, group_by="window"),
            SearchJob(["a dog"], top_k=1, group_by="file", windows_per_file=1),
            SearchJob(["a red car"], top_k=2, two_stage=True, windows_per_file=2)]
    together = engine.run_batch(jobs, snapshot)
    assert [r.group_by for r in together] == ["file", "window", "file", "file"]
    for job_, result in zip(jobs, together):
        alone = engine.run_batch([SearchJob(job_.queries, job_.top_k, job_.two_stage, job_.group_by,
                                            job_.windows_per_file)], snapshot)[0]
        assert len(result.queries) == len(alone.queries) == job_.size
        for got, want in zip(result.queries, alone.queries):
            assert len(got["results"]) == len(want["results"]) == job_.top_k
            assert [h.get("file_id") for h in got["results"]] == [h.get("file_id") for h in want["results"]]
            assert [h["video_id"] for h in got["results"]] == [h["video_id"] for h in want["results"]]
            assert [len(h.get("windows", [])) for h in got["results"]] == \
                [len(h.get("windows", [])) for h in want["results"]]
    grouped = together[0].queries[0]["results"]
    assert len({h["file_id"] for h in grouped}) == len(grouped)  # each file once
    assert all(len(h["windows"]) == 1 for h in together[2].queries[0]["results"])
