"""/healthz keeps answering while big answers are made (issue 23, item 8).

32 clients (benchmarks/search_load.py, a process of its own, at the lowest CPU priority: it stands
for clients on other machines) ask a real `ucofia-run serve` for 64 queries x top 100 over a
120-video index in a loop (bounded in count and time) -- answers of about 3 MB each -- while this
process asks /healthz every 10 ms on a connection of its own. Every probe and every answer is a
200, the answers are whole, and the probes keep being answered while the load runs (the answers
are built and encoded off the event loop, query by query, and written in chunks).

How fast /healthz stays is a latency, measured by benchmarks/serve_healthz.py (idle vs under this
load, side by side), not asserted here: this machine is shared.
"""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")

from data_paths import REPO_ROOT
from serve_helpers import ServeProcess, build_index

from runtime.bundle import load_bundle
from runtime.index import GalleryIndex, IndexWriter

pytestmark = pytest.mark.slow  # a load of ~30 s by design

VIDEOS = 120
CLIENTS, REQUESTS, LOAD_S = 32, 6, 40.0
QUERIES, TOP_K = 64, 100
PROBE_EVERY_S = 0.01
MIN_PROBES = 100
LOAD_SCRIPT = REPO_ROOT / "benchmarks" / "search_load.py"


@pytest.fixture(scope="module")
def big_index(fake_bundle, tmp_path_factory):
    """5 clips indexed, then copies of their rows up to VIDEOS (distinct ids, same features)."""
    bundle, _, index = build_index(tmp_path_factory.mktemp("serve_load"), clips=5, bundle=fake_bundle)
    gallery = GalleryIndex(index)
    rows = gallery.features(0, 5, roles=("video", "frame_features", "patches", "video_mask"))
    extra = VIDEOS - 5
    copies = {role: np.concatenate([value] * (extra // 5 + 1))[:extra] for role, value in rows.items()}
    entries = [{**gallery.entry(f"clip{i % 5}"), "id": f"copy{i}"} for i in range(extra)]
    with IndexWriter(index, load_bundle(bundle)) as writer:
        writer.add_batch([e["id"] for e in entries], copies, entries)
    return index


def _probe(connection: http.client.HTTPConnection, answered: list[float]) -> None:
    connection.request("GET", "/healthz")
    reply = connection.getresponse()
    assert reply.status == 200 and json.loads(reply.read())["status"] == "ok"
    answered.append(time.monotonic())
    time.sleep(PROBE_EVERY_S)


def test_healthz_answers_while_32_clients_ask_for_64_x_100(big_index):
    with ServeProcess("--index", str(big_index), "--no-access-log") as server:
        host, port = server.address
        probe = http.client.HTTPConnection(host, port, timeout=30)
        load = subprocess.Popen(["nice", "-n", "19", sys.executable, str(LOAD_SCRIPT), server.url, str(CLIENTS),
                                 str(REQUESTS), str(LOAD_S), str(QUERIES), str(TOP_K)], stdout=subprocess.PIPE,
                                text=True)
        answered: list[float] = []
        try:
            time.sleep(1.0)  # the load is under way
            started = time.monotonic()
            deadline = started + LOAD_S + 30
            while load.poll() is None and time.monotonic() < deadline:
                _probe(probe, answered)
            load_ended = time.monotonic()
            summary = json.loads(load.communicate(timeout=60)[0])
        finally:
            probe.close()
            if load.poll() is None:
                load.kill()
    report = f"{len(answered)} /healthz probes answered during the load; load: {summary}"
    print(report)
    assert summary["statuses"] == {"200": summary["requests"]} and summary["requests"] >= CLIENTS, report
    assert summary["min_bytes"] > 1_000_000, report  # 64 x 100 results with their entries and links
    # answered all along, not only once the load ended: probes in each half of the load
    middle = (started + load_ended) / 2
    assert sum(t < middle for t in answered) >= MIN_PROBES // 2, report
    assert sum(t >= middle for t in answered) >= 1, report
