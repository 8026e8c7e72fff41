"""/healthz stays fast while big answers are made (issue 23, item 8).

32 clients (tests/helpers/serve_load.py, a process of its own, at the lowest CPU priority: it
stands for clients on other machines) ask a real `ucofia-run serve` for 64 queries x top 100 over
a 120-video index in a loop (bounded in count and time) -- answers of about 3 MB each -- while this
process asks /healthz every 10 ms on a connection of its own: the 99th percentile of its latency
stays under 20 ms (the answers are built and encoded off the event loop, query by query, and written
in chunks).

A latency bound means nothing on a machine that is already busy: when /healthz alone (before the
load) has a p99 over IDLE_P99_LIMIT_MS, the test skips and says so with the numbers.
"""
from __future__ import annotations

import http.client
import json
import os
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
P99_LIMIT_MS = 20.0
IDLE_P99_LIMIT_MS = 5.0
LOAD_SCRIPT = REPO_ROOT / "tests" / "helpers" / "serve_load.py"


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


def _probe(connection: http.client.HTTPConnection, latencies: list[float]) -> None:
    start = time.perf_counter()
    connection.request("GET", "/healthz")
    reply = connection.getresponse()
    reply.read()
    latencies.append((time.perf_counter() - start) * 1000)
    assert reply.status == 200
    time.sleep(PROBE_EVERY_S)


def test_healthz_p99_under_20_ms_while_32_clients_ask_for_64_x_100(big_index):
    with ServeProcess("--index", str(big_index), "--no-access-log") as server:
        host, port = server.address
        probe = http.client.HTTPConnection(host, port, timeout=10)
        idle: list[float] = []
        for _ in range(MIN_PROBES):
            _probe(probe, idle)
        idle_p99 = float(np.percentile(idle, 99))
        if idle_p99 > IDLE_P99_LIMIT_MS:
            probe.close()
            pytest.skip(f"this machine is too busy to measure a latency bound: /healthz alone has a p99 of "
                        f"{idle_p99:.1f} ms (over {IDLE_P99_LIMIT_MS} ms; load average {os.getloadavg()[0]:.1f} on "
                        f"{os.cpu_count()} cores)")
        load = subprocess.Popen(["nice", "-n", "19", sys.executable, str(LOAD_SCRIPT), server.url, str(CLIENTS),
                                 str(REQUESTS), str(LOAD_S), str(QUERIES), str(TOP_K)], stdout=subprocess.PIPE,
                                text=True)
        latencies: list[float] = []
        try:
            time.sleep(1.0)  # the load is under way
            deadline = time.monotonic() + LOAD_S + 30
            while load.poll() is None and time.monotonic() < deadline:
                _probe(probe, latencies)
            summary = json.loads(load.communicate(timeout=60)[0])
        finally:
            probe.close()
            if load.poll() is None:
                load.kill()
    p50, p99 = np.percentile(latencies, [50, 99])
    report = (f"/healthz over {len(latencies)} probes: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms;"
              f" load: {summary}")
    print(report)
    assert summary["statuses"] == {"200": summary["requests"]} and summary["requests"] >= CLIENTS, report
    assert summary["min_bytes"] > 1_000_000, report  # 64 x 100 results with their entries and links
    assert len(latencies) >= MIN_PROBES, report
    assert p99 < P99_LIMIT_MS, report
