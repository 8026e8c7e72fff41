"""Reload under load: 8 clients query in a loop while `ucofia-run index` adds videos and the index
is reloaded (POST /v1/admin/reload, or --watch): no 5xx, every answer complete, answers switch
to the new gallery after the swap. Every client loop is bounded in count and time."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the reload tests use httpx")

from runtime_helpers import run_cli_process  # noqa: E402
from serve_helpers import ServerThread, build_index, make_clips, open_app  # noqa: E402

CLIENTS = 8
MAX_REQUESTS = 400  # per client
LOOP_DEADLINE_S = 90.0
WAIT_S = 60.0
FIRST, ADDED = 4, 3
REQUEST = {"queries": ["a red car", "a dog runs"], "top_k": 50}


@dataclass
class Answer:
    started: float
    finished: float
    status: int
    body: dict


@dataclass
class Load:
    """CLIENTS threads searching in a loop until ``stop`` (or their count / time bound)."""

    url: str
    answers: list[list[Answer]] = field(default_factory=lambda: [[] for _ in range(CLIENTS)])
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def _client(self, number: int) -> None:
        deadline = time.monotonic() + LOOP_DEADLINE_S
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(MAX_REQUESTS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                started = time.monotonic()
                try:
                    reply = client.post("/v1/search", json=REQUEST)
                except httpx.HTTPError as exc:
                    self.errors.append(f"client {number}: {exc!r}")
                    return
                body = reply.json() if reply.headers.get("content-type") == "application/json" else {}
                self.answers[number].append(Answer(started, time.monotonic(), reply.status_code, body))

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT_S)

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert not self.errors, self.errors
            time.sleep(0.02)

    def each_has(self, count: int, after: float = 0.0) -> bool:
        return all(sum(a.started > after for a in answers) >= count for answers in self.answers)

    @property
    def all(self) -> list[Answer]:
        return [a for answers in self.answers for a in answers]


@pytest.fixture
def growing_index(fake_bundle, tmp_path):
    bundle, _, index = build_index(tmp_path, FIRST, bundle=fake_bundle)
    more = tmp_path / "more"
    make_clips(more, ADDED, first=FIRST)
    return bundle, index, more


def _add_videos(bundle, index, more) -> None:
    """Another process updates the index while this one serves it (as in production): a subprocess."""
    result = run_cli_process("index", "--bundle", str(bundle), "--videos", str(more), "-o", str(index), "-q",
                             "--workers", "1")
    assert result.returncode == 0, result.stderr


def _check_complete(load: Load) -> set[int]:
    """Every answer is a 200 with every video of its snapshot ranked; returns the versions seen."""
    old = {f"clip{i}" for i in range(FIRST)}
    new = old | {f"clip{i}" for i in range(FIRST, FIRST + ADDED)}
    assert not load.errors, load.errors
    bad = [(a.status, a.body) for a in load.all if a.status != 200]
    assert not bad, bad[:3]
    versions = set()
    for answer in load.all:
        body = answer.body
        snapshot = body["snapshot"]
        versions.add(snapshot["version"])
        expected = old if snapshot["version"] == 1 else new
        assert snapshot["videos"] == len(expected)
        assert len(body["results"]) == len(REQUEST["queries"])
        for query in body["results"]:
            ids = [hit["video_id"] for hit in query["results"]]
            assert set(ids) == expected and len(ids) == len(expected)
            assert [hit["rank"] for hit in query["results"]] == list(range(1, len(ids) + 1))
            for hit in query["results"]:
                assert set(hit["levels"]) == {"video_sentence", "frame_sentence", "patch_word"}
                assert hit["links"]["thumbnail"] and hit["entry"]["width"] == 64
    return versions


def test_reload_under_load_swaps_atomically(growing_index):
    bundle, index, more = growing_index
    _, app = open_app(index, max_wait_ms=2)
    with ServerThread(app) as server, Load(server.url) as load:
        load.wait_for(lambda: load.each_has(3), "answers before the update")
        _add_videos(bundle, index, more)  # while the clients keep querying the old snapshot
        reload_started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=60) as admin:
            reply = admin.post("/v1/admin/reload", json={})
        reload_done = time.monotonic()
        assert reply.status_code == 200, reply.text
        assert reply.json()["snapshot"] == {**reply.json()["snapshot"], "version": 2, "videos": FIRST + ADDED}
        assert reply.json()["changed"] is True
        load.wait_for(lambda: load.each_has(3, after=reload_done), "answers after the reload")
    assert _check_complete(load) == {1, 2}
    for answer in load.all:
        if answer.started > reload_done:
            assert answer.body["snapshot"]["version"] == 2
        if answer.finished < reload_started:
            assert answer.body["snapshot"]["version"] == 1


def test_watch_reloads_by_itself(growing_index):
    bundle, index, more = growing_index
    _, app = open_app(index, watch=True, watch_interval_s=0.2)
    with ServerThread(app) as server, Load(server.url) as load:
        load.wait_for(lambda: load.each_has(2), "answers before the update")
        _add_videos(bundle, index, more)
        load.wait_for(lambda: any(a.body.get("snapshot", {}).get("version") == 2 for a in load.all),
                      "the watcher to swap in the new index")
        swapped = time.monotonic()
        load.wait_for(lambda: load.each_has(2, after=swapped), "answers after the swap")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            metrics = client.get("/metrics").text
    assert _check_complete(load) == {1, 2}
    assert 'ucofia_reloads_total{outcome="ok",trigger="watch"} 1.0' in metrics
    assert all(a.body["snapshot"]["version"] == 2 for a in load.all if a.started > swapped)


def test_compaction_under_an_old_snapshot_reloads_and_retries(growing_index, tmp_path):
    """Without --watch or a reload, a compaction deletes the shards the served snapshot reads
    (features not held in memory: --preload-mb 0): the next search opens the index again."""
    _, index, _ = growing_index
    _service, app = open_app(index, preload_mb=0)
    ids = tmp_path / "remove.txt"
    ids.write_text("clip1\n")
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.post("/v1/search", json=REQUEST).json()
        assert before["snapshot"]["version"] == 1 and before["snapshot"]["videos"] == FIRST
        for args in (("remove", "--index", str(index), "--ids", str(ids)), ("compact", "--index", str(index))):
            result = run_cli_process(*args)  # another process, as in production
            assert result.returncode == 0, result.stderr
        after = client.post("/v1/search", json=REQUEST)
        assert after.status_code == 200, after.text
        body = after.json()
        assert body["snapshot"]["version"] == 2 and body["snapshot"]["videos"] == FIRST - 1
        assert "clip1" not in {hit["video_id"] for q in body["results"] for hit in q["results"]}
        metrics = client.get("/metrics").text
    assert 'ucofia_reloads_total{outcome="ok",trigger="changed"} 1.0' in metrics


def test_watch_reloads_an_index_that_changed_before_it_started(growing_index):
    """A service opened before an update and started after it (a replica restarted during an
    indexing run) swaps the update in on the watcher's first look."""
    bundle, index, more = growing_index
    _, app = open_app(index, watch=True, watch_interval_s=0.2)
    _add_videos(bundle, index, more)  # after the snapshot was opened, before the app (and its watcher) starts
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.post("/v1/search", json=REQUEST).json()["snapshot"]["version"] < 2:
            time.sleep(0.1)
        assert client.post("/v1/search", json=REQUEST).json()["snapshot"]["version"] == 2
