"""Benchmark: what thumbnails cost `ucofia-run index` (issue 12: "without slowing ingest noticeably").

The real clips of ``../shared/data`` (30 files, 96-718 px, 3-30 fps) are indexed with
``ucofia-run index`` twice per round, with and without ``--no-thumbnails``, rounds interleaved so
both sides see the same load; reported: wall time and CPU seconds (the index process and its
threads; CPU time is what another process on a busy machine cannot inflate), and the thumbnail
alone per clip. A bundle is needed: ``--bundle DIR`` (e.g. the ViT-B/32 bundle that
``benchmarks/serve.py --work DIR`` exports), or ``--config tiny`` exports a tiny one (a cheap
encoder: the worst case for the thumbnails' share).

    .venv/bin/python benchmarks/thumbnails.py --bundle runs/serve_bench/bundle_vit_b32 \\
        -o benchmarks/results/thumbnails_vit_b32.json
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def shared_clips() -> list[Path]:
    clips = sorted(p for p in (common.SHARED / "data").rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise SystemExit(f"no clips under {common.SHARED / 'data'}: this benchmark needs the shared data")
    return clips


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def index_once(bundle: Path, listing: Path, out: Path, thumbnails: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "runtime.cli", "index", "--bundle", str(bundle), "--videos", str(listing),
           "-o", str(out), "-q", "--backend", "cpu"] + ([] if thumbnails else ["--no-thumbnails"])
    cpu0, wall0 = children_cpu_s(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
    wall, cpu = time.perf_counter() - wall0, children_cpu_s() - cpu0
    if done.returncode not in (0, 3):
        raise SystemExit(f"ucofia-run index failed: {done.stderr}")
    made = len(list((out / "thumbnails").glob("*.jpg"))) if (out / "thumbnails").is_dir() else 0
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "thumbnails": made}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--config", choices=["tiny"], default=None, help="export a tiny bundle instead of --bundle")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    if (args.bundle is None) == (args.config is None):
        raise SystemExit("give --bundle DIR or --config tiny")

    from runtime.thumbnails import render_thumbnail

    machine = common.machine()
    monitor = common.CpuMonitor()
    clips = shared_clips()
    with tempfile.TemporaryDirectory(prefix="ucofia-thumbs-") as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from export import export_bundle

            bundle = work / "bundle"
            export_bundle(common.random_model(common.config(args.config)), bundle)
        listing = work / "videos.txt"
        listing.write_text("".join(f"{p.parent.name}_{p.stem}\t{p}\n" for p in clips))
        alone = []
        for clip in clips:
            start = time.process_time()
            render_thumbnail(clip)
            alone.append(time.process_time() - start)
        runs: dict[str, list[dict]] = {"with_thumbnails": [], "without_thumbnails": []}
        for round_ in range(args.rounds):
            order = [True, False] if round_ % 2 == 0 else [False, True]
            for thumbs in order:
                key = "with_thumbnails" if thumbs else "without_thumbnails"
                print(f"[thumbnails] round {round_ + 1}: {key} ...", file=sys.stderr, flush=True)
                runs[key].append(index_once(bundle, listing, work / "index", thumbs))
    median = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "cpu_s")} for k, v in runs.items()}
    result = {
        "benchmark": "thumbnails", "machine": machine, "load_average_after": common.load_average(),
        "contention": common.contention(monitor, common.available_cpus()),
        "bundle": str(bundle) if args.bundle else f"exported {args.config}", "clips": len(clips),
        "thumbnail_alone_cpu_ms": {"mean": round(1000 * statistics.fmean(alone), 1),
                                   "max": round(1000 * max(alone), 1)},
        "runs": runs, "median": median,
        "overhead_percent": {m: round(100 * (median["with_thumbnails"][m] / median["without_thumbnails"][m] - 1), 1)
                             for m in ("wall_s", "cpu_s")},
    }
    common.write_result(args.output, result)


if __name__ == "__main__":
    main()
