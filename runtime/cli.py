"""``ucofia-run``: index videos, search them with text, evaluate retrieval — without torch.

Only numpy, onnxruntime, PyAV, faiss-cpu, click and tqdm are needed (TensorRT optionally).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from runtime.errors import EXIT_ERROR, EXIT_PARTIAL, RuntimeUserError
from runtime.ingest import DEFAULT_BATCH
from runtime.scoring import DEFAULT_MEMORY_MB

EXIT_CODES_HELP = ("Exit codes: 0 success; 1 error (bad input, bundle, index or backend; the message "
                   "names it); 2 bad command-line usage; 3 index written but some videos failed "
                   "(listed in INDEX/failed.jsonl); 130 interrupted (re-run the same command to resume).")
BACKEND_HELP = ("Execution backend: auto (TensorRT engines when usable, else onnxruntime CUDA when it "
                "really runs here, else CPU, with a note saying why), cpu, cuda (onnxruntime-gpu) or "
                "tensorrt (engines in the bundle).")
MEMORY_HELP = ("Working-memory budget of the scorer in MiB: tiles of texts x videos are sized so that the "
               "tiles running at once and the stored features they read fit in it, whatever the gallery "
               "size (query features and results come on top).")


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _note(message: str) -> None:
    click.echo(message, err=True)


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the runtime's user-facing errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from evaluation.metrics import MetricsError
        from ucofia.config import ConfigError

        try:
            return func(*args, **kwargs)
        except (RuntimeUserError, ConfigError, MetricsError) as exc:
            _fail(str(exc))
        except FileNotFoundError as exc:
            _fail(f"{exc.strerror}: {exc.filename}")
        except KeyboardInterrupt:
            click.echo("interrupted; finished batches are kept, re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _progress(total: int, unit: str, desc: str, quiet: bool):
    """A tqdm bar (stderr) and its update function; no-op when quiet."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, desc=desc, unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    return bar, bar.update


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
def main() -> None:
    """ucofia-run: serve an exported UCoFiA bundle for text-to-video search (no torch needed).

    \b
    1. ucofia-run index    -> encode videos into an index directory (resumable)
    2. ucofia-run search   -> top-k videos for text queries (JSONL or CSV)
    3. ucofia-run evaluate -> R@1/5/10, median and mean rank on annotated captions
    4. ucofia-run serve    -> HTTP search service and search page (pip install 'ucofia[serve]')
    Updates: ucofia-run remove / compact / merge (atomic; a killed update leaves the index as before
    or after it).
    """


index_option = click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path),
                            help="Index directory written by `ucofia-run index`.")
bundle_option = click.option("--bundle", "bundle_dir", default=None, type=click.Path(path_type=Path),
                             help="Bundle directory (default: the one recorded in the index; its "
                                  "fingerprint must match the index).")
backend_option = click.option("--backend", default="auto", show_default=True,
                              type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), help=BACKEND_HELP)
memory_option = click.option("--memory-mb", default=DEFAULT_MEMORY_MB, show_default=True, type=click.FloatRange(min=1),
                             help=MEMORY_HELP)
threads_option = click.option("--threads", default=None, type=click.IntRange(min=1),
                              help="onnxruntime intra-op threads.")
STORE_HELP = ("Feature dtype on disk, recorded in the index: float32 (default for a new index), float16 (half "
              "the bytes; fused R@1 identical in parity, see the README) or int8 (frames and patches as int8 "
              "with a scale per vector: a quarter; lossy). An existing index keeps its own; convert with "
              "`merge --store`.")
store_option = click.option("--store", default=None, type=click.Choice(["float32", "float16", "int8"]),
                            help=STORE_HELP)


# ------------------------------------------------------------------------------------------------
# index
# ------------------------------------------------------------------------------------------------
@main.command(epilog=EXIT_CODES_HELP)
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle directory written by `ucofia export` (manifest.json + ONNX graphs).")
@click.option("--videos", required=True, type=click.Path(path_type=Path),
              help="A folder of videos (searched recursively; id = file name without extension) or a "
                   "list file with one `path` or `id<TAB>path` per line.")
