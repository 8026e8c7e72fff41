"""Benchmark: ``/healthz`` latency of ``ucofia-run serve`` idle vs while big answers are made.

An exported bundle of the model with random weights (``--config``, tiny by default) and a
synthetic index of ``--videos`` videos (as ``large_gallery.py`` writes them). One server on
127.0.0.1; a probe asks ``/healthz`` every 10 ms on its own kept-alive connection, first alone
(``--probes`` probes), then while ``search_load.py`` (its own process, at the lowest CPU priority:
clients on other machines) has 32 clients asking for 64 queries x top 100 -- answers of megabytes
-- bounded in requests and time. Printed side by side: p50 / p99 / max of both, their ratio, the
load's statuses and answer sizes. The service builds and encodes answers off the event loop, query
by query, and writes them in chunks, so the health check should stay in milliseconds.

    .venv/bin/python benchmarks/serve_healthz.py -o benchmarks/results/serve_healthz.json
"""
from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from large_gallery import build_index
from serve import Server, export_bundle

LOAD_SCRIPT = Path(__file__).resolve().parent / "search_load.py"
PROBE_EVERY_S = 0.01
PROBE_TIMEOUT_S = 30


def probe(connection: http.client.HTTPConnection) -> float:
    """Seconds for one /healthz answer (200 or an error)."""
    start = time.perf_counter()
    connection.request("GET", "/healthz")
    reply = connection.getresponse()
    reply.read()
    if reply.status != 200:
        raise SystemExit(f"/healthz answered {reply.status}")
    return time.perf_counter() - start


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"probes": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", help="model config of the bundle (common.config)")
    parser.add_argument("--videos", type=int, default=120, help="videos in the synthetic index")
    parser.add_argument("--probes", type=int, default=300, help="idle probes before the load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=6, help="requests per client (bounded)")
    parser.add_argument("--load-s", type=float, default=40.0, help="the load stops after this many seconds")
    parser.add_argument("--queries", type=int, default=64, help="queries per request")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None, help="keep bundle and index here (reused)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args()
    from runtime.bundle import load_bundle

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        bundle_dir = work / f"bundle_{args.config}"
        export_bundle(args.config, bundle_dir)
        index = work / f"index_{args.videos}"
        build_index(index, load_bundle(bundle_dir), args.videos, seed=0, per_topic=10, store="float32")
        machine_before = common.machine()
        server = Server(index, bundle_dir, [], threads=None)
        try:
            host, port = server.url.removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=PROBE_TIMEOUT_S)
            idle = []
            for _ in range(args.probes):
                idle.append(probe(connection))
                time.sleep(PROBE_EVERY_S)
            load = subprocess.Popen(["nice", "-n", "19", sys.executable, str(LOAD_SCRIPT), server.url,
                                     str(args.clients), str(args.requests), str(args.load_s), str(args.queries),
                                     str(args.top_k)], stdout=subprocess.PIPE, text=True)
            loaded = []
            try:
                time.sleep(1.0)  # the load is under way
                deadline = time.monotonic() + args.load_s + 30
                while load.poll() is None and time.monotonic() < deadline:
                    loaded.append(probe(connection))
                    time.sleep(PROBE_EVERY_S)
                load_summary = json.loads(load.communicate(timeout=60)[0])
            finally:
                if load.poll() is None:
                    load.kill()
            connection.close()
        finally:
            server.stop()
    result = {"benchmark": "serve_healthz", "config": args.config, "videos": args.videos,
              "load": {"clients": args.clients, "queries": args.queries, "top_k": args.top_k, **load_summary},
              "idle": summary(idle), "under_load": summary(loaded), "machine": machine_before}
    ratio = result["under_load"]["p99_ms"] / max(result["idle"]["p99_ms"], 1e-6)
    result["p99_ratio_loaded_over_idle"] = round(ratio, 2)
    print(f"{'':12}{'probes':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name in ("idle", "under_load"):
        row = result[name]
        print(f"{name:12}{row['probes']:>8}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['max_ms']:>10}")
    print(f"p99 under load / idle: {ratio:.1f}x; load: {load_summary}")
    common.write_result(args.output, result)


if __name__ == "__main__":
    main()
