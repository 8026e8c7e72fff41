"""The long-video demo benchmark (``ucofia demo-data --long``): files of several minutes made of
scripted events at known times, one caption per event with its true span.

Each event is a demo scene (``ucofia.data.demo``: background colour and texture, an order of events
or a motion, a corner marker) drawn exactly as a demo clip of that length, so a model trained on
the demo benchmark knows the vocabulary. Events follow each other back to back in whole seconds.
Half of each file's events come with their order-swapped twin somewhere else in the same file
(same bag of words, other order), so finding the moment needs more than the file's gist. Scenes
are unique across the benchmark and never one of the default demo benchmark of the same seed
(``plan_benchmark(demo_counts(1.0), seed)``: train, val and test), so a model trained on that
benchmark sees these scenes for the first time. Layout::

    DIR/
      videos/long<N>.mp4     H.264, the demo's frame rate and size, several minutes each
      moments.csv            video_id,sentence,start,end  (one row per event; seconds, end exclusive)
      benchmark.json         settings, every event (scene, look, start, end, caption), sha256 of every file
      README.txt

Deterministic: the same seed and scale write byte-identical files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ucofia.data.demo import (
    DemoDataError,
    DemoVideo,
    Look,
    Scene,
    VideoSettings,
    _check_target,
    _csv_text,
    _library_versions,
    _random_look,
    _random_phrasing,
    _random_scene,
    _write_texts,
    demo_counts,
    describe,
    encode_mp4,
    plan_benchmark,
    render_frames,
)
from ucofia.io_utils import atomic_directory

LONG_FORMAT = "ucofia.demo-long/1"
LONG_GENERATOR_VERSION = "1"
VIDEO_DIR = "videos"
MOMENTS_CSV = "moments.csv"
BENCHMARK_JSON = "benchmark.json"
README = "README.txt"
MOMENT_COLUMNS = ("video_id", "sentence", "start", "end")
# Seed-sequence salt of the long benchmark (independent of the short benchmark's draws).
_LONG_SALT = 0x10A6


@dataclass(frozen=True)
class LongSettings:
    """Sizes of the long benchmark at --scale 1 (recorded in benchmark.json)."""

    files: int = 8
    events_per_file: int = 18
    min_event_seconds: int = 6
    max_event_seconds: int = 14
    twin_pairs_per_file: int = 4  # events whose order-swapped twin is elsewhere in the same file
    video: VideoSettings = VideoSettings()

    def __post_init__(self) -> None:
        if not (1 <= self.min_event_seconds <= self.max_event_seconds):
            raise DemoDataError("need 1 <= min_event_seconds <= max_event_seconds")
        if 2 * self.twin_pairs_per_file > self.events_per_file:
            raise DemoDataError("twin_pairs_per_file takes two events each; raise events_per_file")


@dataclass(frozen=True)
class LongEvent:
    """One scripted event of a long file: a demo scene over ``[start, start + seconds)``."""

    start: int
    seconds: int
    scene: Scene
    look: Look
    caption: str

    @property
    def end(self) -> int:
        return self.start + self.seconds


@dataclass(frozen=True)
class LongVideo:
    """One long file: its events back to back."""

    video_id: str
    events: tuple[LongEvent, ...]

    @property
    def seconds(self) -> int:
        return self.events[-1].end if self.events else 0

    @property
    def filename(self) -> str:
        return f"{self.video_id}.mp4"


def long_counts(scale: float, settings: LongSettings = LongSettings()) -> int:
    """Number of long files at ``scale`` (at least one)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise DemoDataError(f"--scale must be a positive number, got {scale!r}")
    return max(1, int(round(settings.files * scale)))


def plan_long(scale: float = 1.0, seed: int = 0, settings: LongSettings = LongSettings()) -> list[LongVideo]:
    """Every file's events, looks, times and captions (deterministic in ``seed``; no I/O)."""
    n_files = long_counts(scale, settings)
    used = {v.scene for v in plan_benchmark(demo_counts(1.0), seed, settings.video)}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _LONG_SALT]))
    side = min(settings.video.width, settings.video.height)
    videos = []
    for number in range(n_files):
        scenes: list[Scene] = []
        while len(scenes) < settings.events_per_file:
            base = _random_scene(rng)
            group = [base, dataclasses.replace(base, event=base.event.swapped())]
            if len(scenes) >= 2 * settings.twin_pairs_per_file:
                group = group[:1]
            if used.intersection(group):
                continue
            used.update(group)
            scenes.extend(group)
        order = rng.permutation(len(scenes))
        events, start = [], 0
        for idx in order:
            seconds = int(rng.integers(settings.min_event_seconds, settings.max_event_seconds + 1))
            scene = scenes[int(idx)]
            events.append(LongEvent(start, seconds, scene, _random_look(rng, side),
                                    describe(scene, _random_phrasing(rng))))
            start += seconds
        videos.append(LongVideo(f"long{number}", tuple(events)))
    return videos


