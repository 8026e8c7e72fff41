"""Benchmark: ``ucofia-run serve`` vs ``ucofia-run serve --ray`` with 1 and 2 shards, and a model
of 10^7 and 10^8 videos on N nodes from the measured costs.

ViT-B/32 geometry (random weights, an exported bundle), synthetic galleries written as real
indexes (``large_gallery.build_index``). Everything that starts Ray runs inside a network + PID
namespace (``unshare -n -p -f --mount-proc``, only loopback up), the one-process server with it:
for each Ray layout the two servers are up together and measured in alternation under 1, 8 and
32 clients (loopback HTTP, one query per request, top 10): QPS, p50/p99, errors, and the CPU
seconds per request of every process kind (the one-process server; the proxy, the ingress,
the shards). Ray's per-request overhead is the p50 difference at one client. Target (issue 25):
``--ray`` with 1 shard at least 0.7x the one process's QPS. The model (``model``) scales the
measured per-row scoring costs and per-request overheads to 10^7 and 10^8 videos.

    .venv/bin/python benchmarks/serve_ray.py --work /tmp/ucofia-serve-ray -o benchmarks/results/serve_ray.json
    .venv/bin/python benchmarks/serve_ray.py --config tiny --sizes 2000 --duration-s 3   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

sys.path.insert(0, str(common.REPO))  # the checkout's runtime, whatever is installed
from large_gallery import DEFAULT_VIDEOS_PER_TOPIC, build_index
from serve import CLIENTS, Server, export_bundle, measure, queries

NAMESPACE = ('ip link set lo up || exit 97; mkdir -p /tmp/ray /tmp/haproxy-serve && mount -t tmpfs ucofia-ray /tmp/ray '
             '&& mount -t tmpfs ucofia-haproxy /tmp/haproxy-serve || exit 96; "$@"')
STORE = "float16"
LAYOUTS = {"ray_1_shard": 1, "ray_2_shards": 2}
# the model: a node of 16 cores and 128 GiB, of which this share holds index pages
NODE_CORES, NODE_MEMORY_GIB, PAGE_CACHE_SHARE = 16, 128, 0.75
ROW_BYTES = {"int8": 32_000, "float16": 62_500}  # ViT-B/32 (docs/index-format.md)
MODEL_SIZES = (10**7, 10**8)


def process_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of the processes of each kind in this PID namespace."""
    # the proxy: Ray's (ProxyActor), or HAProxy with the Ray actor that manages it
    kinds = {"single": ("runtime.cli serve",), "proxy": ("ProxyActor", "HAProxyManager", "bin/haproxy "),
             "ingress": ("ServeReplica:ucofia:ingress",), "shards": ("ServeReplica:ucofia:shard-",)}
    ticks = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(kinds, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for kind, markers in kinds.items():
            if any(m in title for m in markers) and ("--ray" not in title or kind != "single"):
                out[kind] += (int(fields[11]) + int(fields[12])) / ticks
    return out


def measured(server: Server, clients: int, args, texts, label: str) -> dict:
    before = process_cpu_seconds()
    run = measure(server, clients, args, texts, label)
    after = process_cpu_seconds()
    requests = max(run["requests"], 1)
    run["cpu_ms_per_request"] = {k: round(1000 * (after[k] - before[k]) / requests, 2) for k in after
                                 if after[k] > before[k]}
    return run


def inner(spec: dict) -> None:
    """Inside the namespace: the one-process server and one Ray layout at a time, alternating."""
    args = argparse.Namespace(**spec["args"])
    index, bundle = Path(spec["index"]), Path(spec["bundle"])
    texts = queries(400, args.seed)
    threads = ["--threads", str(args.threads)] if args.threads else []
    result: dict = {"layouts": {}}
    single = Server(index, bundle, [*threads], None)
    try:
        for number, (layout, shards) in enumerate(LAYOUTS.items()):
            print(f"[serve_ray] starting {layout} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            ray = Server(index, bundle, ["--ray", "--shards", str(shards), "--replica-cpus", "0.1",
                                         "--ray-proxy", args.ray_proxy, *threads], None)
            runs: dict = {"start_seconds": round(time.monotonic() - started, 1), "single": [], "ray": []}
            try:
                for clients in args.clients:
                    order = [("single", single), ("ray", ray)]
                    if (clients + number) % 2:
                        order.reverse()
                    for name, server in order:
                        runs[name].append(measured(server, clients, args, texts, f"{layout}: {name}"))
            finally:
                ray.stop()
            result["layouts"][layout] = runs
    finally:
        single.stop()
    Path(spec["out"]).write_text(json.dumps(result))


