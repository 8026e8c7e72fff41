"""``ucofia-run search``: options and messages; the work is ``runtime.search.Searcher``."""
from __future__ import annotations

import logging
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
from runtime.search.records import OUTPUT_FORMATS
from runtime.search.searcher import DEFAULT_SHORTLIST, DEFAULT_TOP_K, DEFAULT_WINDOWS_PER_FILE, GROUP_BY
from runtime.search.stage1 import STAGE1_KINDS
from ucofia.cli_support import verbosity

logger = logging.getLogger(__name__)


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--query", "queries_inline", multiple=True,
              help="A text query (repeatable). Queries longer than max_words tokens are truncated as "
                   "the reference tokenizer does (a warning names them); an empty query is an error.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), default=None,
              help="File of queries: .txt one per line, .csv with a query/sentence/caption/text column, "
                   ".json or .jsonl.")
@click.option("--like", "like_ids", multiple=True,
              help="More like this: rank videos by their similarity to an indexed video (its id; repeatable). "
                   "The video itself is left out unless --include-self.")
@click.option("--query-video", "query_videos", multiple=True, type=click.Path(path_type=Path),
              help="Search by example: a clip or image file, decoded and encoded as indexing does (repeatable). "
                   "Indexed rows of the same content (sha256) are left out unless --include-self.")
@click.option("--include-self", is_flag=True, help="With --like / --query-video: keep the query video in its results.")
@click.option("--top-k", default=DEFAULT_TOP_K, show_default=True, type=click.IntRange(min=1),
              help="Results per query.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0),
              help="Results skipped per query: a page of ranks OFFSET+1 to OFFSET+TOP_K (ranks stay absolute; "
                   "ties are broken by gallery row, so pages never overlap).")
@click.option("--filter", "filter_json", default=None, metavar="JSON",
              help='Rank only the videos (or windows) this MongoDB-style filter matches, e.g. \'{"channel": '
                   '"news", "year": {"$gte": 2020}}\'; fields: the metadata of a .jsonl/.csv --videos list and '
                   'id, duration_s, fps, width, height, frames, bytes, mtime, container (windows: file_id, start, '
                   'end); operators $eq $ne $gt $gte $lt $lte $in $nin $exists $not, $and $or. A bad filter is a '
                   'usage error (exit 2); one matching nothing gives empty results.')
@click.option("--format", "fmt", default="jsonl", show_default=True, type=click.Choice(OUTPUT_FORMATS),
              help="jsonl: one object per query {query, results: [{rank, video_id, score, levels, metadata}]} (on "
                   "windows also file_id, start, end; grouped by file also windows: [...]); csv: one row per "
                   "(query, rank) (grouped: per query, file rank and window), without the metadata.")
