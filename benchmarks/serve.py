"""Benchmark: ``ucofia-run serve`` under load vs a cold ``ucofia-run search`` process per query.

ViT-B/32 geometry with random weights (an exported bundle: text encoder + scorer are what search
runs), synthetic galleries of 10^3 and 10^5 videos written as real indexes (features as in
``large_gallery.py``). Side by side, one gallery at a time:

* cold CLI: one ``ucofia-run search`` process per query (loads the sessions and opens the index
  every time), the same search mode the server picks for that gallery;
* the service with ``--max-batch 1`` (no batching: one query per model call);
* the service with dynamic batching (``--max-batch 32 --max-wait-ms 5``),

each under 1, 8 and 32 concurrent clients (loopback HTTP, one query per request, top 10):
QPS, latency p50/p95/p99, errors, server RSS, mean batch size. Then a soak: the batching server
under 8 clients for ``--soak-s`` seconds (10 minutes by default), RSS sampled every 10 s.
Targets (issue 12): warm single-query latency >= 20x lower than the cold CLI; at 32 clients
batching >= 2x the QPS of --max-batch 1 with no worse p99; zero errors; RSS growth < 5 % over
the soak. Every load loop is bounded in time and count; servers listen on 127.0.0.1 only.

    .venv/bin/python benchmarks/serve.py --work /tmp/ucofia-serve-bench -o benchmarks/results/serve_vit_b32.json
    .venv/bin/python benchmarks/serve.py --config tiny --sizes 1000 --duration-s 5 --soak-s 20   # quick
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from large_gallery import DEFAULT_VIDEOS_PER_TOPIC, build_index

CLIENTS = (1, 8, 32)
TOP_K = 10
STORE = "float32"  # the index's stored dtype (`ucofia-run index --store`)
MAX_REQUESTS_PER_RUN = 20_000
START_TIMEOUT_S = 600
SOAK_CLIENTS = 8
SOAK_SAMPLE_S = 10
SOAK_WARMUP_S = 60
CONFIGS = {"max_batch_1": ["--max-batch", "1"], "batching": ["--max-batch", "32", "--max-wait-ms", "5"]}
WORDS = (["a", "the", "two", "some", "an old", "a young"],
         ["dog", "man", "woman", "car", "cat", "child", "band", "chef", "player", "bird"],
         ["runs", "sings", "cooks", "drives", "jumps", "talks", "dances", "plays football", "swims", "reads"],
         ["on a beach", "in a kitchen", "on stage", "in the rain", "at night", "in a park", "on the road",
          "in a classroom", "under water", "in the snow"])


def queries(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(str(rng.choice(part)) for part in WORDS) + f" number {i}" for i in range(n)]


def proc_rss_mib(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process (MiB)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    q = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(q[0]), 2), "p95_ms": round(float(q[1]), 2), "p99_ms": round(float(q[2]), 2)}


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``ucofia-run serve`` subprocess on 127.0.0.1 (free port)."""

    def __init__(self, index: Path, bundle: Path, extra: list[str], threads: int | None,
                 precision: str = "float32") -> None:
        port = _free_port()
        cmd = [sys.executable, "-m", "runtime.cli", "serve", "--index", str(index), "--bundle", str(bundle),
               "--port", str(port), "--backend", "cpu", "--no-access-log", "--log-level", "warning",
               "--scorer-precision", precision, *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=common.REPO)
        self.log: list[str] = []
        self.url = f"http://127.0.0.1:{port}"

        def read() -> None:  # keeps the pipe drained; the lines explain a failed start
            assert self.proc.stderr is not None
            self.log.extend(iter(self.proc.stderr.readline, ""))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        import httpx

        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not become ready:\n" + "".join(self.log))
            time.sleep(0.2)

    def rss(self) -> dict[str, float]:
        return proc_rss_mib(self.proc.pid)

    def batch_totals(self) -> tuple[float, float]:
        """(queries, model calls) so far, from the server's /metrics."""
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=60).text
        total = re.search(r"^ucofia_batch_queries_sum ([0-9.e+]+)$", text, re.M)
        count = re.search(r"^ucofia_batch_queries_count ([0-9.e+]+)$", text, re.M)
        return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: graceful shutdown
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _load(url: str, clients: int, duration_s: float, texts: list[str], max_requests: int,
                on_tick=None) -> dict:
    import httpx

    latencies: list[float] = []
    stages: list[tuple[float, ...]] = []  # per answered request: the server's timings and batch size
    errors: Counter = Counter()
    sent = 0
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = loop.time()
        stop_at = start + duration_s

        async def worker(number: int) -> None:
            nonlocal sent
            while loop.time() < stop_at and sent < max_requests:
                text = texts[(sent * 7 + number) % len(texts)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    reply = await client.post("/v1/search", json={"queries": [text], "top_k": TOP_K})
                    body = reply.json() if reply.status_code == 200 else {}
                    ok = reply.status_code == 200 and len(body["results"][0]["results"]) == TOP_K
                    key = "incomplete" if reply.status_code == 200 else reply.status_code
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    t = body["timings"]
                    stages.append((latencies[-1] * 1000, t["queue_ms"], t["encode_ms"], t["score_ms"], t["total_ms"],
                                   body["batch"]["queries"]))
                else:
                    errors[str(key)] += 1

        async def ticker() -> None:
            while loop.time() < stop_at and on_tick is not None:
                await asyncio.sleep(SOAK_SAMPLE_S)
                on_tick(loop.time() - start)

        tasks = [asyncio.create_task(worker(i)) for i in range(clients)]
        tick = asyncio.create_task(ticker())
        await asyncio.gather(*tasks)
        tick.cancel()
        elapsed = loop.time() - start
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies) + sum(errors.values()),
            "qps": round(len(latencies) / elapsed, 2), **percentiles(latencies),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
            "stages": stage_means(stages), "errors": dict(errors)}


