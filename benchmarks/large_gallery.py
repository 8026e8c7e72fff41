"""Benchmark: exhaustive vs two-stage search (runtime/search.py) on large synthetic galleries.

Galleries of 10^4 and 10^5 entries with ViT-B/32-size features (video [D], 12 frames x D,
48 patches x D; D = 512; 125 KB per video, 12.5 GB at 10^5) are written as real indexes
(``runtime.index.IndexWriter``, memory-mapped .npy shards) and searched with the runtime's own
functions and a scorer graph exported from a random ViT-B/32-geometry model:

* exhaustive: ``search.exhaustive`` (all three levels for every query x video, tiled, top-k kept);
  queries are scored as one batch, the time per query is the batch time / queries. At 10^5 only a
  few queries are timed (``--exhaustive-queries``): it costs ~10^5 pair scores per query.
* two-stage: ``search.two_stage``: a FAISS inner-product shortlist over the video-sentence level,
  then the full three-level score re-ranks the shortlist. The one-time setup (reading the
  video-sentence kernel out of the graph, building the FAISS index; both cached in the index) is
  timed separately from the per-query cost.

Synthetic structure (so that agreement means something): videos belong to topics (10 videos per
topic by default, ``--videos-per-topic``); every feature of a video is its topic direction plus noise (video feature, frames,
patches, with more noise on the finer levels); each query is a noisy copy of one topic, so it has
about ten relevant videos of graded similarity and a long tail of unrelated ones. Agreement is
measured on the queries that also ran exhaustively: identical ordered top-10, identical top-10
set, and mean overlap of the two top-10 lists.

    .venv/bin/python benchmarks/large_gallery.py -o benchmarks/results/large_gallery_vit_b32.json
    .venv/bin/python benchmarks/large_gallery.py --sizes 2000 --queries 16 --exhaustive-queries 16  # quick
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
import common  # noqa: E402

DEFAULT_VIDEOS_PER_TOPIC = 10
SHARD = 2000
NOISE = {"topic": 0.6, "video": 0.3, "frames": 0.8, "patches": 1.5, "sentence": 0.3, "words": 1.0}
PATCH_SCALE = 2.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], d: int) -> np.ndarray:
    """Gaussian vectors of expected norm ~1 in dimension d."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(d ** -0.5)


def topic_centres(n_topics: int, d: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n_topics, d), dtype=np.float32))


def gallery_shard(centres: np.ndarray, start: int, stop: int, cfg, seed: int, per_topic: int) -> dict[str, np.ndarray]:
    """Features of videos [start, stop): video i belongs to topic i // per_topic."""
    rng = np.random.default_rng([seed, start])
    d, f, p = cfg.embed_dim, cfg.max_frames, cfg.num_pixels
    n = stop - start
    topics = np.arange(start, stop) // per_topic
    z = _unit(centres[topics] + NOISE["topic"] * _noise(rng, (n, d), d))
    return {
        "video": _unit(z + NOISE["video"] * _noise(rng, (n, d), d)),
        "frame_features": z[:, None, :] + NOISE["frames"] * _noise(rng, (n, f, d), d),
        "patches": PATCH_SCALE * (z[:, None, :] + NOISE["patches"] * _noise(rng, (n, p, d), d)),
        "video_mask": np.ones((n, f), np.float32),
    }


def make_queries(centres: np.ndarray, n: int, cfg, seed: int):
    """Raw text features of ``n`` queries, each a noisy copy of a random topic."""
    from runtime.scoring import TextFeatures

    rng = np.random.default_rng(seed)
    d, l = cfg.embed_dim, cfg.max_words
    topics = rng.integers(0, len(centres), n)
    y = _unit(centres[topics] + NOISE["topic"] * _noise(rng, (n, d), d))
    sentence = y + NOISE["sentence"] * _noise(rng, (n, d), d)
    words = y[:, None, :] + NOISE["words"] * _noise(rng, (n, l, d), d)
    return TextFeatures(sentence.astype(np.float32), words.astype(np.float32)), topics