@click.option("--bank", type=click.Path(path_type=Path), default=None,
              help="Caption bank for the Sinkhorn-Knopp video bias (e.g. the training captions): "
                   ".txt one per line, .csv with a sentence/caption column, .json or .jsonl. Without it "
                   "search ranks by the plain mean of the three levels.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Index directory (created, or resumed when it exists).")
@click.option("--batch-size", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(min=1),
              help="Videos per encoder call and per shard (a killed run loses at most one batch).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Decoder workers (default: CPU count, at most 8).")
@click.option("--process-pool", is_flag=True, help="Decode in processes instead of threads (whole-file "
                                                    "indexing; windows are always decoded in threads).")
@click.option("--window", type=float, default=None, metavar="SECONDS",
              help="Index time windows of this length instead of whole files: each window becomes a row, "
                   "sampled like a clip of its span (12 frames at the reference frame rate; a short last "
                   "window is padded). Default: whole files, as the reference.")
@click.option("--stride", type=float, default=None, metavar="SECONDS",
              help="Seconds between window starts (default: --window, i.e. back to back; smaller overlaps).")
@store_option
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on a Ray cluster (pip install 'ucofia[ray]'): decode in CPU tasks, encode in an actor pool "
                   "(one GPU per actor where the cluster has GPUs), each batch written as a shard by its actor; "
                   "same index as without --ray. Without --ray-address Ray starts locally for the job.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Address of a running Ray cluster (`ray start --head` prints it; e.g. 10.0.0.1:6379). The index "
                   "directory, the bundle and the videos must be at the same paths on every node (shared storage).")
@click.option("--ray-cpus", default=None, type=click.IntRange(min=2),
              help="CPUs of the local Ray started without --ray-address (default: all).")
@click.option("--ray-encoders", default=None, type=click.IntRange(min=1),
              help="Encoder actors (default: one per GPU in the cluster, else one per node).")
@click.option("--ray-decode-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Videos per Ray decode task (Ray's own cost is per task; smaller spreads short lists wider).")
@click.option("--ray-commit-every", default=5.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
              help="How often the driver commits the shards that arrived (a killed driver loses at most this "
                   "much work; 0: after every batch).")
@click.option("--no-thumbnails", is_flag=True,
              help="Skip the JPEG thumbnails (INDEX/thumbnails/, one frame of each source file or window) "
                   "that `ucofia-run serve` shows; `ucofia-run thumbnails` makes them later.")