def stage_means(stages: list[tuple[float, ...]]) -> dict | None:
    """Where a request's time went, means over the answered requests (ms): waiting for its batch,
    the batch's text encoding and search (scoring, top-k, records), the rest of the server's time
    until the answer was ready to encode (thread hand-over), and what the server's ``total_ms``
    does not cover (encoding the body, HTTP, the client's parsing); and the model time per query
    (a batch's encode and search divided by its queries), which batching must shrink to pay off."""
    if not stages:
        return None
    client, queue, encode, score, total, size = (np.asarray(column) for column in zip(*stages))
    return {"queue_ms": round(float(queue.mean()), 2), "encode_ms": round(float(encode.mean()), 2),
            "search_ms": round(float(score.mean()), 2),
            "server_other_ms": round(float((total - queue - encode - score).mean()), 2),
            "body_http_client_ms": round(float((client - total).mean()), 2),
            "batch_queries": round(float(size.mean()), 2),
            "encode_ms_per_query": round(float((encode / size).mean()), 2),
            "search_ms_per_query": round(float((score / size).mean()), 2)}


def load(url: str, clients: int, duration_s: float, texts: list[str], on_tick=None) -> dict:
    return asyncio.run(_load(url, clients, duration_s, texts, MAX_REQUESTS_PER_RUN, on_tick))


def cold_cli(index: Path, bundle: Path, texts: list[str], two_stage: bool, shortlist: int, threads: int | None,
             precision: str = "float32") -> dict:
    """Wall time of one `ucofia-run search` process per query."""
    times = []
    for text in texts:
        cmd = [sys.executable, "-m", "runtime.cli", "search", "--index", str(index), "--bundle", str(bundle),
               "--query", text, "--top-k", str(TOP_K), "--backend", "cpu", "--scorer-precision", precision, "-o", "-"]
        if two_stage:
            cmd += ["--two-stage", "--shortlist", str(shortlist)]
        if threads:
            cmd += ["--threads", str(threads)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"ucofia-run search failed: {done.stderr}")
        assert len(json.loads(done.stdout.splitlines()[0])["results"]) == TOP_K
    return {"queries": len(texts), **percentiles(times), "mean_ms": round(statistics.fmean(times) * 1000, 1)}


def export_bundle(cfg_name: str, out: Path) -> dict:
    """A bundle of the model with random weights (reused when ``out`` holds one of that config)."""
    from runtime.bundle import load_bundle

    cfg = common.config(cfg_name)
    if (out / "manifest.json").is_file() and load_bundle(out).config.to_dict() == cfg.to_dict():
        return {"reused": True}
    from export import export_bundle as export

    start = time.perf_counter()
    model = common.random_model(cfg)
    manifest = export(model, out, force=True)
    return {"reused": False, "seconds": round(time.perf_counter() - start, 1),
            "verification_passed": manifest["verification"]["passed"]}