def merge_cost_ms(shards: int, queries_n: int = 32, k: int = 10, repeats: int = 20) -> float:
    """Milliseconds the ingress takes to merge ``shards`` answers of ``k`` rows for ``queries_n`` queries."""
    import numpy as np

    from runtime.cluster.merge import merge_hits
    from runtime.scoring import LEVELS, TopK
    from runtime.search.searcher import Hits

    rng = np.random.default_rng(0)
    parts = [Hits(TopK(rng.integers(0, 10**7, (queries_n, k)), rng.standard_normal((queries_n, k), np.float32),
                       {lv: rng.standard_normal((queries_n, k), np.float32) for lv in LEVELS}), None, False, None)
             for _ in range(shards)]
    start = time.perf_counter()
    for _ in range(repeats):
        merge_hits(parts, k)
    return round(1000 * (time.perf_counter() - start) / repeats, 3)


def model(sizes: list[dict], merges: dict[int, float]) -> dict:
    """10^7 and 10^8 videos on nodes of NODE_CORES cores and NODE_MEMORY_GIB GiB (one shard per node,
    its rows in the page cache), from the costs measured on the largest gallery at one client:

    * shard CPU per query with 1 shard (``base``) and what each further shard adds (``per_shard``:
      2 shards minus 1; its own stage 1 over its rows and a call's overhead; the re-rank of the
      global shortlist is split among the shards, so it is in ``base`` once);
    * the ingress's and Ray proxy's CPU per query (text encoding, HTTP, fan-out, merge);
    * Ray's latency overhead (p50 at one client, ``--ray`` 1 shard minus one process).

    A cluster of N shard nodes (each shard on its own node, R replicas of each on R times as many
    nodes) answers ``R * N * cores * 1000 / (base + per_shard * (N - 1))`` queries a second when the
    shards are the bound; the ingress then needs ``QPS * ingress_ms / 1000`` cores."""
    largest = sizes[-1]
    at_one = {layout: {name: runs[name][0] for name in ("single", "ray")}
              for layout, runs in largest["layouts"].items()}
    cpu = {layout: runs["ray"].get("cpu_ms_per_request", {}) for layout, runs in at_one.items()}
    base = cpu["ray_1_shard"].get("shards") or 0.0
    per_shard = max((cpu["ray_2_shards"].get("shards") or base) - base, 0.0)
    ingress_ms = (cpu["ray_1_shard"].get("ingress") or 0.0) + (cpu["ray_1_shard"].get("proxy") or 0.0)
    overhead_ms = at_one["ray_1_shard"]["ray"]["p50_ms"] - at_one["ray_1_shard"]["single"]["p50_ms"]
    rows_per_node = {store: int(NODE_MEMORY_GIB * 2**30 * PAGE_CACHE_SHARE / b) for store, b in ROW_BYTES.items()}
    out: dict = {"assumptions": {"node_cores": NODE_CORES, "node_memory_gib": NODE_MEMORY_GIB,
                                 "page_cache_share": PAGE_CACHE_SHARE, "row_bytes": ROW_BYTES,
                                 "measured_at_videos": largest["gallery"], "mode": largest["mode"]},
                 "measured": {"shard_cpu_ms_per_query_1_shard": round(base, 1),
                              "shard_cpu_ms_per_query_per_extra_shard": round(per_shard, 1),
                              "ingress_and_proxy_cpu_ms_per_query": round(ingress_ms, 1),
                              "ray_overhead_p50_ms": round(overhead_ms, 1), "merge_ms_32_queries": merges},
                 "sizes": {}}
    for n in MODEL_SIZES:
        for store, per_node in rows_per_node.items():
            nodes = -(-n // per_node)
            cpu_per_query = base + per_shard * (nodes - 1)
            qps = nodes * NODE_CORES * 1000 / cpu_per_query if cpu_per_query else None
            merge = merges[min(merges, key=lambda s: abs(s - nodes))]
            out["sizes"][f"{n:.0e}_{store}"] = {
                "shard_nodes": nodes, "rows_per_shard": -(-n // nodes),
                "shard_cpu_ms_per_query": round(cpu_per_query, 1),
                "qps_per_replica_set": round(qps, 1) if qps else None,
                "ingress_cores_per_replica_set": round(qps * ingress_ms / 1000, 1) if qps else None,
                "merge_ms_per_batch_of_32": merge}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds per (server, clients)")
    parser.add_argument("--threads", type=int, default=None, help="--threads of every server process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-proxy", choices=["haproxy", "ray"], default="haproxy",
                        help="the proxy in front of the ingress replicas (serve --ray-proxy; haproxy is its default)")
    parser.add_argument("--work", type=Path, default=None, help="keep the bundle and indexes here (reused)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    if args.inner:
        inner(json.loads(args.inner))
        return
    common.show_library_output()
    machine = common.machine({"server_threads": args.threads})
    monitor = common.CpuMonitor()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ucofia-serve-ray-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    from runtime.bundle import load_bundle
    from runtime.serve.settings import TWO_STAGE_AUTO_MIN_VIDEOS

    bundle_dir = work / f"bundle_{args.config}"
    exported = export_bundle(args.config, bundle_dir)
    sizes = []
    for n in args.sizes:
        index = work / f"index_{n}"
        built = build_index(index, load_bundle(bundle_dir), n, args.seed, DEFAULT_VIDEOS_PER_TOPIC, STORE)
        out = work / f"inner_{n}.json"
        spec = {"args": {k: v for k, v in vars(args).items() if k not in ("output", "work", "inner")},
                "index": str(index), "bundle": str(bundle_dir), "out": str(out)}
        env = dict(os.environ, PYTHONPATH=str(common.REPO))
        cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", NAMESPACE, "sh", sys.executable,
               str(Path(__file__).resolve()), "--inner", json.dumps(spec)]
        done = subprocess.run(cmd, env=env, cwd=common.REPO, timeout=3600)
        if done.returncode != 0 or not out.is_file():
            raise SystemExit(f"the measurement of {n} videos failed (exit {done.returncode})")
        measured_runs = json.loads(out.read_text())
        entry = {"gallery": n, "index": built, "store": STORE,
                 "mode": "two_stage" if n >= TWO_STAGE_AUTO_MIN_VIDEOS else "exhaustive", **measured_runs}
        ratios = {}
        for layout, runs in measured_runs["layouts"].items():
            for single, ray in zip(runs["single"], runs["ray"]):
                ratios[f"{layout}_qps_over_single_at_{single['clients']}_clients"] = \
                    round(ray["qps"] / single["qps"], 2) if single["qps"] else None
            overhead = runs["ray"][0]["p50_ms"] - runs["single"][0]["p50_ms"]
            ratios[f"{layout}_overhead_p50_ms_at_1_client"] = round(overhead, 2)
        entry["ratios"] = ratios
        sizes.append(entry)
        print(json.dumps(ratios, indent=1), file=sys.stderr, flush=True)
    merges = {s: merge_cost_ms(s) for s in (2, 8, 32, 128)}
    result = {"benchmark": "serve_ray", "config": args.config, "ray_proxy": args.ray_proxy, "machine": machine,
              "contention": common.contention(monitor, args.threads or 2), "load_average_after": common.load_average(),
              "bundle": exported, "sizes": sizes, "model": model(sizes, merges),
              "target": "--ray with 1 shard >= 0.7x the one-process QPS (issue 25)"}
    common.write_result(args.output, result)
    print(json.dumps({s["gallery"]: s["ratios"] for s in sizes}, indent=1))


if __name__ == "__main__":
    main()