@backend_option
@memory_option
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_user_errors
def index(bundle_dir: Path, videos: Path, bank: Path | None, out: Path, batch_size: int, workers: int | None,
          process_pool: bool, window: float | None, stride: float | None, store: str | None, use_ray: bool,
          ray_address: str | None, ray_cpus: int | None, ray_encoders: int | None, ray_decode_batch: int,
          ray_commit_every: float,
          no_thumbnails: bool,
          backend: str, memory_mb: float, threads: int | None, quiet: bool) -> None:
    """Encode videos into a gallery index.

    Decodes every video (reference frame sampling), runs the video encoder in batches and appends
    the features to INDEX as .npy shards. Re-running skips videos already indexed, so an
    interrupted run resumes where it stopped; a listed video whose file content changed (sha256)
    is encoded again and replaces every row made from its old file. Videos that cannot be decoded
    are skipped, listed in INDEX/failed.jsonl and retried by the next run. With --bank, the
    per-level SK video biases are computed once over bank captions x all indexed videos
    (recomputed when either changes).

    With --window SECONDS [--stride SECONDS] each file becomes one row per time window (ids
    FILE@START-END); each file is decoded once, in one sequential pass, for all its windows.
    Search then returns the span of each result and groups results by file.

    With --ray the same index is built on a Ray cluster (see "Indexing on a Ray cluster" in the
    README); a killed run resumes the same way.
    """
    from runtime import ingest
    from runtime.backends import resolve_backend
    from runtime.bundle import load_bundle
    from runtime.index import GalleryIndex, IndexWriter
    from runtime.sources import list_videos, read_captions
    from runtime.thumbnails import ThumbnailWriter
    from runtime.vocabulary import check_tokenized_text_fits
    from runtime.windows import WindowSetting

    setting = WindowSetting.from_options(window, stride)
    ray_run = _ray_options(use_ray, ray_address, ray_cpus, ray_encoders, ray_decode_batch, ray_commit_every,
                           setting, workers, process_pool)
    bundle = load_bundle(bundle_dir)
    resolved = resolve_backend(backend, bundle, log=_note)
    pairs = list_videos(videos)
    if bank is not None:  # a bad bank fails now, not after hours of encoding
        if not bank.is_file():
            raise RuntimeUserError(f"--bank {bank}: file not found")
        read_captions(bank, "bank captions")
        check_tokenized_text_fits(bundle, "bank caption")
    workers = workers or ingest.default_workers()
    report = ingest.IngestReport(total=len(pairs))
    unit = "video" if setting is None else "window"
    with IndexWriter(out, bundle, store) as writer:
        writer.publish_later = bank is not None  # new rows appear with the biases computed at the end
        thumbnails = None if no_thumbnails else ThumbnailWriter(out)  # made while the encoder works
        start = time.perf_counter()
        check_setting(writer, setting)
        if setting is None:
            todo, replaces, report.skipped = ingest.plan_ingest(writer, pairs)
            to_encode, changed = len(todo), len(replaces)
        else:
            plans = _plan_windows(pairs, setting, writer, report, quiet)
            to_encode, changed = sum(len(p.spans) for p in plans), sum(bool(p.replaces) for p in plans)
        if report.skipped and not quiet:
            click.echo(f"resuming {out}: {report.skipped} of {report.total} {unit}s already indexed", err=True)
        if changed and not quiet:
            click.echo(f"{changed} indexed files changed content; their rows will be replaced", err=True)
        bar, update = _progress(to_encode, unit, "encoding" + (" (ray)" if ray_run else ""), quiet)
        try:
            if ray_run is not None:
                ray_times = _index_on_ray(writer, bundle, todo, replaces, ray_run, backend=backend, batch_size=batch_size,
                                          threads=threads, report=report, progress=update,
                                          thumbnails=thumbnails is not None)  # made by the decode tasks
            elif setting is None:
                ingest.encode_videos(writer, bundle, todo, backend=resolved, batch_size=batch_size, workers=workers,
                                     processes=process_pool, threads=threads, report=report, progress=update,
                                     replaces=replaces, on_stored=thumbnails.submit if thumbnails else None)
            else:
                from runtime.window_ingest import encode_windows

                encode_windows(writer, bundle, plans, setting, backend=resolved, batch_size=batch_size,
                               workers=workers, threads=threads, report=report, progress=update)
        except BaseException:
            if thumbnails is not None:
                thumbnails.abort()
            raise
        finally:
            report.seconds = time.perf_counter() - start
            if bar is not None:
                bar.close()
        if thumbnails is not None:
            entries = GalleryIndex(out, include_pending=True).entries  # rows published with the biases too
            thumb_bar, thumb_update = _progress(len(entries), unit, "thumbnails", quiet)
            made = thumbnails.close(entries, thumb_update, log=lambda m: click.echo(m, err=True))
            if thumb_bar is not None:
                thumb_bar.close()
            if not quiet or made.failed:
                click.echo(f"thumbnails: {made.summary()}", err=True)

        def bank_bar(total: int):
            return _progress(total, "pair", "bank x videos", quiet)[1]

        try:
            report.biases = ingest.update_biases(
                writer, bundle, bank, backend=resolved, memory_mb=memory_mb, threads=threads,
                log=lambda m: click.echo(m, err=True), progress_factory=bank_bar,
                compute=_ray_bank(writer, bundle, ray_run, backend) if ray_run else None)
        finally:
            if ray_run is not None:
                _ray_shutdown()
        total_indexed = len(writer.indexed)
    if ray_run is not None and ray_times.videos:
        click.echo(ray_times.summary(), err=True)
    replaced = (f"{report.replaced} of them replacing changed files" if setting is None else
                f"{report.replaced} changed files re-indexed")
    click.echo(f"indexed {report.indexed} new {unit}s ({report.videos_per_second:.2f} {unit}s/s, backend "
               f"{resolved}), {replaced}, {report.skipped} already present, {len(report.failed)} failed; "
               f"{total_indexed} {unit}s in {out}; biases: {report.biases}")
    if report.failed:
        for vid, error in report.failed[:10]:
            click.echo(f"failed: {vid}: {error}", err=True)
        more = f" ({len(report.failed) - 10} more)" if len(report.failed) > 10 else ""
        click.echo(f"{len(report.failed)} {unit}s failed{more}; see {out / 'failed.jsonl'}", err=True)
        sys.exit(EXIT_PARTIAL)