def measure(server: Server, clients: int, args, texts: list[str], label: str) -> dict:
    """One measured load run (after an unmeasured warm-up) with the run's own mean batch size."""
    print(f"[serve] {label}, {clients} clients, {args.duration_s} s ...", file=sys.stderr, flush=True)
    load(server.url, clients, min(args.duration_s, 5), texts)  # warm-up, not measured
    queries0, calls0 = server.batch_totals()
    run = load(server.url, clients, args.duration_s, texts)
    queries1, calls1 = server.batch_totals()
    run["mean_batch_queries"] = round((queries1 - queries0) / (calls1 - calls0), 2) if calls1 > calls0 else None
    run["server_rss_mib"] = server.rss()
    print(f"[serve]   {run['qps']} QPS, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, mean batch "
          f"{run['mean_batch_queries']}, errors {run['errors']}; stages {run['stages']}", file=sys.stderr, flush=True)
    return run


def run_gallery(n: int, args, work: Path, bundle_dir: Path, texts: list[str], reverse: bool) -> dict:
    """Cold CLI, then both servers up at once (they share the index's page cache), measured in
    alternation for every client count, the order flipping from one count to the next."""
    from runtime.bundle import load_bundle
    from runtime.serve.settings import DEFAULT_SHORTLIST, TWO_STAGE_AUTO_MIN_VIDEOS

    index = work / f"index_{n}"
    built = build_index(index, load_bundle(bundle_dir), n, args.seed, DEFAULT_VIDEOS_PER_TOPIC, STORE,
                        args.pool_shards)
    two_stage = n >= TWO_STAGE_AUTO_MIN_VIDEOS
    print(f"[serve] {n}: cold CLI x {args.cold_queries} ...", file=sys.stderr, flush=True)
    cold = cold_cli(index, bundle_dir, texts[:args.cold_queries], two_stage, DEFAULT_SHORTLIST, args.threads,
                    args.scorer_precision)
    servers: dict[str, Server] = {}
    try:
        for name, extra in CONFIGS.items():
            servers[name] = Server(index, bundle_dir, extra, args.threads, args.scorer_precision)
        services = {name: {"server_rss_at_start_mib": server.rss(), "runs": []} for name, server in servers.items()}
        order = list(CONFIGS)[::-1] if reverse else list(CONFIGS)
        for clients in args.clients:
            for name in order:
                services[name]["runs"].append(measure(servers[name], clients, args, texts, f"{n}: {name}"))
            order.reverse()
    finally:
        for server in servers.values():
            server.stop()
    by = {name: {r["clients"]: r for r in s["runs"]} for name, s in services.items()}
    one = by["batching"].get(1)
    top = max(args.clients)
    return {
        "gallery": n, "index": built, "mode": "two_stage" if two_stage else "exhaustive", "cold_cli": cold,
        "services": services,
        "warm_single_query_speedup_vs_cold_cli": round(cold["p50_ms"] / one["p50_ms"], 1) if one else None,
        "batching_qps_ratio_at_max_clients": round(by["batching"][top]["qps"] / by["max_batch_1"][top]["qps"], 2),
        "batching_p99_ratio_at_max_clients": round(by["batching"][top]["p99_ms"] / by["max_batch_1"][top]["p99_ms"],
                                                   2),
        "errors": {name: sum(sum(r["errors"].values()) for r in s["runs"]) for name, s in services.items()},
    }


def soak(n: int, args, work: Path, bundle_dir: Path, texts: list[str]) -> dict:
    print(f"[serve] soak: {n} videos, {SOAK_CLIENTS} clients, {args.soak_s} s ...", file=sys.stderr, flush=True)
    server = Server(work / f"index_{n}", bundle_dir, CONFIGS["batching"], args.threads, args.scorer_precision)
    samples = [{"t_s": 0.0, **server.rss()}]
    try:
        run = load(server.url, SOAK_CLIENTS, args.soak_s, texts,
                   on_tick=lambda t: samples.append({"t_s": round(t, 1), **server.rss()}))
        samples.append({"t_s": run["seconds"], **server.rss()})
    finally:
        server.stop()
    after_warmup = next((s for s in samples if s["t_s"] >= min(SOAK_WARMUP_S, args.soak_s / 2)), samples[0])
    last = samples[-1]

    def growth(first: dict, key: str) -> float | None:
        return round(100 * (last[key] - first[key]) / first[key], 2) if first.get(key) else None

    return {"gallery": n, "clients": SOAK_CLIENTS, "run": run, "rss_samples_mib": samples,
            "rss_growth_percent_from_start": growth(samples[0], "VmRSS"),
            "rss_growth_percent_after_warmup": growth(after_warmup, "VmRSS"),
            "anon_rss_growth_percent_after_warmup": growth(after_warmup, "RssAnon"),
            "warmup_s": after_warmup["t_s"]}


