"""``ucofia demo-data``: write the built-in synthetic demo benchmark (MSR-VTT layout)."""
from __future__ import annotations

from pathlib import Path

import click

from ucofia.cli_support import verbosity
from ucofia.data.demo import (
    DATA_JSON,
    TEST_CSV,
    TRAIN_CSV,
    VAL_CSV,
    VIDEO_DIR,
    DemoDataError,
    demo_counts,
    generate_demo,
)
from ucofia.progress import progress_bar


@click.command("demo-data")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Directory to create (must not exist or be empty, unless --force).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply the default split sizes (320 train / 64 val / 96 test videos).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed; the same seed and scale give byte-identical files.")
@click.option("--force", is_flag=True, help="Replace an existing non-empty output directory.")
@click.option("--long", "long_videos", is_flag=True,
              help="Write the long-video benchmark instead: 8 files (x --scale) of about 3 minutes, each made "
                   "of 18 scripted demo events back to back, with moments.csv (video_id,sentence,start,end: "
                   "one caption per event and its true span) for moment retrieval.")
@verbosity
def demo_data(output: Path, scale: float, seed: int, force: bool, long_videos: bool) -> None:
    """Write a deterministic synthetic video-text benchmark as real H.264 mp4 clips.

    Captions name a background (colour, texture), an order of events and a small corner marker,
    so retrieval needs the video, frame and patch levels. Layout as CLIP4Clip's MSR-VTT:
    videos/, MSRVTT_data.json, MSRVTT_train.9k.csv, MSRVTT_val.csv, MSRVTT_JSFUSION_test.csv.
    With --long: long files of scripted events at known times (videos/, moments.csv).
    """
    if long_videos:
        _long(output, scale, seed, force)
        return
    try:
        total = demo_counts(scale).total
    except DemoDataError as exc:
        raise click.BadParameter(str(exc), param_hint="--scale") from None
    with progress_bar(total, "demo-data", "video", leave=False) as bar:
        try:
            summary = generate_demo(output, scale=scale, seed=seed, force=force, progress=bar.advance_to)
        except DemoDataError as exc:
            raise click.ClickException(str(exc)) from None
    c = summary.counts
    click.echo(f"wrote {summary.path}: {c.train} train / {c.val} val / {c.test} test videos, "
               f"{summary.captions} captions, {summary.video_seconds} s of video, "
               f"{summary.bytes / 1e6:.2f} MB in {summary.elapsed_s:.1f} s (seed {seed}, scale {scale:g})")
    click.echo(f"  --data_path {summary.path / DATA_JSON} --features_path {summary.path / VIDEO_DIR}")
    click.echo(f"  --train_csv {summary.path / TRAIN_CSV} --val_csv {summary.path / TEST_CSV}"
               f" (validation: {summary.path / VAL_CSV})")


def _long(output: Path, scale: float, seed: int, force: bool) -> None:
    """``demo-data --long``: the long-video moment benchmark."""
    from ucofia.data.demo_long import MOMENTS_CSV, VIDEO_DIR, generate_long_demo, long_counts

    try:
        total = long_counts(scale)
    except DemoDataError as exc:
        raise click.BadParameter(str(exc), param_hint="--scale") from None
    with progress_bar(total, "demo-data --long", "file", leave=False) as bar:
        try:
            summary = generate_long_demo(output, scale=scale, seed=seed, force=force, progress=bar.advance_to)
        except DemoDataError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {summary.path}: {summary.files} long videos, {summary.events} events with captions and spans, "
               f"{summary.video_seconds} s of video, {summary.bytes / 1e6:.2f} MB in {summary.elapsed_s:.1f} s "
               f"(seed {seed}, scale {scale:g})")
    click.echo(f"  ucofia-run index --bundle BUNDLE --videos {summary.path / VIDEO_DIR} "
               "--window 10 --stride 5 -o INDEX")
    click.echo(f"  ucofia-run evaluate --index INDEX --annotations {summary.path / MOMENTS_CSV} --dataset generic")
