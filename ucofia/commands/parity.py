"""``ucofia parity``: prove that a deployed bundle reproduces the PyTorch checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from evaluation.compare import Tolerance, format_report
from ucofia.cli_support import TRAIN_EXTRA, TRAIN_MODULES, needs_extra, verbosity


@click.command("parity")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="Our checkpoint directory or a reference pytorch_model.bin.")
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle directory written by `ucofia export` from that checkpoint.")
@click.option("--benchmark", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Benchmark folder in a layout the dataset readers know (e.g. `ucofia demo-data` output).")
@click.option("--dataset", default="msrvtt", show_default=True, help="Dataset layout of --benchmark.")
@click.option("--split", default="test", show_default=True,
              help="Split to evaluate (the SK bank is the 'train' split's captions unless --bank is given).")
@click.option("--bank", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Captions for the Sinkhorn-Knopp bank instead of the benchmark's training split (.txt one "
                   "per line, .csv with a sentence/caption column, .json or .jsonl): for a benchmark that "
                   "holds only its test split, e.g. MSR-VTT 1k-A.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), help="Runtime backend.")
@click.option("--store", default="float32", show_default=True, type=click.Choice(["float32", "float16", "int8"]),
              help="Stored feature dtype of the runtime's index (`ucofia-run index --store`): float16 must give "
                   "identical R@1, int8 R@1 within 2 points (similarity bound unchecked for both).")
@click.option("--scorer-precision", default="float32", show_default=True, type=click.Choice(["float32", "int8"]),
              help="Precision of the runtime's scorer (`ucofia-run search --scorer-precision`): int8 (opt-in, "
                   "lossy) must keep R@1 within 2 points (similarity bound unchecked).")
@click.option("--max-abs", type=float, default=None,
              help="Override the similarity tolerance (default 2e-4 for fp32 bundles, unchecked for fp16 and "
                   "int8 encoders).")
@click.option("--max-r1-delta", type=float, default=None,
              help="Override the allowed R@1 difference in points (default 0 for fp32, 0.2 for fp16, 2 for int8 "
                   "encoders).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report here (atomically).")
@verbosity
@needs_extra(TRAIN_EXTRA, TRAIN_MODULES)
def parity(checkpoint: Path, bundle: Path, benchmark: Path, dataset: str, split: str, bank: Path | None, backend: str,
           store: str, scorer_precision: str, max_abs: float | None, max_r1_delta: float | None,
           out: Path | None) -> None:
    """Run PyTorch and the runtime on one benchmark; exit 1 when they disagree.

    Reports per level, fused, and fused + Sinkhorn-Knopp: max abs/rel difference of the similarity
    matrices, top-1 agreement and top-10 overlap per query, and the metric deltas (R@1/5/10, MdR,
    MnR) in both directions.
    """
    from evaluation.parity import ParityError, run_parity, write_report
    from runtime.bundle import load_bundle
    from runtime.errors import RuntimeUserError

    try:
        tol = Tolerance.for_manifest(load_bundle(bundle).manifest, store, scorer_precision)
        if max_abs is not None or max_r1_delta is not None:
            tol = Tolerance(max_abs=max_abs if max_abs is not None else tol.max_abs,
                            max_r1_delta=max_r1_delta if max_r1_delta is not None else tol.max_r1_delta,
                            identical_metrics=tol.identical_metrics and max_r1_delta is None)
        report = run_parity(checkpoint, bundle, benchmark, dataset=dataset, split=split, bank=bank, backend=backend,
                            tolerance=tol, store=store, scorer_precision=scorer_precision)
    except (ParityError, ValueError, FileNotFoundError, RuntimeUserError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"parity on {report['captions']} captions x {report['videos']} videos "
               f"(bank {report['bank_captions']} captions, bundle {report['bundle_dtype']}, index store "
               f"{report['index_store']}, scorer {report['scorer_precision']}):")
    click.echo(format_report(report))
    if out is not None:
        write_report(report, out)
        click.echo(f"report written to {out}")
    if not report["passed"]:
        sys.exit(1)
