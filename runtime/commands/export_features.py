"""``ucofia-run export-features``: options and messages; the work is ``runtime.export_features``."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.commands.common import EXIT_CODES_HELP, index_option, user_errors
from runtime.export_features import DEFAULT_ROWS_PER_GROUP, FORMATS
from ucofia.cli_support import verbosity


@click.command("export-features", epilog=EXIT_CODES_HELP)
@index_option
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="parquet: one file (needs pyarrow: pip install 'ucofia[parquet]'); npy: a directory of "
                   "id.npy, video.npy (and the other features) and metadata.jsonl, numpy only.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output file (parquet) or new directory (npy); written under a temporary name, then renamed.")
@click.option("--frames", is_flag=True, help="Also export the per-frame features (frame_features, [F, D]).")
@click.option("--patches", is_flag=True, help="Also export the selected patch tokens (patches, [P, D]).")
@click.option("--rows-per-group", default=DEFAULT_ROWS_PER_GROUP, show_default=True, type=click.IntRange(min=1),
              help="Rows read and written at a time (a parquet row group).")
@verbosity
@user_errors
def export_features(index_dir: Path, fmt: str, out: Path, frames: bool, patches: bool, rows_per_group: int) -> None:
    """Write an index's ids, metadata and stored features (decoded to float32) for other tools.

    One row per live video (or window) in gallery order: `id`, one column per metadata field and
    the video-level feature as column `video` [D]; --frames and --patches add `frame_features`
    and `patches`. Values are the stored ones as search reads them (float16 / int8 stores
    decoded). Readable with pyarrow (parquet) or numpy (npy) without ucofia.
    """
    from runtime.export_features import export_features as run

    roles = ("video", *(("frame_features",) if frames else ()), *(("patches",) if patches else ()))
    outcome = run(index_dir, out, fmt, roles, rows_per_group)
    click.echo(f"exported {outcome.rows} rows ({', '.join(outcome.columns)}) to {outcome.out}")
