"""``POST /v1/search`` with ``filter`` and ``offset`` and ``GET /v1/videos/{id}`` with metadata, on a
real server: the same records as ``ucofia-run search`` (metadata included), pages that are slices
of one ranking with absolute ranks, 422s naming the problem, and batches mixing filters and pages."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the API tests use httpx")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServerThread, make_clips, open_app  # noqa: E402

from runtime.bundle import load_bundle  # noqa: E402
from runtime.index import GalleryIndex, IndexWriter  # noqa: E402
from runtime.search.filters import parse_filter  # noqa: E402
from runtime.serve.engine import SearchJob  # noqa: E402

CLIPS = 6
EXTRA = 24  # rows added with copied features (ties), so that pages of 10 exist
QUERIES = ["a red car on the road", "someone cooking"]


def _meta(i: int) -> dict:
    return {"channel": ["news", "sport", "music"][i % 3], "year": 2015 + i, "tags": ["even"] if i % 2 == 0 else []}


@pytest.fixture(scope="module")
def served(fake_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_filters")
    folder = root / "clips"
    make_clips(folder, CLIPS)
    listing = root / "videos.jsonl"
    listing.write_text("".join(json.dumps({"id": f"clip{i}", "path": str(folder / f"clip{i}.mp4"), **_meta(i)}) + "\n"
                               for i in range(CLIPS)))
    index = root / "index"
    result = run_cli("index", "--bundle", str(fake_bundle), "--videos", str(listing), "-o", str(index), "-q",
                     "--workers", "1")
    assert result.returncode == 0, result.stderr
    gallery = GalleryIndex(index)
    rows = np.arange(EXTRA) % CLIPS
    features = gallery.gather(rows, roles=("video", "frame_features", "patches", "video_mask"))
    with IndexWriter(index, load_bundle(fake_bundle)) as writer:
        writer.add_batch([f"copy{i}" for i in range(EXTRA)], features,
                         [{"id": f"copy{i}", "metadata": _meta(CLIPS + i)} for i in range(EXTRA)])
    service, app = open_app(index)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield {"client": client, "index": index, "service": service}


def _post(served, **body):
    return served["client"].post("/v1/search", json={"queries": QUERIES, **body})


def _records(reply) -> list[list[dict]]:
    assert reply.status_code == 200, reply.text
    return [[{k: v for k, v in r.items() if k not in ("entry", "links", "windows")} for r in q["results"]]
            for q in reply.json()["results"]]


def _cli(index, *args) -> list[list[dict]]:
    result = run_cli("search", "--index", str(index), *(a for q in QUERIES for a in ("--query", q)), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["results"] for line in result.stdout.splitlines()]


def _same(got, want) -> None:
    strip = [[{k: v for k, v in r.items() if k not in ("score", "levels")} for r in q] for q in got]
    assert strip == [[{k: v for k, v in r.items() if k not in ("score", "levels")} for r in q] for q in want]
    np.testing.assert_allclose([r["score"] for q in got for r in q], [r["score"] for q in want for r in q],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("two_stage", [False, True])
def test_filtered_pages_equal_the_cli(served, two_stage):
    where = {"$or": [{"channel": "news"}, {"year": {"$gte": 2030}}]}
    reply = _post(served, top_k=5, offset=3, filter=where, two_stage=two_stage)
    mode = ("--two-stage", "--stage1", "flat") if two_stage else ()
    want = _cli(served["index"], "--top-k", "5", "--offset", "3", "--filter", json.dumps(where), *mode)
    got = _records(reply)
    _same(got, want)
    assert reply.json()["offset"] == 3 and [r["rank"] for r in got[0]] == [4, 5, 6, 7, 8]
    assert all(r["metadata"]["channel"] == "news" or r["metadata"]["year"] >= 2030 for q in got for r in q)


@pytest.mark.parametrize("two_stage", [False, True])
def test_page_two_is_ranks_11_to_20_of_a_top_20(served, two_stage):
    top20 = _records(_post(served, top_k=20, two_stage=two_stage))
    page2 = _records(_post(served, top_k=10, offset=10, two_stage=two_stage))
    assert page2 == [q[10:20] for q in top20] and [r["rank"] for r in page2[0]] == list(range(11, 21))


def test_video_route_shows_the_metadata_beside_the_entry(served):
    body = served["client"].get("/v1/videos/clip4").json()
    assert body["metadata"] == _meta(4) and "metadata" not in body["entry"] and body["entry"]["frames"] > 0
    assert served["client"].get("/v1/videos/copy1").json()["metadata"] == _meta(CLIPS + 1)


@pytest.mark.parametrize("body, message", [
    ({"filter": {"year": {"$foo": 1}}}, "filter: year.$foo: unknown operator '$foo'"),
    ({"filter": {"year": {"$gte": "2020"}}}, "filter.year.$gte: field 'year' holds numbers; $gte compares it with a "
                                             "string"),
    ({"filter": {"tags": {"$gt": "a"}}}, "field 'tags' holds lists of strings; $gt compares it with a string"),
    ({"filter": {"year": None}}, "filter: year: expects a string, a number or a boolean, got null"),
    ({"filter": []}, "filter: Input should be a valid dictionary"),
    ({"top_k": 95, "offset": 10}, "offset + top_k is 105; it must be at most 100"),
    ({"offset": -1}, "offset: Input should be greater than or equal to 0"),
])
def test_bad_filters_and_pages_get_422_naming_the_problem(served, body, message):
    reply = _post(served, **body)
    assert reply.status_code == 422 and message in reply.json()["error"], reply.text
    assert _post(served, top_k=1).status_code == 200


def test_a_filter_matching_nothing_gives_empty_lists(served):
    assert [q["results"] for q in _post(served, filter={"channel": "weather"}).json()["results"]] == [[], []]


def test_a_batch_mixing_filters_and_pages_answers_each_as_if_alone(served):
    service = served["service"]
    engine, snapshot = service.engine, service.snapshot
    jobs = [SearchJob(QUERIES, top_k=4, offset=2), SearchJob(QUERIES[:1], top_k=3),
            SearchJob(QUERIES, top_k=2, offset=5, where=parse_filter({"channel": "sport"})),
            SearchJob(QUERIES[:1], top_k=6, where=parse_filter({"channel": "sport"}))]
    together = engine.run_batch(jobs, snapshot)
    for job, result in zip(jobs, together):
        alone = engine.run_batch([SearchJob(job.queries, top_k=job.top_k, offset=job.offset, where=job.where)],
                                 snapshot)[0]
        assert [[h["video_id"] for h in q["results"]] for q in result.queries] == \
            [[h["video_id"] for h in q["results"]] for q in alone.queries]
        assert [h["rank"] for h in result.queries[0]["results"]] == list(range(job.offset + 1,
                                                                              job.offset + job.top_k + 1))
