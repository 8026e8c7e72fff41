"""Benchmark: what a search filter costs -- unfiltered vs filters keeping 1 % and 50 % of the rows.

A synthetic index (``large_gallery``'s topic-structured features, written with
``runtime.index.IndexWriter``; every row's metadata ``{"bucket": row % 100, "channel": ...}``) is
searched with the runtime's own ``Searcher`` (the one search path of ``ucofia-run search`` and the
service), one query at a time, in three ways per mode:

* unfiltered;
* ``{"bucket": 0}``: 1 % of the rows;
* ``{"bucket": {"$lt": 50}}``: 50 % of the rows.

Modes: exhaustive (a filter scores only the matching rows, read with ``gather``) and two-stage
(flat stage 1: FAISS restricted to the matching rows with an ``IDSelectorBitmap``, then the fused
re-rank of the shortlist); and the FAISS stage-1 search alone, with and without the filter's
selector. Also measured: building the metadata table (once per opened index) and evaluating each
filter to a row mask (every search). Default geometry ``tiny`` (D = 64, 12 frames,
48 patches: 10^5 rows are 0.8 GB as float16) so that a run takes a few minutes; ``--config vit_b32``
for the published geometry (6 GB, minutes per exhaustive query).

    .venv/bin/python benchmarks/filters.py -o benchmarks/results/filters_1e5_tiny.json
    .venv/bin/python benchmarks/filters.py --rows 5000 --queries 4   # quick
"""
from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import large_gallery

FILTERS = {"unfiltered": None, "1%": {"bucket": 0}, "50%": {"bucket": {"$lt": 50}}}
CHANNELS = ("news", "sport", "music", "film")


