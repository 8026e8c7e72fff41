"""The service over shards in this process (no Ray): the ingress's HTTP answers equal the
one-process service's; a shard down gives 503 with Retry-After, or with allow_partial a 200 that
says it is partial and names the missing shard; readyz and /metrics report the shards."""
from __future__ import annotations

import re
from concurrent.futures import Future

import pytest
from runtime_helpers import synthetic_index

from runtime.bundle import load_bundle
from runtime.cluster.fanout import LocalShards, ShardedSearcher
from runtime.cluster.shard import ShardSearcher
from runtime.serve.snapshot import state_digest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LOOPBACK = "http://127.0.0.1"
BODIES = [{"queries": ["a dog runs", "people cooking"], "top_k": 5},
          {"queries": ["a red car"], "top_k": 4, "offset": 3},
          {"queries": ["music"], "top_k": 6, "two_stage": True},
          {"queries": ["a cat"], "top_k": 5, "filter": {"id": {"$in": [f"v{i}" for i in range(0, 60, 3)]}}}]


@pytest.fixture(scope="module")
def index(fake_bundle, tmp_path_factory):
    return synthetic_index(tmp_path_factory.mktemp("sharded") / "idx", load_bundle(fake_bundle), 60, shard=25, seed=2)


class Down:
    """A shard client whose searches always fail (its replica is gone)."""

    def __init__(self, client):
        self.client, self.shard = client, client.shard

    def call(self, method, *args):
        if method == "load":
            return self.client.call(method, *args)
        future = Future()
        future.set_exception(ConnectionError("the replica died"))
        return future


def _open(index, shards, down=(), **settings):
    from runtime.serve.app import create_app
    from runtime.serve.service import SearchService
    from runtime.serve.settings import ServeSettings

    searchers: list[ShardedSearcher] = []

    def sharded(scorer, gallery, *, memory_mb, source, probe):
        local = LocalShards([ShardSearcher(index, s, shards, scorer=scorer) for s in range(shards)])
        clients = [Down(c) if c.shard in down else c for c in local.clients()]
        searchers.append(ShardedSearcher(scorer, gallery, clients, state_digest(gallery.state.to_dict()),
                                         memory_mb=memory_mb, deadline_s=0.3, observer=service_metrics[0]))
        return searchers[-1]

    from runtime.serve.metrics import Metrics

    service_metrics = [Metrics()]
    service = SearchService.open(ServeSettings(index_dir=index, backend="cpu", access_log=False, shortlist=20,
                                               **settings), service_metrics[0], make_searcher=sharded)
    return service, create_app(service)


def _ranked(answer):
    return [[(r["video_id"], r["rank"], round(r["score"], 6)) for r in q["results"]] for q in answer["results"]]


@pytest.mark.parametrize("shards", [1, 3])
def test_the_sharded_service_answers_as_one_process(index, shards):
    from serve_helpers import open_app

    _, single = open_app(index, shortlist=20)
    _, sharded = _open(index, shards)
    with TestClient(single, base_url=LOOPBACK) as one, TestClient(sharded, base_url=LOOPBACK) as many:
        for body in BODIES:
            want, got = one.post("/v1/search", json=body), many.post("/v1/search", json=body)
            assert want.status_code == got.status_code == 200, got.text
            assert _ranked(got.json()) == _ranked(want.json())
            assert got.json()["mode"] == want.json()["mode"] and "partial" not in got.json()
        ready = many.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["shards"] and ready["shards"] == {"up": shards, "total": shards}
        assert "shards" not in one.get("/readyz").json()
        metrics = many.get("/metrics").text
        assert f'ucofia_shard_rows{{shard="{shards - 1}"}} {60 // shards}.0' in metrics
        assert 'ucofia_shard_call_seconds_count{call="hits",shard="0"}' in metrics
        assert f"ucofia_shards_up {shards}.0" in metrics
        seconds = float(re.search(r'^ucofia_shard_call_seconds_sum\{call="hits",shard="0"\} (\S+)$', metrics, re.M)[1])
        assert 0 < seconds < 60  # the time the calls took


def test_a_shard_down_is_503_with_retry_after_or_a_partial_answer_when_allowed(index):
    _, app = _open(index, 2, down={1})
    with TestClient(app, base_url=LOOPBACK) as client:
        strict = client.post("/v1/search", json=BODIES[0])
        assert strict.status_code == 503 and strict.headers["Retry-After"] == "1"
        assert "shards [1] of 2" in strict.json()["error"] and "allow_partial" in strict.json()["error"]
        for body in (BODIES[0], BODIES[2]):  # exhaustive, then two-stage (stage 1 misses the shard)
            partial = client.post("/v1/search", json={**body, "allow_partial": True})
            assert partial.status_code == 200, partial.text
            answer = partial.json()
            assert answer["partial"] is True and answer["missing_shards"] == [1]
            ids = [r["video_id"] for q in answer["results"] for r in q["results"]]
            assert ids and all(int(i[1:]) < 30 for i in ids)  # shard 0 holds v0..v29
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["shards"] == {"up": 1, "total": 2}
        assert ready.json()["checks"]["shards"] is False
        metrics = client.get("/metrics").text
        assert 'ucofia_shard_call_failures_total{shard="1"}' in metrics and "ucofia_shards_up 1.0" in metrics
