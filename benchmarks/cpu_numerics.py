"""Benchmark: the demo config's training with and without run.reproducible_cpu, on emulated CPUs.

    .venv/bin/python benchmarks/cpu_numerics.py -o benchmarks/results/cpu_numerics_demo.json

"Another CPU" is emulated by capping what each kernel library may use on this one (the
environment of a fresh `ucofia train` process): ATen's vectorised kernels, MKL's instruction set
and oneDNN's. For each emulated CPU and each setting, `ucofia train --config demo --max-steps N`
(no validation, no test) gives the weights' fingerprint and the training wall time; runs are
interleaved and repeated, and the fastest repeat of each pair is kept. Expected: with the setting
the fingerprints agree across emulated CPUs; without it they do not.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, CpuMonitor, contention, machine

# environment caps of an emulated CPU on top of this machine's own
CPUS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
CLEAN = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def _train(data: Path, cache: Path, run: Path, steps: int, caps: dict[str, str], pinned: bool) -> dict:
    """One fresh `ucofia train` process; its weights' fingerprint and training seconds."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(caps)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "ucofia.cli", "train", "--config", "demo", "--data", str(data),
           "--cache-dir", str(cache), "-o", str(run), "--force", "--no-progress", "--max-steps", str(steps),
           "--set", "data.val_split=null", "--set", "eval.test_at_end=false",
           "--set", f"run.reproducible_cpu={str(pinned).lower()}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    results = json.loads((run / "results.json").read_text())
    meta = json.loads((run / "last" / "meta.json").read_text())
    return {"fingerprint": meta["fingerprint"], "train_s": results["train_wall_s"],
            "warnings": [line for line in done.stderr.splitlines() if "warning" in line]}


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="A `ucofia demo-data` folder (default: generate one in the work folder).")
@click.option("--steps", default=20, show_default=True, help="Optimizer steps per run.")
@click.option("--repeats", default=2, show_default=True, help="Interleaved repeats; the fastest is kept.")
def main(output: Path, data: Path | None, steps: int, repeats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="ucofia-cpu-numerics-"))
    if data is None:
        data = work / "demo"
        subprocess.run([sys.executable, "-m", "ucofia.cli", "demo-data", "-o", str(data)], check=True,
                       capture_output=True)
    before = machine()
    monitor = CpuMonitor()
    runs: dict[str, dict] = {}
    for _ in range(repeats):
        for cpu, caps in CPUS.items():
            for pinned in (False, True):
                key = f"{cpu}/{'pinned' if pinned else 'default'}"
                got = _train(data, work / "cache", work / "run", steps, caps, pinned)
                best = runs.get(key)
                if best is not None and best["fingerprint"] != got["fingerprint"]:
                    raise click.ClickException(f"{key}: two repeats gave different weights on the same setting")
                if best is None or got["train_s"] < best["train_s"]:
                    runs[key] = got
                click.echo(f"{key:<16} {got['fingerprint'][:12]}  {got['train_s']:6.1f} s", err=True)
    summary = {}
    for pinned in ("default", "pinned"):
        prints = {cpu: runs[f"{cpu}/{pinned}"]["fingerprint"] for cpu in CPUS}
        summary[pinned] = {"same_weights_on_all_emulated_cpus": len(set(prints.values())) == 1,
                           "distinct_weights": len(set(prints.values()))}
    summary["slowdown_pinned_vs_default"] = {
        cpu: round(runs[f"{cpu}/pinned"]["train_s"] / runs[f"{cpu}/default"]["train_s"], 2) for cpu in CPUS}
    result = {
        "benchmark": "demo config training steps: run.reproducible_cpu off (default) vs on (pinned), emulated CPUs",
        "steps": steps, "repeats": repeats, "emulated_cpus": CPUS,
        "command": "ucofia train --config demo --max-steps N --set data.val_split=null --set eval.test_at_end=false "
                   "--set run.reproducible_cpu=false|true (fresh process, env caps per emulated CPU)",
        "runs": runs, "summary": summary, "machine": before, "load_after": machine()["load_average_1_5_15"],
        "contention": contention(monitor, threads=2),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    click.echo(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