def _ray_options(use_ray: bool, address: str | None, cpus: int | None, encoders: int | None, decode_batch: int,
                 commit_every: float, setting: Any, workers: int | None, process_pool: bool) -> Any:
    """The RayOptions of an ``index --ray`` run (None without --ray); refuses what --ray cannot do."""
    if not use_ray:
        if address or cpus or encoders:
            raise click.UsageError("--ray-address, --ray-cpus and --ray-encoders need --ray")
        return None
    if setting is not None:
        raise click.UsageError("--window is not supported with --ray yet: index windows without --ray")
    if workers or process_pool:
        raise click.UsageError("--workers/--process-pool size the local decoder pool; with --ray, Ray schedules "
                               "decode tasks on every CPU of the cluster (size a local Ray with --ray-cpus)")
    if address and cpus:
        raise click.UsageError("--ray-cpus sizes a local Ray; a cluster at --ray-address has its own CPUs")
    from runtime.distributed import require_ray
    from runtime.distributed.pipeline import RayOptions

    require_ray()  # fails now, with how to install it
    return RayOptions(address=address, num_cpus=cpus, encoders=encoders, decode_batch=decode_batch,
                      commit_every_s=commit_every)


def _index_on_ray(writer: Any, bundle: Any, todo: list, replaces: dict, options: Any, **kwargs: Any) -> Any:
    """Connect to (or start) Ray and run the index pipeline (nothing to encode: Ray is not started)."""
    from runtime.distributed import require_ray
    from runtime.distributed.pipeline import RayIndexRun, StageTimes, connect

    if not todo:
        return StageTimes()
    connect(require_ray(), options)
    return RayIndexRun(writer, bundle, options=options, replaces=replaces, log=_note, **kwargs).run(todo)


def _ray_bank(writer: Any, bundle: Any, options: Any, backend: str) -> Any:
    """A ``compute`` for the biases that scores bank x gallery on Ray actors of the same cluster;
    Ray is connected only when the biases really need computing."""
    from runtime.distributed import require_ray
    from runtime.distributed.bank import ray_bank_biases
    from runtime.distributed.pipeline import actor_resources, connect

    def compute(*args: Any, **kwargs: Any) -> Any:
        ray = require_ray()
        connect(ray, options)
        actors, resources = actor_resources(ray, backend, options)
        return ray_bank_biases(ray, bundle_dir=bundle.root.resolve(), index_root=writer.root.resolve(),
                               backend=backend, actors=actors, actor_options=resources)(*args, **kwargs)

    return compute


def _ray_shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def check_setting(writer: Any, setting: Any) -> None:
    """Refuse to mix whole-file rows and windows (or two window settings) in one index."""
    from runtime.index import GalleryIndex
    from runtime.windows import check_setting as check

    check(writer.root, GalleryIndex(writer.root).entries, setting)


def _plan_windows(pairs: list, setting: Any, writer: Any, report: Any, quiet: bool) -> list:
    """Probe the files (a progress bar for long lists) and plan the windows still to index."""
    from runtime.window_ingest import changed_files, plan_files

    report.total = 0
    changed = changed_files(writer, pairs)
    bar, update = _progress(len(pairs), "file", "planning windows", quiet or len(pairs) < 100)
    try:
        plans = []
        for pair in pairs:
            plans.extend(plan_files([pair], setting, writer, report, changed))
            if update:
                update(1)
        return plans
    finally:
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------------------------
# remove / compact / merge
# ------------------------------------------------------------------------------------------------
def _settings(backend: str, bundle, memory_mb: float, threads: int | None, quiet: bool):
    """How remove/merge recompute the SK biases (None without a bundle)."""
    from runtime.backends import resolve_backend
    from runtime.ingest import BankBiases

    if bundle is None:
        return None
    return BankBiases(bundle, backend=resolve_backend(backend, bundle), memory_mb=memory_mb, threads=threads,
                      log=lambda m: click.echo(m, err=True),
                      progress_factory=lambda total: _progress(total, "pair", "bank x videos", quiet)[1])