def render_long(video: LongVideo, settings: VideoSettings = VideoSettings()) -> Iterator[np.ndarray]:
    """The file's RGB frames, one [seconds * fps, H, W, 3] chunk per event (each drawn exactly as
    a demo clip of that scene and length)."""
    for k, event in enumerate(video.events):
        clip = DemoVideo(video_id=f"{video.video_id}_{k}", split="test", group=0, seconds=event.seconds,
                         scene=event.scene, look=event.look, captions=(event.caption,))
        yield render_frames(clip, settings)


def _event_record(event: LongEvent) -> dict:
    s = event.scene
    return {"start": event.start, "end": event.end, "caption": event.caption,
            "background": {"colour": s.background_colour, "texture": s.texture},
            "event": {"kind": s.event.kind, "objects": [dataclasses.asdict(t) for t in s.event.objects],
                      "direction": s.event.direction},
            "marker": {"colour": s.marker_colour, "corner": s.corner}, "look": dataclasses.asdict(event.look)}


def _readme(videos: list[LongVideo], seed: int, scale: float, settings: LongSettings) -> str:
    total = sum(v.seconds for v in videos)
    events = sum(len(v.events) for v in videos)
    return f"""ucofia long-video demo benchmark ({LONG_FORMAT}, generator {LONG_GENERATOR_VERSION})
seed {seed}, scale {scale:g}: {len(videos)} files, {total} s of video, {events} events (one caption each)

  {VIDEO_DIR}/long<N>.mp4   H.264, {settings.video.fps} fps, {settings.video.width}x{settings.video.height}, events of {settings.min_event_seconds}-{settings.max_event_seconds} s back to back
  {MOMENTS_CSV}         video_id,sentence,start,end: each event's caption and true span (seconds, end exclusive)
  {BENCHMARK_JSON}       settings and every event's scene, look, span and caption; sha256 of every file

Events are scenes of the demo benchmark (`ucofia demo-data`), none of them in the default demo
benchmark of the same seed. Each file holds {settings.twin_pairs_per_file} pairs of order-swapped twins.

Moment retrieval:
  ucofia-run index --bundle BUNDLE --videos {VIDEO_DIR} --window 10 --stride 5 -o INDEX
  ucofia-run evaluate --index INDEX --annotations {MOMENTS_CSV} --dataset generic
Regenerate: ucofia demo-data --long -o DIR --seed {seed} --scale {scale:g}
"""  # noqa: E501 - the README's text, line for line


@dataclass(frozen=True)
class LongSummary:
    """What ``generate_long_demo`` wrote."""

    path: Path
    files: int
    events: int
    video_seconds: int
    bytes: int
    elapsed_s: float


def generate_long_demo(out_dir: str | Path, scale: float = 1.0, seed: int = 0, force: bool = False,
                       progress: Callable[[int, int], None] | None = None,
                       settings: LongSettings = LongSettings()) -> LongSummary:
    """Write the long-video benchmark to ``out_dir`` (built in a temporary sibling, then renamed).

    ``progress(done, total)`` is called after each file. Raises DemoDataError when ``out_dir`` is
    a non-empty directory and ``force`` is false.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoDataError(f"--seed must be a non-negative integer, got {seed!r}")
    videos = plan_long(scale, seed, settings)
    replace = _check_target(out_dir, force)
    with atomic_directory(out_dir, force=replace) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        (tmp / VIDEO_DIR).mkdir()
        for done, video in enumerate(videos, 1):
            encode_mp4(render_long(video, settings.video), tmp / VIDEO_DIR / video.filename, settings.video)
            if progress is not None:
                progress(done, len(videos))
        rows = [(v.video_id, e.caption, e.start, e.end) for v in videos for e in v.events]
        texts = {MOMENTS_CSV: _csv_text(MOMENT_COLUMNS, rows), README: _readme(videos, seed, scale, settings)}
        files = _write_texts(tmp, texts, videos)
        benchmark = {
            "format": LONG_FORMAT, "generator_version": LONG_GENERATOR_VERSION, "seed": int(seed),
            "scale": float(scale), "settings": dataclasses.asdict(settings), "versions": _library_versions(),
            "videos": [{"video_id": v.video_id, "seconds": v.seconds, "events": [_event_record(e) for e in v.events]}
                       for v in videos],
            "sha256": dict(sorted(files.items())),
        }
        (tmp / BENCHMARK_JSON).write_text(json.dumps(benchmark, indent=1) + "\n", encoding="utf-8")
        total_bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return LongSummary(path=out_dir, files=len(videos), events=len(rows), video_seconds=sum(v.seconds for v in videos),
                       bytes=total_bytes, elapsed_s=time.perf_counter() - start)
