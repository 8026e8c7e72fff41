"""``ucofia-run doctor``: what is installed and what really runs here (``runtime.diagnostics``)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from runtime.commands.common import EXIT_CODES_HELP, user_errors
from ucofia.cli_support import verbosity


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--bundle", "bundle_dir", default=None, type=click.Path(path_type=Path),
              help="Also check this bundle: the backend --backend auto picks for it and whether its TensorRT "
                   "engines match this GPU and TensorRT release.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@verbosity
@user_errors
def doctor(bundle_dir: Path | None, as_json: bool) -> None:
    """Versions, backends and libraries of this install: paste its output into a bug report.

    Reports ucofia's version and extras, onnxruntime (which package; its CUDA build), the
    providers that really run (a probe session, as --backend auto does), the CUDA/cuDNN libraries
    onnxruntime-gpu needs (found, or the fix), the GPU, TensorRT and the bundle's engines,
    conflicting packages, thread settings and FAISS. Every problem is listed at the end with its
    fix. Exits 0 whatever it finds (1 only when --bundle is not a bundle).
    """
    from runtime.bundle import load_bundle
    from runtime.diagnostics import diagnose, format_text

    bundle = load_bundle(bundle_dir) if bundle_dir is not None else None
    report = diagnose(bundle)
    click.echo(json.dumps(report, indent=2) if as_json else format_text(report), nl=as_json)