def _bundle_for(index_dir: Path, bundle_dir: Path | None, required: bool):
    """The bundle of an index (``--bundle`` or the recorded one), or None when it is not needed and gone."""
    from runtime.bundle import load_bundle
    from runtime.index import GalleryIndex

    gallery = GalleryIndex(index_dir)
    path = bundle_dir or gallery.bundle_path
    if not required and bundle_dir is None and not (path / "manifest.json").is_file():
        return None
    bundle = load_bundle(path)
    gallery.check_bundle(bundle)
    return bundle


@main.command(epilog=EXIT_CODES_HELP)
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
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_user_errors
def remove(index_dir: Path, ids_file: Path, allow_missing: bool, bank: Path | None, bundle_dir: Path | None,
           backend: str, memory_mb: float, threads: int | None, quiet: bool) -> None:
    """Remove videos from an index; they never appear in results again.

    One atomic update: the rows are marked removed and the SK video biases are recomputed for the
    videos that remain (SK normalises over the whole gallery), so a reader sees the index before or
    after, never between. The files keep their bytes until `ucofia-run compact`.
    """
    from runtime.index import IndexWriter
    from runtime.index.updates import read_id_list, remove_videos

    ids = read_id_list(ids_file)
    bundle = _bundle_for(index_dir, bundle_dir, required=False)
    with IndexWriter(index_dir, bundle) as writer:
        done = remove_videos(writer, ids, bank=bank, allow_missing=allow_missing,
                             biases_for=_settings(backend, bundle, memory_mb, threads, quiet))
        left = len(writer.indexed)
    skipped = f", {done['missing']} not in the index (skipped)" if done["missing"] else ""
    click.echo(f"removed {done['removed']} videos{skipped}; {left} videos in {index_dir}; biases: {done['biases']}")


@main.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--rows-per-shard", default=None, type=click.IntRange(min=1),
              help="Rows per rewritten shard (default 4096); smaller shards are coalesced.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def compact(index_dir: Path, rows_per_shard: int | None, quiet: bool) -> None:
    """Reclaim the space of removed videos and coalesce small shards.

    Rewrites only the shards that hold removed rows or are small, keeps the row order (biases and
    search caches stay valid), commits atomically, then deletes the old shard files.
    """
    from runtime.index import COMPACT_ROWS, IndexWriter

    with IndexWriter(index_dir, None) as writer:
        bar, update = _progress(len(writer.indexed) + writer.index.removed_rows, "row", "compacting", quiet)
        try:
            done = writer.compact(rows_per_shard or COMPACT_ROWS, progress=update)
        finally:
            if bar is not None:
                bar.close()
    click.echo(f"compacted {index_dir}: {done['shards_before']} -> {done['shards_after']} shards, "
               f"{done['rows_reclaimed']} removed rows reclaimed")


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The merged index (a new directory; appears only when the merge is complete).")
@click.option("--on-duplicate", default="error", show_default=True, type=click.Choice(["error", "first", "last"]),
              help="An id in several inputs: refuse the merge, or keep the row of the first / last input "
                   "that has it.")
@click.option("--store", default=None, type=click.Choice(["float32", "float16", "int8"]),
              help="Stored dtype of the merged index (default: the inputs'; required when they differ). "
                   "Shards of another dtype are converted.")
@click.option("--bank", type=click.Path(path_type=Path), default=None,
              help="Caption bank for the merged gallery's SK biases (default: the one the inputs' biases "
                   "came from).")
