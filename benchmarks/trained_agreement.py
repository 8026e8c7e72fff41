"""Benchmark: two-stage vs exhaustive search and stored dtypes on a TRAINED model (the demo model).

The synthetic topic features of large_gallery.py say nothing about whether a trained UCoFiA
model's video-sentence level (stage 1) keeps the fused top-10 in its shortlist. This script takes
a checkpoint trained on a larger demo benchmark, exports it, indexes the test videos with SK
biases from an even subset of the training captions (``--bank-captions``; ``ucofia-run index``),
converts the index to float16 and int8
(``ucofia-run merge --store``, which recomputes the biases), and for every test caption compares:

* per store: t2v/v2t metrics (``runtime.evaluate``) and exhaustive top-10 agreement with float32;
* per shortlist size: two-stage (exact flat stage 1) vs exhaustive top-10 agreement (ordered, set,
  overlap) and t2v R@1 of both, on the float16 index.

    ucofia demo-data -o WORK/demo15 --scale 15
    ucofia train --config demo --data WORK/demo15 -o WORK/train15 --epochs 4
    .venv/bin/python benchmarks/trained_agreement.py --run WORK/train15 --data WORK/demo15 \\
        --work WORK/agreement -o benchmarks/results/trained_agreement_demo.json
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SHORTLISTS = (10, 20, 50, 100, 200, 500)
TOP_K = 10


def _cli(tool: str, *args: str) -> None:
    module = "ucofia.cli" if tool == "ucofia" else "runtime.cli"
    cmd = [sys.executable, "-c", f"from {module} import main; main()", *args]
    print("$", tool, " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    return {"same_ordered_top_k": float(np.mean([(x == y).all() for x, y in zip(a, b)])),
            "same_top_k_set": float(np.mean([set(x) == set(y) for x, y in zip(a, b)])),
            "mean_overlap": float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="training run directory (uses best/, else last/)")
    parser.add_argument("--data", type=Path, required=True, help="the demo benchmark it was trained on")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shortlists", type=int, nargs="+", default=list(SHORTLISTS))
    parser.add_argument("--bank-captions", type=int, default=2400,
                        help="SK bank: this many of the training captions, evenly spread (all 24,000 x 1440 "
                             "videos took over half an hour per bias computation on a busy 2-core machine)")
    parser.add_argument("--threads", type=int, default=common.available_cpus())
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    from ucofia.commands.demo import _write_lists

    machine = common.machine({"scorer_concurrent_tiles": args.threads})
    monitor = common.CpuMonitor()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.run / "best" if (args.run / "best").is_dir() else args.run / "last"
    bundle_dir = work / "bundle"
    if not (bundle_dir / "manifest.json").is_file():
        _cli("ucofia", "export", str(checkpoint), "-o", str(bundle_dir), "--force")
    videos, full_bank = _write_lists(args.data, work / "lists")
    captions = full_bank.read_text().splitlines()
    step = max(1, len(captions) // args.bank_captions)
    bank = work / "lists" / "bank_subset.txt"
    bank.write_text("".join(c + "\n" for c in captions[::step][:args.bank_captions]))
    indexes = {"float32": work / "index_float32"}
    start = time.perf_counter()
    _cli("ucofia-run", "index", "--bundle", str(bundle_dir), "--videos", str(videos), "--bank", str(bank),
         "-o", str(indexes["float32"]), "--store", "float32", "-q")
    index_seconds = time.perf_counter() - start
    for store in ("float16", "int8"):
        indexes[store] = work / f"index_{store}"
        if not indexes[store].exists():
            _cli("ucofia-run", "merge", str(indexes["float32"]), "-o", str(indexes[store]), "--store", store, "-q")

    from runtime import evaluate as ev
    from runtime import search
    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.index import GalleryIndex
    from runtime.scoring import Scorer
    from runtime.search.stage1 import Stage1Params
    from runtime.text import TextEncoder

    bundle = load_bundle(bundle_dir)
    scorer = Scorer(open_session(bundle, "scorer", "cpu", args.threads), bundle.config)
    annotations = ev.load_annotations(args.data / "MSRVTT_JSFUSION_test.csv", "msrvtt")
    text = TextEncoder(bundle, "cpu", args.threads).encode(annotations.captions, what="caption")
    stores, tops = {}, {}
    for store, path in indexes.items():
        gallery = GalleryIndex(path)
        ann, vids, rows = ev.select_videos(gallery, annotations, allow_missing=False)
        report = ev.evaluate(gallery, scorer, text, ann, vids, rows, 1024)
        tops[store] = search.exhaustive(scorer, gallery, text, TOP_K).indices
        stores[store] = {"metrics": report["metrics"], "bytes_on_disk": sum(
            p.stat().st_size for p in (path / "shards").rglob("*") if p.is_file())}
    for store in stores:
        stores[store]["exhaustive_top10_agreement_with_float32"] = _agreement(tops[store], tops["float32"])

    default = "float16"
    gallery = GalleryIndex(indexes[default])
    gt = np.array([gallery.row_of(v) for v in annotations.video_ids])
    exhaustive = tops[default]
    engine = search.TwoStage(scorer, gallery, 1024, Stage1Params("flat"), check_queries=text.rows(0, 16))
    per_shortlist = {}
    for shortlist in args.shortlists:
        start = time.perf_counter()
        top = engine.search(text, TOP_K, shortlist)
        seconds = time.perf_counter() - start
        per_shortlist[str(shortlist)] = {
            "agreement_top10": _agreement(top.indices, exhaustive),
            "t2v_R1_two_stage": round(100 * float(np.mean(top.indices[:, 0] == gt)), 2),
            "seconds_per_query": round(seconds / len(text), 4),
        }
    result = {
        "benchmark": "trained_agreement", "machine": machine, "contention": common.contention(monitor, args.threads),
        "checkpoint": str(checkpoint), "data": str(args.data), "captions": len(text), "videos": len(gallery),
        "sk_bank_captions": len(bank.read_text().splitlines()),
        "index_seconds": round(index_seconds, 1), "stores": stores, "two_stage_store": default,
        "t2v_R1_exhaustive": round(100 * float(np.mean(exhaustive[:, 0] == gt)), 2),
        "two_stage": per_shortlist,
        "float16_identical_R1": all(stores["float16"]["metrics"][d]["R1"] == stores["float32"]["metrics"][d]["R1"]
                                    for d in ("t2v", "v2t")),
    }
    common.write_result(args.output, result)


if __name__ == "__main__":
    main()