def build_index(root: Path, bundle, n: int, seed: int, per_topic: int) -> dict:
    """Write an index of ``n`` synthetic videos (skipped when ``root`` already holds it)."""
    from runtime.index import GalleryIndex, IndexWriter

    marker = root / "synthetic.json"
    if marker.is_file() and (root / "index.json").is_file() and len(GalleryIndex(root)) == n and \
            marker.read_text() == f"{seed} {per_topic}":
        return {"reused": True}
    if root.exists():
        shutil.rmtree(root)
    cfg = bundle.config
    centres = topic_centres(-(-n // per_topic), cfg.embed_dim, seed)
    start = time.perf_counter()
    with IndexWriter(root, bundle) as writer:
        for s0 in range(0, n, SHARD):
            s1 = min(s0 + SHARD, n)
            writer.add_batch([f"v{i:07d}" for i in range(s0, s1)], gallery_shard(centres, s0, s1, cfg, seed, per_topic))
            print(f"[large_gallery] index {root.name}: {s1}/{n}", file=sys.stderr, flush=True)
    marker.write_text(f"{seed} {per_topic}")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"reused": False, "seconds": round(time.perf_counter() - start, 1), "bytes": size}


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    same_order = float(np.mean([(x == y).all() for x, y in zip(a, b)]))
    same_set = float(np.mean([set(x) == set(y) for x, y in zip(a, b)]))
    overlap = float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))
    return {"same_ordered_top_k": same_order, "same_top_k_set": same_set, "mean_overlap": overlap}