@bundle_option
@backend_option
@memory_option
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_user_errors
def merge(inputs: tuple[Path, ...], out: Path, on_duplicate: str, store: str | None, bank: Path | None,
          bundle_dir: Path | None, backend: str, memory_mb: float, threads: int | None, quiet: bool) -> None:
    """Merge indexes of the same bundle into a new index.

    Rows keep the inputs' order (first input first). Shards are hard-linked from the inputs where
    the file system and the stored dtype allow (else copied or converted); the SK video biases
    are recomputed for the merged gallery. Built aside and renamed into place at the end: a killed
    merge leaves no output and never changes the inputs.
    """
    from runtime.index.updates import merge_indexes

    bundle = _bundle_for(inputs[0], bundle_dir, required=True)
    done = merge_indexes(list(inputs), out, bundle, on_duplicate=on_duplicate, store=store, bank=bank,
                         biases_for=_settings(backend, bundle, memory_mb, threads, quiet))
    dropped = f", {done['duplicates_dropped']} duplicate rows dropped ({on_duplicate} wins)" \
        if done["duplicates_dropped"] else ""
    click.echo(f"merged {done['inputs']} indexes into {out}: {done['videos']} videos ({done['store']}){dropped}; "
               f"biases: {done['biases']}")


# ------------------------------------------------------------------------------------------------
# shared: open index + bundle
# ------------------------------------------------------------------------------------------------
def _open(index_dir: Path, bundle_dir: Path | None, backend: str, threads: int | None):
    from runtime.backends import open_session, resolve_backend
    from runtime.bundle import load_bundle
    from runtime.index import GalleryIndex
    from runtime.scoring import Scorer
    from runtime.text import TextEncoder

    gallery = GalleryIndex(index_dir)
    bundle = load_bundle(bundle_dir or gallery.bundle_path)
    gallery.check_bundle(bundle)
    if len(gallery) == 0:
        raise RuntimeUserError(f"index {index_dir} holds no videos; run `ucofia-run index` first")
    resolved = resolve_backend(backend, bundle, log=_note)
    text = TextEncoder(bundle, resolved, threads)
    scorer = Scorer(open_session(bundle, "scorer", resolved, threads), bundle.config)
    return gallery, bundle, text, scorer


def _warn_truncated(numbers: list[int], max_words: int, what: str) -> None:
    if numbers:
        shown = ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
        click.echo(f"warning: {len(numbers)} {what}(s) longer than {max_words - 2} tokens were truncated to "
                   f"max_words={max_words} (SOT + {max_words - 2} tokens + EOT, as the reference tokenizer "
                   f"does): {what} {shown}", err=True)


def _write_output(out: Path, text: str) -> None:
    if str(out) == "-":
        sys.stdout.write(text)
        return
    from ucofia.io_utils import atomic_write_text

    atomic_write_text(out, text)


# ------------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------------
@main.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--query", "queries_inline", multiple=True,
              help="A text query (repeatable). Queries longer than max_words tokens are truncated as "
                   "the reference tokenizer does (a warning names them); an empty query is an error.")
@click.option("--queries", "queries_file", type=click.Path(path_type=Path), default=None,
              help="File of queries: .txt one per line, .csv with a query/sentence/caption/text column, "
                   ".json or .jsonl.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--format", "fmt", default="jsonl", show_default=True, type=click.Choice(["jsonl", "csv"]),
              help="jsonl: one object per query {query, results: [{rank, video_id, score, levels}]} (on windows "
                   "also file_id, start, end; grouped by file also windows: [...]); csv: one row per (query, rank) "
                   "(grouped: per query, file rank and window).")