def _per_query(gallery: dict, name: str) -> str:
    stages = gallery["services"][name]["runs"][-1]["stages"] or {}
    return f"{stages.get('encode_ms_per_query')} + {stages.get('search_ms_per_query')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per (config, clients)")
    parser.add_argument("--cold-queries", type=int, default=5, help="cold `ucofia-run search` processes per gallery")
    parser.add_argument("--soak-s", type=float, default=600.0, help="soak length (0: no soak)")
    parser.add_argument("--soak-size", type=int, default=None,
                        help="gallery of the soak (default: the smallest, whose features the server holds in memory: "
                             "its RSS then is the process's own memory, not page cache of memory-mapped shards)")
    parser.add_argument("--threads", type=int, default=None, help="--threads of the servers and CLI runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-shards", type=int, default=0,
                        help="generate only this many shards of each gallery in full and hard-link the rest to them "
                             "(large_gallery.py's time and disk saver: 4 keeps 10^5 videos at 2.5 GB on disk instead "
                             "of 12.5 GB; every row still has its own id and video vector); 0: all in full")
    parser.add_argument("--scorer-precision", choices=["float32", "int8"], default="float32",
                        help="--scorer-precision of the servers and CLI runs (int8: opt-in, CPUs with int8 units)")
    parser.add_argument("--bundle", type=Path, default=None, help="reuse this exported bundle")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the bundle and indexes here (reused by a later run); default: a temporary dir")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    common.show_library_output()

    machine = common.machine({"server_threads": args.threads})
    monitor = common.CpuMonitor()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ucofia-serve-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    texts = queries(4096, args.seed)
    try:
        bundle_dir = args.bundle or work / f"bundle_{args.config}"
        exported = {"reused": True} if args.bundle else export_bundle(args.config, bundle_dir)
        galleries = [run_gallery(n, args, work, bundle_dir, texts, reverse=i % 2 == 1)
                     for i, n in enumerate(args.sizes)]
        soaked = soak(args.soak_size or min(args.sizes), args, work, bundle_dir, texts) if args.soak_s > 0 else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    errors = {name: sum(g["errors"][name] for g in galleries) for name in CONFIGS}
    if soaked:
        errors["soak"] = sum(soaked["run"]["errors"].values())
    result = {
        "benchmark": "serve", "config": args.config, "machine": machine,
        "load_average_after": common.load_average(),
        "contention": common.contention(monitor, common.available_cpus()),
        "bundle": exported, "scorer_precision": args.scorer_precision, "top_k": TOP_K,
        "duration_s_per_run": args.duration_s, "configs": CONFIGS,
        "galleries": galleries, "soak": soaked,
        "targets": {
            "warm_vs_cold_at_least": 20, "batching_qps_ratio_at_least": 2, "batching_p99_ratio_at_most": 1.0,
            "errors": 0, "soak_rss_growth_percent_below": 5,
            "warm_vs_cold": [g["warm_single_query_speedup_vs_cold_cli"] for g in galleries],
            "batching_qps_ratio": [g["batching_qps_ratio_at_max_clients"] for g in galleries],
            "batching_p99_ratio": [g["batching_p99_ratio_at_max_clients"] for g in galleries],
            "errors_by_config": errors,
            "soak_rss_growth_percent": None if soaked is None else soaked["rss_growth_percent_after_warmup"],
            "soak_anon_rss_growth_percent": None if soaked is None else soaked["anon_rss_growth_percent_after_warmup"],
        },
        "summary": [
            f"{g['gallery']:>7} videos ({g['mode']}): cold CLI p50 {g['cold_cli']['p50_ms']:.0f} ms, warm p50 "
            f"{g['services']['batching']['runs'][0]['p50_ms']:.1f} ms ({g['warm_single_query_speedup_vs_cold_cli']}x); "
            + "; ".join(f"{c} clients: batching {b['qps']} QPS p99 {b['p99_ms']:.0f} ms vs max-batch 1 "
                        f"{m['qps']} QPS p99 {m['p99_ms']:.0f} ms"
                        for c, b, m in zip(args.clients, g["services"]["batching"]["runs"],
                                           g["services"]["max_batch_1"]["runs"]))
            for g in galleries] + [
            f"{g['gallery']:>7} videos, {max(args.clients)} clients, ms per query of model time (text encoder + "
            f"search): batching {_per_query(g, 'batching')} vs max-batch 1 {_per_query(g, 'max_batch_1')}"
            for g in galleries],
    }
    common.write_result(args.output, result)
    print("\n".join(result["summary"]), file=sys.stderr)


if __name__ == "__main__":
    main()
