"""``ucofia-run describe``: options and messages; the work is ``runtime.describe``."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.commands.common import (
    EXIT_CODES_HELP,
    backend_option,
    bundle_option,
    index_option,
    memory_option,
    threads_option,
    user_errors,
    write_output,
)
from runtime.describe import DEFAULT_TOP_K
from ucofia.cli_support import verbosity


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--id", "video_ids", multiple=True, required=True,
              help="An indexed video id (repeatable); on an index of time windows also a file id (its best "
                   "window per caption).")
@click.option("--captions", "captions_file", required=True, type=click.Path(path_type=Path),
              help="Candidate captions: .txt one per line, .csv with a sentence/caption/text column, .json or "
                   ".jsonl.")
@click.option("--top-k", default=DEFAULT_TOP_K, show_default=True, type=click.IntRange(min=1),
              help="Captions per video.")
@click.option("--bank", "bank_dir", default=None, type=click.Path(path_type=Path),
              help="Index of bank videos: score with the paper's video-to-text SK caption bias over them "
                   "(the reference uses its training videos). Default: the fused text-to-video score, so a "
                   "video's ranking is its column of the captions' search scores.")
@click.option("-o", "--output", "out", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Output file (written atomically), or - for stdout.")
@bundle_option
@backend_option
@memory_option
@threads_option
@verbosity
@user_errors
def describe(index_dir: Path, video_ids: tuple[str, ...], captions_file: Path, top_k: int, bank_dir: Path | None,
             out: Path, bundle_dir: Path | None, backend: str, memory_mb: float, threads: int | None) -> None:
    """Rank candidate captions for indexed videos (video-to-text).

    Writes one JSON line per video: {"video_id", "results": [{"rank", "caption", "score",
    "levels"}]} (on a file of an index of windows each result also names its best "window").
    Scores are those of `ucofia-run search` for the same (caption, video) pair unless --bank is
    given; ties keep the captions' order.
    """
    from runtime.describe import DescribeRequest, describe_index, to_jsonl
    from runtime.sources import read_captions

    captions = read_captions(captions_file, "captions")
    request = DescribeRequest(index=index_dir, video_ids=video_ids, captions=captions_file, top_k=top_k,
                              bank=bank_dir, bundle=bundle_dir, backend=backend, memory_mb=memory_mb,
                              threads=threads)
    write_output(out, to_jsonl(describe_index(request, captions)))
