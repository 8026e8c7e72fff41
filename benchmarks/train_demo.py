"""Benchmark: train the tiny demo config from scratch on CPU and record time + test metrics.

    python benchmarks/train_demo.py -o benchmarks/results/train_demo_tiny.json
        runs `ucofia demo-data -o WORK/demo` and `ucofia train --config demo --data WORK/demo
        -o WORK/run`, timing each, then summarises the run directory.
    python benchmarks/train_demo.py --run-dir RUN -o OUT.json --wall-s SECONDS
        only summarises an existing run directory.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def summarise(run_dir: Path, command: str, wall_s: float | None, load_before: str | None,
              load_after: str | None) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    curve = [{"step": r["step"], "val_t2v_R1": r["metrics"]["t2v"]["all"]["R1"]}
             for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    best = results["test"]["best"]["metrics"]
    table = {level: {"t2v": {k: best["t2v"][level][k] for k in ("R1", "R5", "R10", "MdR", "MnR")},
                     "v2t": {k: best["v2t"][level][k] for k in ("R1", "R5", "R10", "MdR", "MnR")}}
             for level in ("video_sentence", "frame_sentence", "patch_word", "all", "all_sk") if level in best["t2v"]}
    return {
        "benchmark": "ucofia train, tiny model from scratch on the demo benchmark (CPU)",
        "command": command, "wall_s": wall_s, "train_wall_s": results["train_wall_s"],
        "steps": results["steps"], "best_step": results["best_step"],
        "select_metric": results["select_metric"], "best_val_value": results["best_value"],
        "test_split": results["test"]["split"],
        "test_best": table, "val_curve": curve, "sk_bank_captions": results["test"].get("sk_bank_captions"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "config": (run_dir / "train_config.yaml").read_text(),
    }


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Summarise this finished run only.")
@click.option("--wall-s", type=float, default=None, help="Wall time of that run (with --run-dir).")
@click.option("--note", type=str, default=None, help="Free text stored with the result (e.g. the machine load).")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Work folder (default: a temp dir).")
def main(output: Path, run_dir: Path | None, wall_s: float | None, note: str | None, work: Path | None) -> None:
    command = "ucofia demo-data -o demo && ucofia train --config demo --data demo -o runs/demo_tiny"
    load_before = None
    if run_dir is None:
        load_before = _load()
        work = work or Path(tempfile.mkdtemp(prefix="ucofia-train-demo-"))
        exe = [sys.executable, "-m", "ucofia.cli"]
        subprocess.run(exe + ["demo-data", "-o", str(work / "demo"), "--force"], check=True)
        run_dir = work / "run"
        start = time.perf_counter()
        subprocess.run(exe + ["train", "--config", "demo", "--data", str(work / "demo"), "-o", str(run_dir),
                              "--no-progress", "--force"], check=True)
        wall_s = round(time.perf_counter() - start, 1)
    summary = summarise(run_dir, command, wall_s, load_before, _load() if load_before else None)
    summary["note"] = note
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, output)
    click.echo(f"wrote {output}: test t2v R@1 all {summary['test_best']['all']['t2v']['R1']:.1f}, "
               f"+SK {summary['test_best'].get('all_sk', {}).get('t2v', {}).get('R1', float('nan')):.1f}, "
               f"wall {wall_s} s")


if __name__ == "__main__":
    main()
