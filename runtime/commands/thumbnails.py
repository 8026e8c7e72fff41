"""``ucofia-run thumbnails``: make the missing thumbnails of an index (``runtime.thumbnails``)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from runtime.commands.common import EXIT_CODES_HELP, index_option, user_errors
from runtime.commands.index import FAILURES_SHOWN
from runtime.errors import EXIT_PARTIAL
from ucofia.cli_support import verbosity


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Decoding threads.")
@verbosity
@user_errors
def thumbnails(index_dir: Path, workers: int) -> None:
    """Make the missing thumbnails of an index (INDEX/thumbnails/).

    One frame near the middle of each indexed source file, about 256 px on the long side, as
    JPEG. `ucofia-run index` makes them as it goes; this fills in an index built without them
    (--no-thumbnails, or before they existed). Videos indexed without their source path (index
    format 1) need re-indexing first.
    """
    from runtime.index import GalleryIndex
    from runtime.thumbnails import backfill
    from ucofia.progress import progress_bar

    entries = GalleryIndex(index_dir).entries
    with progress_bar(len(entries), "thumbnails", "video") as update:
        report = backfill(index_dir, entries, workers, update)
    click.echo(f"{report.summary()} ({report.seconds:.1f} s)")
    if report.failed:
        for vid, error in report.failed[:FAILURES_SHOWN]:
            click.echo(f"failed: {vid}: {error}", err=True)
        sys.exit(EXIT_PARTIAL)