def build(root: Path, bundle, rows: int, seed: int, store: str) -> float:
    """Write ``rows`` synthetic videos with metadata into ``root``; returns seconds."""
    from runtime.index import IndexWriter

    cfg = bundle.config
    centres = large_gallery.topic_centres(-(-rows // large_gallery.DEFAULT_VIDEOS_PER_TOPIC), cfg.embed_dim, seed)
    start = time.perf_counter()
    with IndexWriter(root, bundle, store) as writer:
        for s0 in range(0, rows, large_gallery.SHARD):
            s1 = min(s0 + large_gallery.SHARD, rows)
            ids = [f"v{i:07d}" for i in range(s0, s1)]
            entries = [{"id": vid, "metadata": {"bucket": i % 100, "channel": CHANNELS[i % len(CHANNELS)]}}
                       for i, vid in zip(range(s0, s1), ids)]
            features = large_gallery.gallery_shard(centres, s0, s1, cfg, seed, large_gallery.DEFAULT_VIDEOS_PER_TOPIC)
            writer.add_batch(ids, features, entries)
            print(f"[filters] index: {s1}/{rows}", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def interleaved(searcher, queries, options: dict, n: int) -> dict[str, tuple[dict, list[list[str]]]]:
    """name -> (p50/p99 of ``n`` single-query searches, their result ids), the options taking turns
    query by query (so that a change of machine load hits every side alike)."""
    times: dict[str, list[float]] = {name: [] for name in options}
    ids: dict[str, list[list[str]]] = {name: [] for name in options}
    for i in range(n):
        for name, option in options.items():
            start = time.perf_counter()
            answer = searcher.search(queries.rows(i, i + 1), option)
            times[name].append(time.perf_counter() - start)
            ids[name].append([r["video_id"] for r in answer.results[0]])
    return {name: (large_gallery._percentiles(times[name]), ids[name]) for name in options}


def stage1_only(engine, queries, n: int, shortlist: int, mask) -> dict:
    """p50/p99 of the FAISS stage-1 search alone (with the filter's selector when ``mask`` is given)."""
    from runtime.search import stage1
    from runtime.search.two_stage import _normalise

    q = _normalise(queries.sentence[:n].astype(np.float64)) @ engine.kernel
    q = np.concatenate([q, np.ones((n, 1))], axis=1).astype(np.float32)
    times = []
    for i in range(n):
        start = time.perf_counter()
        if mask is None:
            engine.stage1_index.search(q[i:i + 1], shortlist)
        else:
            engine.stage1_index.search(q[i:i + 1], min(shortlist, int(mask.sum())),
                                       params=stage1.search_parameters(engine.params, shortlist, mask))
        times.append(time.perf_counter() - start)
    return large_gallery._percentiles(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--config", default="tiny", choices=("tiny", "vit_b32"))
    parser.add_argument("--store", default="float16")
    parser.add_argument("--queries", type=int, default=12, help="two-stage queries (one at a time)")
    parser.add_argument("--exhaustive-queries", type=int, default=4)
    parser.add_argument("--shortlist", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=common.available_cpus())
    parser.add_argument("--memory-mb", type=float, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="where the index is written (default: a temp dir)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    machine = common.machine({"scorer_concurrent_tiles": args.threads})
    monitor = common.CpuMonitor()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ucofia-filters-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        from runtime.backends import open_session
        from runtime.index import GalleryIndex
        from runtime.scoring import Scorer
        from runtime.search import Searcher, SearchOptions
        from runtime.search.filters import MetadataTable, parse_filter

        cfg = common.config(args.config)
        if not (work / "scorer.onnx").is_file():
            model = common.random_model(cfg)
            common.export_scorer(model, work / "scorer.onnx")
            del model
            gc.collect()
        bundle = common.scorer_bundle(work, cfg)
        scorer = Scorer(open_session(bundle, "scorer", "cpu", args.threads), cfg)
        root = work / "index"
        if root.exists():
            shutil.rmtree(root)
        build_s = build(root, bundle, args.rows, args.seed, args.store)
        index = GalleryIndex(root)
        centres = large_gallery.topic_centres(-(-args.rows // large_gallery.DEFAULT_VIDEOS_PER_TOPIC), cfg.embed_dim,
                                              args.seed)
        queries, _ = large_gallery.make_queries(centres, max(args.queries, args.exhaustive_queries), cfg,
                                                args.seed + 1)

        start = time.perf_counter()
        table = MetadataTable(index.entries)
        table_s = time.perf_counter() - start
        searcher = Searcher(scorer, index, memory_mb=args.memory_mb)
        searcher._table = table  # the table just measured: a Searcher makes the same one on first use
        engine = searcher.two_stage(searcher.stage1_params(SearchOptions(two_stage=True, stage1="flat")))  # once

        results: dict[str, dict] = {}
        parsed = {name: None if where is None else parse_filter(where) for name, where in FILTERS.items()}
        for name, where in FILTERS.items():
            entry: dict = {"filter": where, "matching_rows": len(index)}
            if where is not None:
                masks = []
                for _ in range(20):
                    start = time.perf_counter()
                    mask = table.mask(parsed[name])
                    masks.append(time.perf_counter() - start)
                entry.update(matching_rows=int(mask.sum()), mask=large_gallery._percentiles(masks))
            entry["stage1_flat_only"] = stage1_only(engine, queries, args.queries, args.shortlist,
                                                    None if where is None else table.mask(parsed[name]))
            results[name] = entry
        for mode, two_stage, n in (("exhaustive", False, args.exhaustive_queries),
                                   ("two_stage_flat", True, args.queries)):
            print(f"[filters] {mode}: {n} queries, each unfiltered and with each filter ...", file=sys.stderr,
                  flush=True)
            options = {name: SearchOptions(top_k=args.top_k, two_stage=two_stage, shortlist=args.shortlist,
                                           stage1="flat", where=where) for name, where in parsed.items()}
            for name, (timing, ids) in interleaved(searcher, queries, options, n).items():
                bound = {"1%": 1, "50%": 50}.get(name, 100)
                results[name][mode] = {**timing, "results_match_filter": all(int(v[1:]) % 100 < bound
                                                                             for q in ids for v in q)}
    finally:
        if tmp is not None:
            tmp.cleanup()

    base = results["unfiltered"]
    print(f"\n{args.rows} rows ({args.config}, {args.store}); p50 ms per query (ratio to unfiltered)")
    modes = ("exhaustive", "two_stage_flat", "stage1_flat_only")
    print(f"{'':12}{'mask':>10}" + "".join(f"{m:>24}" for m in modes))
    for name, entry in results.items():
        mask = f"{entry['mask']['p50_ms']:.2f}" if "mask" in entry else "-"
        cells = [f"{entry[m]['p50_ms']:.1f} ({entry[m]['p50_ms'] / base[m]['p50_ms']:.2f}x)" for m in modes]
        print(f"{name:12}{mask:>10}" + "".join(f"{c:>24}" for c in cells))
    print(f"metadata table (once per opened index): {table_s:.2f} s")
    common.write_result(args.output, {
        "benchmark": "filters", "config": args.config, "store": args.store, "rows": args.rows, "top_k": args.top_k,
        "shortlist": args.shortlist, "machine": machine, "contention": common.contention(monitor, args.threads),
        "build_seconds": round(build_s, 1), "metadata_table_seconds": round(table_s, 3), "results": results,
        "peak_rss_mib": round(common.peak_rss_mib(), 1)})


if __name__ == "__main__":
    main()
