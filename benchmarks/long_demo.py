"""Benchmark: moment retrieval on the long-video demo, windows of 5/10/20 s vs whole files.

Runs what a user runs: ``ucofia-run index`` (whole files, then ``--window W --stride S`` for each
setting) and ``ucofia-run evaluate --annotations moments.csv`` on the long demo
(``ucofia demo-data --long``), with a bundle exported from the demo-trained model. Reports per
index: moment R@1/R@5 at temporal IoU >= 0.5 / 0.3 (right file AND a window overlapping the true
span), file-level t2v R@1 (a file scores its best window), rows, index size on disk, and encoding
time (and SK bias time with --bank) per hour of video.

Baselines beside them: the whole-file index's moment is the whole file (IoU with a 6-14 s event
in a ~3 min file is far below 0.3, so 0); "whole file, then a random window": the whole-file
index picks the file, a window of the W/S grid is drawn uniformly from it (expected R@1 =
mean over captions of [top-1 file right] x the share of that file's windows that hit); "random
window": uniformly over every window of every file.

    .venv/bin/python -m ucofia.cli demo-data -o runs/demo_data
    .venv/bin/python -m ucofia.cli train --config demo --data runs/demo_data -o runs/demo_train
    .venv/bin/python -m ucofia.cli export runs/demo_train/best -o runs/demo_bundle
    .venv/bin/python benchmarks/long_demo.py --bundle runs/demo_bundle --bank runs/train_captions.txt \\
        -o benchmarks/results/long_demo_tiny.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

WINDOWS = (5.0, 10.0, 20.0)
THRESHOLDS = (0.5, 0.3)


def run(tool: str, *args: str) -> tuple[float, str]:
    """Run ``ucofia``/``ucofia-run`` with this interpreter; (wall seconds, stdout). Exits on failure."""
    module = "ucofia.cli" if tool == "ucofia" else "runtime.cli"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_index(bundle: Path, videos: Path, bank: Path | None, out: Path, extra: list[str], workers: int) -> dict:
    """Index (timed), then add the SK biases in a second call (timed apart); sizes on disk."""
    if out.exists():
        shutil.rmtree(out)
    common_args = ["--bundle", str(bundle), "--videos", str(videos), "-o", str(out), "-q", "--workers", str(workers)]
    encode_s, _ = run("ucofia-run", "index", *common_args, *extra)
    bias_s = None
    if bank is not None:
        bias_s, _ = run("ucofia-run", "index", *common_args, *extra, "--bank", str(bank))
    return {"encode_s": round(encode_s, 2), "bias_s": None if bias_s is None else round(bias_s, 2),
            "shards_bytes": dir_bytes(out / "shards"), "index_bytes": dir_bytes(out)}


def evaluate(index: Path, moments: Path) -> dict:
    out = index / "evaluation.json"
    run("ucofia-run", "evaluate", "--index", str(index), "--annotations", str(moments), "--dataset", "generic",
        "-q", "-o", str(out))
    return json.loads(out.read_text())


def chance_baselines(whole: Path, moments: Path, bundle: Path, window_s: float, stride_s: float) -> dict:
    """Expected moment R@1 of 'whole-file top-1, then a random window of it' and of 'a random
    window of any file', on the W/S grid of each file."""
    from evaluation.moments import temporal_iou
    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.evaluate import load_annotations
    from runtime.index import GalleryIndex
    from runtime.scoring import Scorer, fuse, score_matrix
    from runtime.text import TextEncoder
    from ucofia.data.windows import plan_spans, seconds_to_ms

    gallery = GalleryIndex(whole)
    b = load_bundle(bundle)
    ann = load_annotations(moments, "generic")
    text = TextEncoder(b, "cpu", None).encode(ann.captions)
    scores = fuse(score_matrix(Scorer(open_session(b, "scorer", "cpu", None), b.config), text, gallery),
                  gallery.biases())
    top1 = [gallery.ids[int(j)] for j in scores.argmax(axis=1)]
    grids = {}
    for entry in gallery.entries:
        spans = plan_spans(int(round(entry["duration_s"] * 1000)), seconds_to_ms(window_s, "w"),
                           seconds_to_ms(stride_s, "s"))
        grids[entry["id"]] = np.array([(s.start, s.end) for s in spans])
    total = sum(len(g) for g in grids.values())
    out = {}
    for thr in THRESHOLDS:
        picked, anywhere = [], []
        for vid, span, guess in zip(ann.video_ids, ann.spans, top1):
            hits = temporal_iou(grids[vid], span) >= thr
            picked.append(hits.mean() if guess == vid else 0.0)
            anywhere.append(hits.sum() / total)
        out[f"whole_file_then_random_window_R1@{thr:g}"] = round(float(np.mean(picked)) * 100, 2)
        out[f"random_window_R1@{thr:g}"] = round(float(np.mean(anywhere)) * 100, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="Bundle of the demo-trained model (ucofia export)")
    parser.add_argument("--data", type=Path, default=Path("runs/long_demo"),
                        help="Long demo (written with `ucofia demo-data --long` when missing)")
    parser.add_argument("--bank", type=Path, default=None, help="SK caption bank (the demo's training captions)")
    parser.add_argument("--windows", default=",".join(f"{w:g}" for w in WINDOWS), help="Window lengths (s)")
    parser.add_argument("--strides", default="half,full",
                        help="Strides per window: 'half' (W/2, overlapping) and/or 'full' (W, back to back)")
    parser.add_argument("--work", type=Path, default=Path("runs/long_demo_bench"), help="Folder for the indexes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    monitor = common.CpuMonitor()
    machine = common.machine({"decode_workers": args.workers})
    if not (args.data / "moments.csv").is_file():
        run("ucofia", "demo-data", "--long", "-o", str(args.data), "--seed", str(args.seed), "--force")
    bench = json.loads((args.data / "benchmark.json").read_text())
    video_s = sum(v["seconds"] for v in bench["videos"])
    per_hour = 3600.0 / video_s
    videos, moments = args.data / "videos", args.data / "moments.csv"
    args.work.mkdir(parents=True, exist_ok=True)

    settings = [("whole files", None, None)]
    for w in (float(x) for x in args.windows.split(",")):
        for kind in args.strides.split(","):
            settings.append((f"window {w:g} s, stride {w / 2 if kind == 'half' else w:g} s", w,
                             w / 2 if kind == "half" else w))
    rows = {}
    for name, window, stride in settings:
        out = args.work / ("whole" if window is None else f"w{window:g}_s{stride:g}")
        extra = [] if window is None else ["--window", f"{window:g}", "--stride", f"{stride:g}"]
        built = build_index(args.bundle, videos, args.bank, out, extra, args.workers)
        report = evaluate(out, moments)
        row = {
            "rows": report.get("windows", {}).get("rows_scored", report["videos"]),
            "moment_t2v": {k: round(v, 2) for k, v in report["moments"]["t2v"].items()},
            "file_t2v_R1": round(report["metrics"]["t2v"]["R1"], 2),
            "file_t2v_R5": round(report["metrics"]["t2v"]["R5"], 2),
            **built,
            "encode_s_per_hour": round(built["encode_s"] * per_hour, 1),
            "bias_s_per_hour": None if built["bias_s"] is None else round(built["bias_s"] * per_hour, 1),
            "shards_mib_per_hour": round(built["shards_bytes"] * per_hour / 2**20, 2),
        }
        if window is not None:
            row["chance"] = chance_baselines(args.work / "whole", moments, args.bundle, window, stride)
        rows[name] = row
        print(f"{name:>28}: moment R1@0.5 {row['moment_t2v']['R1@0.5']:5.1f}  R5@0.5 {row['moment_t2v']['R5@0.5']:5.1f}"
              f"  R1@0.3 {row['moment_t2v']['R1@0.3']:5.1f}  file R1 {row['file_t2v_R1']:5.1f}  rows {row['rows']:4d}"
              f"  {row['shards_mib_per_hour']:.2f} MiB/h  encode {row['encode_s_per_hour']:.0f} s/h", file=sys.stderr)

    from runtime.bundle import load_bundle
    from ucofia.config import vit_b32_config

    def row_bytes(cfg) -> int:  # video + frame_features + patches (float32) + video_mask
        return (1 + cfg.max_frames + cfg.num_pixels) * cfg.embed_dim * 4 + cfg.max_frames * 4

    tiny, b32 = load_bundle(args.bundle).config, vit_b32_config()
    result = {
        "benchmark": "long_demo",
        "data": {"path": str(args.data), "files": len(bench["videos"]), "video_seconds": video_s,
                 "events": sum(len(v["events"]) for v in bench["videos"]), "seed": bench["seed"]},
        "bundle": str(args.bundle), "bank": None if args.bank is None else str(args.bank),
        "indexes": rows,
        "row_bytes": {"this_bundle": row_bytes(tiny), "vit_b32_float32": row_bytes(b32)},
        "vit_b32_mib_per_hour": {f"stride {s:g} s": round(3600 / s * row_bytes(b32) / 2**20, 1)
                                 for s in (2.5, 5, 10, 20)},
        "machine": machine, "contention": common.contention(monitor, args.workers),
        "load_average_after": common.load_average(),
    }
    common.write_result(args.output, result)


if __name__ == "__main__":
    main()