@click.option("-o", "--output", "out", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Output file (written atomically), or - for stdout.")
@click.option("--two-stage", is_flag=True,
              help="FAISS shortlist by the video_sentence level (+ its bias), then re-rank the shortlist "
                   "with the full fused score. For large galleries.")
@click.option("--shortlist", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Videos (or windows) per query kept by the first stage of --two-stage.")
@click.option("--group-by", "group_by", default=None, type=click.Choice(["file", "window"]),
              help="On an index of time windows: 'file' (default there) returns each file once, ranked by its "
                   "best window, with its best windows; 'window' ranks windows on their own. Results carry "
                   "file_id, start and end (seconds) of each window.")
@click.option("--windows-per-file", default=3, show_default=True, type=click.IntRange(min=1),
              help="With --group-by file: best windows listed per file.")
@click.option("--stage1", "stage1_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "ivf", "hnsw"]),
              help="FAISS index of --two-stage's first stage: flat (exact), ivf or hnsw (approximate, for "
                   "large galleries); auto: flat up to 200,000 videos, hnsw above. Built once and cached in "
                   "the index with its parameters (INDEX/stage1-*.json).")
@click.option("--nprobe", default=None, type=click.IntRange(min=1), help="IVF cells scanned per query (default 32).")
@click.option("--ef-search", default=None, type=click.IntRange(min=1),
              help="HNSW search breadth (default 256, at least --shortlist).")
@bundle_option
@backend_option
@memory_option
@threads_option
@_user_errors
def search(index_dir: Path, queries_inline: tuple[str, ...], queries_file: Path | None, top_k: int, fmt: str,
           out: Path, two_stage: bool, shortlist: int, group_by: str | None, windows_per_file: int,
           stage1_kind: str, nprobe: int | None, ef_search: int | None,
           bundle_dir: Path | None, backend: str, memory_mb: float, threads: int | None) -> None:
    """Rank indexed videos for text queries.

    The score of a (query, video) pair is the mean over the three levels (video_sentence,
    frame_sentence, patch_word) of the level similarity plus that level's SK video bias (when the
    index was built with --bank), as the reference evaluation fuses them. On an index of time
    windows (`index --window`) each window is scored like a video, and results are grouped by file
    unless --group-by window.
    """
    from runtime import search as search_mod
    from runtime.sources import read_captions

    if bool(queries_inline) == bool(queries_file):
        raise click.UsageError("give --query TEXT (repeatable) or --queries FILE, not both or neither")
    texts = list(queries_inline) if queries_inline else read_captions(queries_file, "queries")
    gallery, bundle, encoder, scorer = _open(index_dir, bundle_dir, backend, threads)
    tokens = encoder.tokenize(texts, "query")
    _warn_truncated(tokens.truncated, encoder.max_words, "query")
    features = encoder.encode_ids(tokens.ids)
    params = None
    if two_stage:
        from runtime import stage1

        params = stage1.choose(stage1_kind, len(gallery), nprobe=nprobe, ef_search=ef_search)
    if search_mod.has_windows(gallery) and group_by != "window":
        from runtime import grouping

        if two_stage:
            wide = search_mod.two_stage(scorer, gallery, features, max(shortlist, top_k), max(shortlist, top_k),
                                        memory_mb, params=params)
            groups = grouping.group_rows(wide, gallery, top_k, windows_per_file)
            short = sum(len(g) < top_k for g in groups)
            if short and len(grouping.RowFiles.of(gallery).file_ids) > min(len(g) for g in groups):
                click.echo(f"note: for {short} queries the {max(shortlist, top_k)} shortlisted windows came from fewer "
                           f"than {top_k} files; raise --shortlist to see more files", err=True)
        else:
            groups = grouping.grouped_exhaustive(scorer, gallery, features, top_k, windows_per_file, memory_mb)
        _write_output(out, format_grouped(texts, grouping.to_records(groups, gallery), fmt))
        return
    if two_stage:
        top = search_mod.two_stage(scorer, gallery, features, top_k, max(shortlist, top_k), memory_mb, params=params)
    else:
        top = search_mod.exhaustive(scorer, gallery, features, top_k, memory_mb)
    result = search_mod.to_result(gallery, top)
    _write_output(out, format_results(texts, result, fmt))


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
@main.command(epilog=EXIT_CODES_HELP)
@index_option
@click.option("--annotations", required=True, type=click.Path(path_type=Path),
              help="Captions with their video ids: the MSR-VTT test CSV (key,vid_key,video_id,sentence) or "
                   "any CSV/JSON/JSONL with video_id and sentence/caption columns; optional start/end columns "
                   "(seconds: each caption's true span) add moment retrieval metrics.")
@click.option("--dataset", default="msrvtt", show_default=True, type=click.Choice(["msrvtt", "generic"]),
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
@memory_option
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def evaluate(index_dir: Path, annotations: Path, dataset: str, video_bank_dir: Path | None, no_bias: bool,
             allow_missing: bool, out: Path | None, bundle_dir: Path | None, backend: str, memory_mb: float,
             threads: int | None, quiet: bool) -> None:
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
    from runtime import evaluate as ev
    from runtime.index import GalleryIndex

    gallery, bundle, encoder, scorer = _open(index_dir, bundle_dir, backend, threads)
    ann, videos, rows = ev.select_videos(gallery, ev.load_annotations(annotations, dataset), allow_missing)
    bank = None
    if video_bank_dir is not None:
        bank = GalleryIndex(video_bank_dir)
        bank.check_bundle(bundle)
    tokens = encoder.tokenize(ann.captions, "caption")
    _warn_truncated(tokens.truncated, encoder.max_words, "caption")
    start = time.perf_counter()
    text = encoder.encode_ids(tokens.ids, "caption")
    bar, update = _progress(len(ann.captions) * len(rows), "pair", "scoring", quiet)
    try:
        report = ev.evaluate(gallery, scorer, text, ann, videos, rows, memory_mb, bank, not no_bias, update)
    finally:
        if bar is not None:
            bar.close()
    report.update({"index": str(index_dir), "annotations": str(annotations), "dataset": dataset,
                   "backend": scorer.session.backend,
                   "seconds": round(time.perf_counter() - start, 3), "bundle_fingerprint": bundle.fingerprint})
    if report["extra_gallery_videos"]:
        click.echo(f"note: the index holds {report['extra_gallery_videos']} videos that are not annotated; they "
                   f"are left out of the ranking (the stored biases were computed over all indexed videos)",
                   err=True)
    click.echo(format_metrics_table(report["metrics"],
                                    title=f"{dataset}: {report['captions']} captions x {report['videos']} videos"))
    moments = report.get("moments")
    if moments and "t2v" in moments:
        click.echo(f"moment retrieval ({moments['moments']} moments, {moments['moment_of_row']}): " +
                   "  ".join(f"{k} {v:.1f}" for k, v in moments["t2v"].items()))
    elif moments:
        click.echo(f"moment retrieval skipped: {moments['skipped']}", err=True)
    _write_output(out or index_dir / "evaluation.json", json.dumps(report, indent=2) + "\n")


def format_results(texts: list[str], result: Any, fmt: str) -> str:
    """Search results as JSONL (one object per query) or CSV (one row per query and rank)."""
    from runtime.scoring import LEVELS
    from runtime.search import hit_records

    windowed = result.file_ids is not None
    if fmt == "jsonl":
        return "".join(json.dumps({"query": text, "results": hit_records(result, q)}, ensure_ascii=False) + "\n"
                       for q, text in enumerate(texts))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["query_index", "query", "rank", "video_id", *(("file_id", "start", "end") if windowed else ()),
                     "score", *LEVELS])
    for q, text in enumerate(texts):
        for r, vid in enumerate(result.ids[q]):
            span = (result.file_ids[q][r], *result.spans[q][r]) if windowed else ()
            writer.writerow([q, text, r + 1, vid, *span, f"{result.fused[q, r]:.6g}",
                             *(f"{result.levels[lv][q, r]:.6g}" for lv in LEVELS)])
    return buf.getvalue()


def format_grouped(texts: list[str], records: list[list[dict[str, Any]]], fmt: str) -> str:
    """Results grouped by file (``runtime.grouping.to_records``) as JSONL (one object per query:
    ``{query, results: [{rank, file_id, score, video_id, start, end, levels, windows}]}``) or CSV
    (one row per query, file rank and window)."""
    from runtime.scoring import LEVELS

    if fmt == "jsonl":
        return "".join(json.dumps({"query": text, "results": hits}, ensure_ascii=False) + "\n"
                       for text, hits in zip(texts, records))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["query_index", "query", "rank", "file_id", "window_rank", "video_id", "start", "end", "score",
                     *LEVELS])
    for q, (text, hits) in enumerate(zip(texts, records)):
        for hit in hits:
            for w, window in enumerate(hit["windows"], 1):
                writer.writerow([q, text, hit["rank"], hit["file_id"], w, window["video_id"], window["start"],
                                 window["end"], f"{window['score']:.6g}",
                                 *(f"{window['levels'][lv]:.6g}" for lv in LEVELS)])
    return buf.getvalue()


# `serve`, `thumbnails` and `api-key` (runtime/serve/commands.py; the server's own dependencies are
# imported only when `serve` runs)
from runtime.serve.commands import register as _register_serve_commands  # noqa: E402

_register_serve_commands(main, sys.modules[__name__])

if __name__ == "__main__":
    main()
