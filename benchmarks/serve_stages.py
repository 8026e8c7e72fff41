"""Benchmark: where a batch of the search service spends its time, per stage and per query.

In one process (no HTTP), on an index of ``--videos`` synthetic ViT-B/32 videos (as
``benchmarks/serve.py`` builds them) and the service's own objects (``SearchService.open``: the
text encoder, the scorer, the snapshot, the responder), batches of 1, 8 and 32 one-query requests
run through the service's stages: tokenise, text encoder, search (``Searcher.search``: scoring
tiles, top-k, records) and the response body (``Responder``). Wall and CPU seconds (this
process, all its threads) per stage, divided by the batch's queries: what batching shares shows
as a lower cost per query at 32 than at 1. Variants of the text encoder's session run in
alternation, batch by batch, so that load changes on a shared machine hit all alike:

* ``spinning``: onnxruntime's default, idle intra-op threads spin between ops and after a run;
* ``sleeping``: ``session.intra_op.allow_spinning = 0`` (what ``runtime.text.TextEncoder`` uses).

Results are identical in both (checked); only time differs. With ``--int8`` a third variant,
``sleeping_int8``, is a second service opened with ``--scorer-precision int8`` (the search stage
changes; its top-10 ids are compared with float32's).

    .venv/bin/python benchmarks/serve_stages.py --bundle BUNDLE -o benchmarks/results/serve_stages_vit_b32.json
    .venv/bin/python benchmarks/serve_stages.py --config tiny --rounds 3    # quick
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from large_gallery import DEFAULT_VIDEOS_PER_TOPIC, build_index
from serve import export_bundle, queries

BATCHES = (1, 8, 32)
TOP_K = 10
STAGES = ("tokenize", "encode", "search", "body")


def run_batch(service, responder, encoder, texts: list[str]) -> tuple[dict[str, tuple[float, float]], list]:
    """(stage -> (wall s, CPU s)), and the records: one request per query, as the service batches them."""
    from runtime.scoring import TextFeatures
    from runtime.serve.engine import SearchJob

    engine, snapshot = service.engine, service.snapshot
    out, clock = {}, (time.perf_counter(), time.process_time())

    def lap(stage: str) -> None:
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        out[stage] = (now[0] - clock[0], now[1] - clock[1])
        clock = now

    tokens = engine.text.tokenize(texts, "query")
    lap("tokenize")
    features = encoder.encode_ids(tokens.ids)
    lap("encode")
    options = engine.options(SearchJob(queries=texts, top_k=TOP_K), snapshot.videos)
    answer = snapshot.searcher.search(TextFeatures(features.sentence, features.words), options)
    lap("search")
    for text, records in zip(texts, answer.results):  # one body per request, as the service answers
        responder._search_body({"mode": "exhaustive"}, [{"query": text, "results": records}], snapshot, "",
                                       None, {"timings": {}})
    lap("body")
    return out, answer.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=8, help="rounds; each runs every variant and batch size once")
    parser.add_argument("--threads", type=int, default=None, help="--threads of the service")
    parser.add_argument("--bundle", type=Path, default=None, help="reuse this exported bundle")
    parser.add_argument("--work", type=Path, default=None, help="keep the bundle and index here")
    parser.add_argument("--int8", action="store_true",
                        help="also a service with --scorer-precision int8 (CPUs with int8 units)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    common.show_library_output()
    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.serve.responses import Responder
    from runtime.serve.service import SearchService
    from runtime.serve.settings import ServeSettings
    from runtime.text import TextEncoder

    machine = common.machine({"server_threads": args.threads})
    monitor = common.CpuMonitor()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ucofia-serve-stages-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        bundle_dir = args.bundle or work / f"bundle_{args.config}"
        exported = {"reused": True} if args.bundle else export_bundle(args.config, bundle_dir)
        bundle = load_bundle(bundle_dir)
        index = work / f"index_{args.videos}"
        built = build_index(index, bundle, args.videos, 0, DEFAULT_VIDEOS_PER_TOPIC, "float32")
        service = SearchService.open(ServeSettings(index_dir=index, bundle_dir=bundle_dir, backend="cpu",
                                                   threads=args.threads))
        responder = Responder(service.signer)  # as the app makes it
        spinning = TextEncoder(bundle, "cpu", args.threads)
        spinning.session = open_session(bundle, "text_encoder", "cpu", args.threads, spinning=True)
        variants = {"spinning": (service, spinning), "sleeping": (service, service.engine.text)}
        if args.int8:
            lower = SearchService.open(ServeSettings(index_dir=index, bundle_dir=bundle_dir, backend="cpu",
                                                     threads=args.threads, scorer_precision="int8"))
            variants["sleeping_int8"] = (lower, lower.engine.text)
        texts = queries(4096, 0)
        times = {v: {b: {s: [] for s in STAGES} for b in BATCHES} for v in variants}
        same, overlap = True, []
        for owner, encoder in variants.values():  # unmeasured warm-up of every shape
            for b in BATCHES:
                run_batch(owner, responder, encoder, texts[:b])
        for r in range(args.rounds):
            print(f"[serve_stages] round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for b in BATCHES:
                batch = texts[(r * 64) % 4000:(r * 64) % 4000 + b]
                results = {}
                for variant, (owner, encoder) in variants.items():
                    stages, records = run_batch(owner, responder, encoder, batch)
                    results[variant] = records
                    for stage, value in stages.items():
                        times[variant][b][stage].append(value)
                same = same and results["spinning"] == results["sleeping"]
                if "sleeping_int8" in results:
                    overlap += [len({h["video_id"] for h in x} & {h["video_id"] for h in y}) / TOP_K
                                for x, y in zip(results["sleeping"], results["sleeping_int8"])]
    finally:
        if tmp is not None:
            tmp.cleanup()

    def summary(samples: list[tuple[float, float]], b: int) -> dict[str, float]:
        return {"wall_ms_per_query": round(statistics.median(w for w, _ in samples) * 1000 / b, 2),
                "cpu_ms_per_query": round(statistics.median(c for _, c in samples) * 1000 / b, 2)}

    stages = {v: {str(b): {s: summary(times[v][b][s], b) for s in STAGES} for b in BATCHES} for v in variants}
    for v in stages:
        for b in stages[v].values():
            b["total"] = {k: round(sum(b[s][k] for s in STAGES), 2) for k in ("wall_ms_per_query", "cpu_ms_per_query")}
    result = {
        "benchmark": "serve_stages", "config": args.config, "videos": args.videos, "index": built,
        "bundle": exported, "top_k": TOP_K, "rounds": args.rounds, "machine": machine,
        "load_average_after": common.load_average(),
        "contention": common.contention(monitor, common.available_cpus()),
        "identical_results_spinning_vs_sleeping": same,
        "int8_top10_overlap_with_float32": round(statistics.fmean(overlap), 4) if overlap else None,
        "medians_per_query": stages,
        "summary": [
            f"{v}, batch {b}: " + ", ".join(f"{s} {stages[v][str(b)][s]['wall_ms_per_query']:.1f} ms "
                                            f"({stages[v][str(b)][s]['cpu_ms_per_query']:.1f} CPU)"
                                            for s in (*STAGES, "total")) + " per query"
            for v in stages for b in BATCHES],
    }
    common.write_summarised(args.output, result)


if __name__ == "__main__":
    main()
