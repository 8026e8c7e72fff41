"""``ucofia demo``: the whole pipeline on the built-in demo benchmark, stage by stage.

Each stage prints the very command a user would type, so the output doubles as a tutorial:
demo-data -> train -> export -> ucofia-run index / search / evaluate -> parity. Training and
export run as those commands in a child process (a fresh torch with the training's thread and
kernel settings); the runtime stages and parity call the same library functions as their commands.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from ucofia.cli_support import TRAIN_EXTRA, TRAIN_MODULES, needs_extra, verbosity
from ucofia.io_utils import atomic_write_text

EXAMPLE_QUERIES = (
    "a red square then a blue circle",
    "a green triangle moving from left to right",
    "a small white marker in the top left corner",
)
EXAMPLE_TOP_K = 5
STAGES = ("data", "lists", "train", "export", "index", "search", "evaluate", "parity")


def _show(tool: str, args: list[str]) -> None:
    """Print the command a user would type for this stage."""
    click.secho("$ " + " ".join([tool, *map(shlex.quote, args)]), fg="cyan", err=True)


def _run(args: list[str]) -> None:
    """Run ``ucofia ARGS`` in a child process with this interpreter (works without PATH setup)."""
    _show("ucofia", args)
    done = subprocess.run([sys.executable, "-c", "from ucofia.cli import main; main()", *args])
    if done.returncode != 0:
        raise click.ClickException(f"stage failed: ucofia {args[0]} exited with {done.returncode}")


def _write_lists(data: Path, lists: Path) -> tuple[Path, Path]:
    """Test video list and training-caption bank (one per line) from the benchmark's annotations."""
    from ucofia.data.readers import read_split

    test = read_split("msrvtt", data, "test")
    train = read_split("msrvtt", data, "train")
    lists.mkdir(parents=True, exist_ok=True)
    videos, bank = lists / "test_videos.txt", lists / "train_captions.txt"
    atomic_write_text(videos, "".join(f"{v.video_id}\t{Path(v.path).resolve()}\n" for v in test.videos))
    atomic_write_text(bank, "".join(f"{' '.join(c.text.split())}\n" for c in train.captions))
    click.echo(f"wrote {videos} ({len(test.videos)} videos) and {bank} ({len(train.captions)} captions)", err=True)
    return videos, bank