@click.option("-o", "--output", "out", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Output file (written atomically), or - for stdout.")
@click.option("--two-stage", is_flag=True,
              help="FAISS shortlist by the video_sentence level (+ its bias), then re-rank the shortlist "
                   "with the full fused score. For large galleries.")
@click.option("--shortlist", default=DEFAULT_SHORTLIST, show_default=True, type=click.IntRange(min=1),
              help="Videos (or windows) per query kept by the first stage of --two-stage.")
@click.option("--group-by", "group_by", default=None, type=click.Choice(GROUP_BY),
              help="On an index of time windows: 'file' (default there) returns each file once, ranked by its "
                   "best window, with its best windows; 'window' ranks windows on their own. Results carry "
                   "file_id, start and end (seconds) of each window.")
@click.option("--windows-per-file", default=DEFAULT_WINDOWS_PER_FILE, show_default=True, type=click.IntRange(min=1),
              help="With --group-by file: best windows listed per file.")
@click.option("--stage1", "stage1_kind", default="auto", show_default=True, type=click.Choice(STAGE1_KINDS),
              help="FAISS index of --two-stage's first stage: flat (exact), ivf or hnsw (approximate, for "
                   "large galleries); auto: flat up to 50,000 videos, hnsw above. Built once and cached in "
                   "the index with its parameters (INDEX/stage1-*.json).")
@click.option("--nprobe", default=None, type=click.IntRange(min=1), help="IVF cells scanned per query (default 32).")
@click.option("--ef-search", default=None, type=click.IntRange(min=1),
              help="HNSW search breadth (default 256, at least --shortlist).")
@bundle_option
@backend_option
@scorer_precision_option
@memory_option
@threads_option
@verbosity
@user_errors
def search(index_dir: Path, queries_inline: tuple[str, ...], queries_file: Path | None, like_ids: tuple[str, ...],
           query_videos: tuple[Path, ...], include_self: bool, top_k: int, offset: int, filter_json: str | None,
           fmt: str,
           out: Path, two_stage: bool, shortlist: int, group_by: str | None, windows_per_file: int,
           stage1_kind: str, nprobe: int | None, ef_search: int | None,
           bundle_dir: Path | None, backend: str, scorer_precision: str, memory_mb: float,
           threads: int | None) -> None:
    """Rank indexed videos for text queries.

    The score of a (query, video) pair is the mean over the three levels (video_sentence,
    frame_sentence, patch_word) of the level similarity plus that level's SK video bias (when the
    index was built with --bank), as the reference evaluation fuses them. On an index of time
    windows (`index --window`) each window is scored like a video, and results are grouped by file
    unless --group-by window. `ucofia-run serve` answers POST /v1/search with the same records.

    With --like or --query-video the query is a video: results are ranked by the cosine of the
    video-level features (docs/search.md, "More like this"), one JSON line per query video.
    """
    from runtime.backends.selection import split_pays_off
    from runtime.deployment import load_query_models, open_index
    from runtime.search import Searcher, SearchOptions
    from runtime.search.filters import FilterError, read_filter
    from runtime.search.records import format_results
    from runtime.sources import read_captions

    kinds = [bool(queries_inline), bool(queries_file), bool(like_ids or query_videos)]
    if sum(kinds) != 1:
        raise click.UsageError("give --query TEXT (repeatable), --queries FILE, or --like ID / --query-video FILE "
                               "(repeatable): one kind of query")
    try:
        where = None if filter_json is None else read_filter(filter_json, "--filter")
    except FilterError as exc:
        raise click.UsageError(str(exc)) from None
    if like_ids or query_videos:
        from runtime.search.similar import search_like

        if fmt != "jsonl":
            raise click.UsageError("--like and --query-video write JSON lines (--format jsonl)")
        write_output(out, search_like(index_dir, like_ids, query_videos, top_k, offset=offset, where=where,
                                      include_self=include_self, bundle_dir=bundle_dir, backend=backend,
                                      threads=threads))
        return
    texts = list(queries_inline) if queries_inline else read_captions(queries_file, "queries")
    options = SearchOptions(top_k=top_k, two_stage=two_stage, shortlist=shortlist, stage1=stage1_kind, nprobe=nprobe,
                            ef_search=ef_search, group_by=group_by, windows_per_file=windows_per_file, offset=offset,
                            where=where)
    gallery, bundle = open_index(index_dir, bundle_dir)
    # scoring every video is worth cutting the scorer's text side out for (a two-stage re-rank is not)
    models = load_query_models(bundle, backend, threads, scorer_precision,
                               split_text_side=not two_stage and split_pays_off(len(texts) * len(gallery)))
    features = models.text.encode_reporting(texts, "query")
    try:
        answer = Searcher(models.scorer, gallery, memory_mb=memory_mb).search(features, options)
    except FilterError as exc:  # a value of another type than its field holds in this index
        raise click.UsageError(str(exc)) from None
    for note in answer.notes:
        logger.warning("%s", note)
    write_output(out, format_results(texts, answer.results, fmt, grouped=answer.group_by == "file"))
