"""``ucofia-run evaluate``: options and messages; the work is ``runtime.evaluate.evaluate_index``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from runtime.commands.common import (
    EXIT_CODES_HELP,
    backend_option,
    bundle_option,
    index_option,
    memory_option,
    scorer_precision_option,
    threads_option,
    user_errors,
    write_output,
)
from runtime.evaluate import DATASETS
from ucofia.cli_support import verbosity


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--annotations", required=True, type=click.Path(path_type=Path),
              help="Captions with their video ids: the MSR-VTT test CSV (key,vid_key,video_id,sentence) or "
                   "any CSV/JSON/JSONL with video_id and sentence/caption columns; optional start/end columns "
                   "(seconds: each caption's true span) add moment retrieval metrics.")
@click.option("--dataset", default="msrvtt", show_default=True, type=click.Choice(DATASETS),
              help="Annotation layout.")
@click.option("--video-bank", "video_bank_dir", type=click.Path(path_type=Path), default=None,
              help="Index of bank videos for the video-to-text SK text bias (the reference uses the training "
                   "videos); default: the evaluated videos.")
@click.option("--no-bias", is_flag=True, help="Rank by the plain mean of the three levels (no SK biases).")
@click.option("--allow-missing", is_flag=True, help="Drop captions whose video is not in the index (else an error).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Metrics JSON (written atomically); default INDEX/evaluation.json.")
@bundle_option
@backend_option
@scorer_precision_option
@memory_option
@threads_option
@verbosity
@user_errors
def evaluate(index_dir: Path, annotations: Path, dataset: str, video_bank_dir: Path | None, no_bias: bool,
             allow_missing: bool, out: Path | None, bundle_dir: Path | None, backend: str, scorer_precision: str,
             memory_mb: float, threads: int | None) -> None:
    """Text-to-video and video-to-text retrieval metrics of an index on annotated captions.

    t2v ranks videos by the fused score with the index's SK video biases; v2t ranks captions with
    an SK text bias per caption over a video bank, as the reference's eval_t2v / eval_v2t do.
    Prints R@1, R@5, R@10, median rank (MdR) and mean rank (MnR) and writes them as JSON.

    On an index of time windows a file's score is its best window's. With start/end columns in
    the annotations it also reports moment retrieval: R@1/R@5 where a hit is a window of the
    right file with temporal IoU >= 0.5 (and >= 0.3) with the caption's span (on a whole-file
    index each file counts as the moment [0, duration]: the baseline).
    """
    from evaluation.metrics import format_metrics_table
    from runtime.evaluate import EvaluateRequest, evaluate_index

    report = evaluate_index(EvaluateRequest(
        index=index_dir, annotations=annotations, dataset=dataset, video_bank=video_bank_dir, use_biases=not no_bias,
        allow_missing=allow_missing, bundle=bundle_dir, backend=backend, memory_mb=memory_mb, threads=threads,
        scorer_precision=scorer_precision))
    click.echo(format_metrics_table(report["metrics"],
                                    title=f"{dataset}: {report['captions']} captions x {report['videos']} videos"))
    moments = report.get("moments")
    if moments and "t2v" in moments:
        click.echo(f"moment retrieval ({moments['moments']} moments, {moments['moment_of_row']}): " +
                   "  ".join(f"{k} {v:.1f}" for k, v in moments["t2v"].items()))
    elif moments:
        click.echo(f"moment retrieval skipped: {moments['skipped']}", err=True)
    write_output(out or index_dir / "evaluation.json", json.dumps(report, indent=2) + "\n")