def run_size(n: int, args, work: Path, bundle, scorer) -> dict:
    from runtime import search
    from runtime.index import GalleryIndex

    root = work / f"index_{n}"
    built = build_index(root, bundle, n, args.seed, args.videos_per_topic)
    index = GalleryIndex(root)
    centres = topic_centres(-(-n // args.videos_per_topic), bundle.config.embed_dim, args.seed)
    queries, topics = make_queries(centres, args.queries, bundle.config, args.seed + 1)
    n_ex = min(args.exhaustive_queries, args.queries)
    ex_queries = queries.rows(0, n_ex)

    print(f"[large_gallery] {n}: exhaustive, {n_ex} queries ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    exhaustive = search.exhaustive(scorer, index, ex_queries, args.top_k, args.memory_mb)
    ex_seconds = time.perf_counter() - start
    ex_per_query = ex_seconds / n_ex
    rss_after_exhaustive = common.rss_breakdown_mib()

    start = time.perf_counter()  # one-time, cached in the index
    kernel = search._kernel(scorer, index, args.memory_mb)
    search.faiss_index(index)
    setup_seconds = time.perf_counter() - start
    del kernel

    stages = {}
    for shortlist in args.shortlists:
        print(f"[large_gallery] {n}: two-stage, shortlist {shortlist}, {args.queries} queries ...",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        top = search.two_stage(scorer, index, queries, args.top_k, shortlist, args.memory_mb)
        seconds = time.perf_counter() - start
        per_query = seconds / args.queries
        stages[str(shortlist)] = {
            "seconds_total": round(seconds, 3), "seconds_per_query": round(per_query, 5),
            "speedup_vs_exhaustive": round(ex_per_query / per_query, 1),
            "agreement_top_k": _agreement(top.indices[:n_ex], exhaustive.indices),
        }
    relevant_in_top = float(np.mean([(exhaustive.indices[i] // args.videos_per_topic == topics[i]).mean()
                                     for i in range(n_ex)]))
    return {
        "gallery": n, "index": built, "queries": args.queries, "exhaustive_queries": n_ex,
        "exhaustive": {"seconds_total": round(ex_seconds, 2), "seconds_per_query": round(ex_per_query, 4),
                       "pairs_per_second": round(n * n_ex / ex_seconds, 1)},
        "two_stage_one_time_setup_seconds": round(setup_seconds, 2),
        "two_stage": stages,
        "exhaustive_top_k_share_from_query_topic": round(relevant_in_top, 3),
        "peak_rss_mib_so_far": round(common.peak_rss_mib(), 1),
        "rss_after_exhaustive_mib": rss_after_exhaustive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=64, help="queries searched two-stage")
    parser.add_argument("--exhaustive-queries", type=int, default=16,
                        help="of those, how many are also searched exhaustively (agreement is measured on them)")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[100, 200, 500])
    parser.add_argument("--target-shortlist", type=int, default=200, help="the shortlist the targets are judged on")
    parser.add_argument("--videos-per-topic", type=int, default=DEFAULT_VIDEOS_PER_TOPIC,
                        help="gallery videos per topic: the relevant videos of each query (more = a harder "
                             "test of the shortlist, which must then pick the fused top-k among many similar ones)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=common.available_cpus())
    parser.add_argument("--memory-mb", type=float, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the indexes here (reused by a later run); default: a temporary directory")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    if args.target_shortlist not in args.shortlists:
        args.shortlists.append(args.target_shortlist)

    machine = common.machine({"scorer_concurrent_tiles": args.threads})
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ucofia-gallery-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        cfg = common.config("vit_b32")
        if not (work / "scorer.onnx").is_file():
            model = common.random_model(cfg)
            common.export_scorer(model, work / "scorer.onnx")
            del model
            gc.collect()
        from runtime.backends import open_session
        from runtime.scoring import Scorer

        bundle = common.scorer_bundle(work, cfg)
        scorer = Scorer(open_session(bundle, "scorer", "cpu", args.threads), cfg)
        sizes = [run_size(n, args, work, bundle, scorer) for n in args.sizes]
    finally:
        if tmp is not None:
            tmp.cleanup()
    key = str(args.target_shortlist)
    largest = sizes[-1]["two_stage"][key]
    result = {
        "benchmark": "large_gallery", "config": "vit_b32", "machine": machine,
        "load_average_after": common.load_average(), "top_k": args.top_k,
        "synthetic_features": {"videos_per_topic": args.videos_per_topic, "noise": NOISE, "patch_scale": PATCH_SCALE,
                               "biases": "none (no caption bank)"},
        "sizes": sizes, "peak_rss_mib": round(common.peak_rss_mib(), 1),
        "peak_rss_note": "includes memory-mapped index pages (file-backed, droppable page cache); "
                         "rss_after_exhaustive_mib splits anonymous from file-backed memory",
        "targets": {"gallery": args.sizes[-1], "shortlist": args.target_shortlist, "speedup_at_least": 20,
                    "same_top_k_at_least": 0.99,
                    "speedup": largest["speedup_vs_exhaustive"],
                    "same_top_k_set": largest["agreement_top_k"]["same_top_k_set"],
                    "same_ordered_top_k": largest["agreement_top_k"]["same_ordered_top_k"]},
        "summary": [
            f"{s['gallery']:>7} videos: exhaustive {s['exhaustive']['seconds_per_query'] * 1000:.0f} ms/query "
            f"({s['exhaustive_queries']} queries); two-stage (shortlist {k}) "
            f"{v['seconds_per_query'] * 1000:.1f} ms/query -> {v['speedup_vs_exhaustive']:.0f}x, "
            f"same top-{args.top_k} {v['agreement_top_k']['same_ordered_top_k']:.0%} (ordered), "
            f"{v['agreement_top_k']['same_top_k_set']:.0%} (set), overlap {v['agreement_top_k']['mean_overlap']:.1%}"
            for s in sizes for k, v in s["two_stage"].items()],
    }
    common.write_result(args.output, result)
    print("\n".join(result["summary"]), file=sys.stderr)


if __name__ == "__main__":
    main()
