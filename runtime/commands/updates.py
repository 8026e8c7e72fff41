"""``ucofia-run remove``, ``compact`` and ``merge``: options and messages; the work is
``runtime.index.updates`` and the index writer, with the biases computed by
``runtime.ingest.biases.BankBiases``."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.commands.common import (
    EXIT_CODES_HELP,
    STORES,
    backend_option,
    bundle_option,
    index_option,
    memory_option,
    threads_option,
    user_errors,
)
from ucofia.cli_support import verbosity


def _biases_for(backend: str, bundle, memory_mb: float, threads: int | None):
    """How the SK biases are recomputed after the update (None without a bundle)."""
    from runtime.backends import resolve_backend
    from runtime.ingest.biases import BankBiases, BiasScoring

    if bundle is None:
        return None
    return BankBiases(bundle, BiasScoring(backend=resolve_backend(backend, bundle), memory_mb=memory_mb,
                                          threads=threads))


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--ids", "ids_file", required=True, type=click.Path(path_type=Path),
              help="File of video ids to remove, one per line (an `id<TAB>path` list as given to `index "
                   "--videos` works too).")
@click.option("--allow-missing", is_flag=True, help="Skip ids that are not in the index (else nothing is removed).")
@click.option("--bank", type=click.Path(path_type=Path), default=None,
              help="Caption bank for the recomputed SK biases (default: the one the index's biases came from).")
@bundle_option
@backend_option
@memory_option
@threads_option
@verbosity
@user_errors
def remove(index_dir: Path, ids_file: Path, allow_missing: bool, bank: Path | None, bundle_dir: Path | None,
           backend: str, memory_mb: float, threads: int | None) -> None:
    """Remove videos from an index; they never appear in results again.

    One atomic update: the rows are marked removed and the SK video biases are recomputed for the
    videos that remain (SK normalises over the whole gallery), so a reader sees the index before or
    after, never between. The files keep their bytes until `ucofia-run compact`.
    """
    from runtime.deployment import bundle_of
    from runtime.index import IndexWriter
    from runtime.index.updates import read_id_list, remove_videos

    ids = read_id_list(ids_file)
    bundle = bundle_of(index_dir, bundle_dir, required=False)
    with IndexWriter(index_dir, bundle) as writer:
        done = remove_videos(writer, ids, bank=bank, allow_missing=allow_missing,
                             biases_for=_biases_for(backend, bundle, memory_mb, threads))
        left = len(writer.indexed)
    skipped = f", {done['missing']} not in the index (skipped)" if done["missing"] else ""
    click.echo(f"removed {done['removed']} videos{skipped}; {left} videos in {index_dir}; biases: {done['biases']}")


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--rows-per-shard", default=None, type=click.IntRange(min=1),
              help="Rows per rewritten shard (default 4096); smaller shards are coalesced.")
@verbosity
@user_errors
def compact(index_dir: Path, rows_per_shard: int | None) -> None:
    """Reclaim the space of removed videos and coalesce small shards.

    Rewrites only the shards that hold removed rows or are small, keeps the row order (biases and
    search caches stay valid), commits atomically, then deletes the old shard files.
    """
    from runtime.index import COMPACT_ROWS, IndexWriter
    from ucofia.progress import progress_bar

    with IndexWriter(index_dir, None) as writer, \
            progress_bar(len(writer.indexed) + writer.index.removed_rows, "compacting", "row") as update:
        done = writer.compact(rows_per_shard or COMPACT_ROWS, progress=update)
    click.echo(f"compacted {index_dir}: {done['shards_before']} -> {done['shards_after']} shards, "
               f"{done['rows_reclaimed']} removed rows reclaimed")


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The merged index (a new directory; appears only when the merge is complete).")
@click.option("--on-duplicate", default="error", show_default=True, type=click.Choice(["error", "first", "last"]),
              help="An id in several inputs: refuse the merge, or keep the row of the first / last input "
                   "that has it.")
@click.option("--store", default=None, type=click.Choice(STORES),
              help="Stored dtype of the merged index (default: the inputs'; required when they differ). "
                   "Shards of another dtype are converted.")
@click.option("--bank", type=click.Path(path_type=Path), default=None,
              help="Caption bank for the merged gallery's SK biases (default: the one the inputs' biases "
                   "came from).")
@bundle_option
@backend_option
@memory_option
@threads_option
@verbosity
@user_errors
def merge(inputs: tuple[Path, ...], out: Path, on_duplicate: str, store: str | None, bank: Path | None,
          bundle_dir: Path | None, backend: str, memory_mb: float, threads: int | None) -> None:
    """Merge indexes of the same bundle into a new index.

    Rows keep the inputs' order (first input first). Shards are hard-linked from the inputs where
    the file system and the stored dtype allow (else copied or converted); the SK video biases
    are recomputed for the merged gallery. Built aside and renamed into place at the end: a killed
    merge leaves no output and never changes the inputs.
    """
    from runtime.deployment import bundle_of
    from runtime.index.updates import merge_indexes

    bundle = bundle_of(inputs[0], bundle_dir, required=True)
    done = merge_indexes(list(inputs), out, bundle, on_duplicate=on_duplicate, store=store, bank=bank,
                         biases_for=_biases_for(backend, bundle, memory_mb, threads))
    dropped = f", {done['duplicates_dropped']} duplicate rows dropped ({on_duplicate} wins)" \
        if done["duplicates_dropped"] else ""
    click.echo(f"merged {done['inputs']} indexes into {out}: {done['videos']} videos ({done['store']}){dropped}; "
               f"biases: {done['biases']}")