@click.command("demo")
@click.option("-o", "--output", "out", default="demo_run", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for every stage's output.")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Demo benchmark size multiplier (1.0 trains in about 7 minutes on 2 idle CPU cores).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Override the demo config's training epochs (fewer = faster, less accurate).")
@click.option("--force", is_flag=True, help="Start over when the output folder already has a run.")
@verbosity
@needs_extra(TRAIN_EXTRA, TRAIN_MODULES)
def demo(out: Path, scale: float, epochs: int | None, force: bool) -> None:
    """Run the main job end to end on the built-in demo benchmark.

    \b
    Stages (each prints the command it runs, so you can repeat it on your own data):
      1. ucofia demo-data          synthetic MSR-VTT-layout benchmark (real mp4 files)
      2. lists                     test video list + training-caption bank for SK
      3. ucofia train              tiny CLIP-based UCoFiA from scratch (val-selected best)
      4. ucofia export             ONNX bundle, verified against PyTorch at export
      5. ucofia-run index          decode + encode the test videos, SK video biases
      6. ucofia-run search         example queries -> ranked videos (JSONL)
      7. ucofia-run evaluate       R@1/5/10, MdR, MnR both directions
      8. ucofia parity             PyTorch vs the deployed runtime, per level
    It ends by printing the `ucofia-run serve` command that serves the index with a search page.
    """
    from runtime.errors import RuntimeUserError

    if out.exists() and any(out.iterdir()) and not force:
        raise click.ClickException(f"{out} already holds a run; pass --force to start over or -o another folder")
    out.mkdir(parents=True, exist_ok=True)
    data, run, bundle, index = out / "data", out / "train", out / "bundle", out / "index"
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def stage(name: str) -> None:
        timings[name] = time.perf_counter()
        click.secho(f"\n== {STAGES.index(name) + 1}/{len(STAGES)} {name} ==", bold=True, err=True)

    stage("data")
    _run(["demo-data", "-o", str(data), "--scale", str(scale), "--force"])
    stage("lists")
    videos, bank = _write_lists(data, out / "lists")
    stage("train")
    train_args = ["train", "--config", "demo", "--data", str(data), "-o", str(run), "--force"]
    if epochs is not None:
        train_args += ["--epochs", str(epochs)]
    _run(train_args)
    checkpoint = run / "best" if (run / "best").is_dir() else run / "last"
    stage("export")
    _run(["export", str(checkpoint), "-o", str(bundle), "--force"])
    try:
        stage("index")
        _index(bundle, videos, bank, index)
        stage("search")
        _search(index, out / "search.jsonl")
        stage("evaluate")
        evaluation = _evaluate(index, data / "MSRVTT_JSFUSION_test.csv", out / "evaluate.json")
        stage("parity")
        _parity(checkpoint, bundle, data, out / "parity.json")
    except RuntimeUserError as exc:
        raise click.ClickException(f"stage failed: {exc}") from None
    total = time.perf_counter() - start
    names = list(timings)
    durations = {n: (timings[names[i + 1]] if i + 1 < len(names) else start + total) - timings[n]
                 for i, n in enumerate(names)}
    summary = {"seconds": durations, "total_seconds": total, "runtime_metrics": evaluation["metrics"]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    click.secho("\n== done ==", bold=True, err=True)
    for name in names:
        click.echo(f"  {name:<10} {durations[name]:7.1f} s")
    click.echo(f"  {'total':<10} {total:7.1f} s")
    if summary["runtime_metrics"]:
        click.echo("\nDeployed runtime on the demo test split (fused levels + SK):")
        for direction, values in summary["runtime_metrics"].items():
            click.echo(f"  {direction}: " + "  ".join(f"{k} {v:.1f}" for k, v in values.items()))
    click.echo(f"\nEverything is under {out}/ (see summary.json, parity.json, search.jsonl).")
    click.echo("\n" + serve_hint(index))


def _index(bundle: Path, videos: Path, bank: Path, index: Path) -> None:
    from runtime.ingest import IndexRequest, build_index

    _show("ucofia-run", ["index", "--bundle", str(bundle), "--videos", str(videos), "--bank", str(bank),
                         "-o", str(index)])
    outcome = build_index(IndexRequest(bundle=bundle, videos=videos, bank=bank, out=index))
    click.echo(outcome.summary())
    if outcome.failed:
        raise click.ClickException(f"stage failed: {len(outcome.failed)} videos could not be indexed; see "
                                   f"{index / 'failed.jsonl'}")


def _search(index: Path, results: Path) -> None:
    from runtime.deployment import load_query_models, open_index
    from runtime.search import Searcher, SearchOptions
    from runtime.search.records import to_jsonl

    _show("ucofia-run", ["search", "--index", str(index), *[a for q in EXAMPLE_QUERIES for a in ("--query", q)],
                         "--top-k", str(EXAMPLE_TOP_K), "-o", str(results)])
    gallery, bundle = open_index(index)
    models = load_query_models(bundle)
    answer = Searcher(models.scorer, gallery).search(models.text.encode_reporting(list(EXAMPLE_QUERIES)),
                                                      SearchOptions(top_k=EXAMPLE_TOP_K))
    atomic_write_text(results, to_jsonl(EXAMPLE_QUERIES, answer.results))


def _evaluate(index: Path, annotations: Path, report_path: Path) -> dict:
    from evaluation.metrics import format_metrics_table
    from runtime.evaluate import EvaluateRequest, evaluate_index

    _show("ucofia-run", ["evaluate", "--index", str(index), "--annotations", str(annotations),
                         "-o", str(report_path)])
    report = evaluate_index(EvaluateRequest(index=index, annotations=annotations))
    click.echo(format_metrics_table(report["metrics"], title=f"msrvtt: {report['captions']} captions x "
                                                               f"{report['videos']} videos"))
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    return report


def _parity(checkpoint: Path, bundle: Path, data: Path, report_path: Path) -> None:
    from evaluation.compare import Tolerance, format_report
    from evaluation.parity import ParityError, run_parity, write_report
    from runtime.bundle import load_bundle

    _show("ucofia", ["parity", "--checkpoint", str(checkpoint), "--bundle", str(bundle), "--benchmark", str(data),
                     "-o", str(report_path)])
    try:
        report = run_parity(checkpoint, bundle, data, tolerance=Tolerance.for_manifest(load_bundle(bundle).manifest))
    except ParityError as exc:
        raise click.ClickException(f"stage failed: {exc}") from None
    click.echo(format_report(report))
    write_report(report, report_path)
    if not report["passed"]:
        raise click.ClickException(f"stage failed: parity failed; see {report_path}")


def serve_hint(index: Path) -> str:
    """How to serve the demo's index and where to open its search page."""
    from runtime.serve.settings import DEFAULT_HOST, DEFAULT_PORT

    return (f"Search it in a browser (needs `pip install 'ucofia[serve]'`):\n"
            f"  ucofia-run serve --index {shlex.quote(str(index))}\n"
            f"  then open http://{DEFAULT_HOST}:{DEFAULT_PORT}/")
