"""``ucofia-run index``: options and messages; the work is ``runtime.ingest.build_index``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from runtime.commands.common import (
    EXIT_CODES_HELP,
    backend_option,
    memory_option,
    store_option,
    threads_option,
    user_errors,
)
from runtime.errors import EXIT_PARTIAL
from runtime.ingest.job import DEFAULT_RAY_COMMIT_EVERY_S, DEFAULT_RAY_DECODE_BATCH
from runtime.ingest.local import DEFAULT_BATCH
from ucofia.cli_support import verbosity

# Failures named one by one at the end of a run; the rest are in failed.jsonl.
FAILURES_SHOWN = 10


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle directory written by `ucofia export` (manifest.json + ONNX graphs).")
@click.option("--videos", required=True, type=click.Path(path_type=Path),
              help="A folder of videos (searched recursively; id = file name without extension), a list file "
                   "with one `path` or `id<TAB>path` per line, or a .jsonl / .csv list (header) whose rows have "
                   "id, path and any other fields: the video's metadata (strings, numbers, booleans, lists of "
                   "strings), shown in search results and usable in `search --filter`.")
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
@click.option("--ray-decode-batch", default=DEFAULT_RAY_DECODE_BATCH, show_default=True, type=click.IntRange(min=1),
              help="Videos per Ray decode task (Ray's own cost is per task; smaller spreads short lists wider).")
@click.option("--ray-commit-every", default=DEFAULT_RAY_COMMIT_EVERY_S, show_default=True,
              type=click.FloatRange(min=0), metavar="SECONDS",
              help="How often the driver commits the shards that arrived (a killed driver loses at most this "
                   "much work; 0: after every batch).")
@click.option("--no-thumbnails", is_flag=True,
              help="Skip the JPEG thumbnails (INDEX/thumbnails/, one frame of each source file or window) "
                   "that `ucofia-run serve` shows; `ucofia-run thumbnails` makes them later.")
@backend_option
@memory_option
@threads_option
@verbosity
@user_errors
def index(bundle_dir: Path, videos: Path, bank: Path | None, out: Path, batch_size: int, workers: int | None,
          process_pool: bool, window: float | None, stride: float | None, store: str | None, use_ray: bool,
          ray_address: str | None, ray_cpus: int | None, ray_encoders: int | None, ray_decode_batch: int,
          ray_commit_every: float, no_thumbnails: bool, backend: str, memory_mb: float, threads: int | None) -> None:
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

    With --ray the same index is built on a Ray cluster (see docs/ray.md); a killed run resumes the
    same way.
    """
    from runtime.ingest.job import IndexRequest, RaySettings, build_index

    if not use_ray and (ray_address or ray_cpus or ray_encoders):
        raise click.UsageError("--ray-address, --ray-cpus and --ray-encoders need --ray")
    ray = RaySettings(ray_address, ray_cpus, ray_encoders, ray_decode_batch, ray_commit_every) if use_ray else None
    outcome = build_index(IndexRequest(
        bundle=bundle_dir, videos=videos, out=out, bank=bank, batch_size=batch_size, workers=workers,
        process_pool=process_pool, window=window, stride=stride, store=store, ray=ray,
        thumbnails=not no_thumbnails, backend=backend, memory_mb=memory_mb, threads=threads))
    if outcome.ray is not None and outcome.ray.videos:
        click.echo(outcome.ray.summary(), err=True)
    click.echo(outcome.summary())
    failed = outcome.failed
    if failed:
        for vid, error in failed[:FAILURES_SHOWN]:
            click.echo(f"failed: {vid}: {error}", err=True)
        more = f" ({len(failed) - FAILURES_SHOWN} more)" if len(failed) > FAILURES_SHOWN else ""
        click.echo(f"{len(failed)} {outcome.unit}s failed{more}; see {out / 'failed.jsonl'}", err=True)
        sys.exit(EXIT_PARTIAL)
