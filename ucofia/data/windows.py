"""Time windows over a long video: which spans to index, and which frames a span samples.

Pure arithmetic (no I/O), shared by the one-pass window decoder (``ucofia.data.window_decode``),
the runtime's windowed indexing and the tests.

Spans live on a millisecond grid (``Span.start_ms`` / ``end_ms``, integers) so that span ids are
exact and stable across runs and frame membership is decided with exact rationals. A span is
half-open: frame ``i`` belongs to ``[start, end)`` when its presentation time
``(pts - stream start) * time_base`` is ``>= start`` and ``< end``.

Inside a span the frames are sampled exactly as the reference samples a clip made of just those
frames (a clip of ``n`` frames at ``fps = int(CAP_PROP_FPS)``): read positions
``sec * fps + ind`` for ``sec = 0 .. ceil(n / fps)`` (the read at or past ``n`` fails and ends the
loop), then ``select_positions`` keeps ``max_frames`` of them. This is *not* the reference's own
``start_time`` / ``end_time`` window (DiDeMo / ActivityNet loaders, ``decode_video(start_time=...,
end_time=...)``): that one takes integer seconds only and reads second ``end`` too (both ends
inclusive), so it samples one frame from past the span; a clip cut out of the span never does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from ucofia.data.video import reference_targets

if TYPE_CHECKING:  # pragma: no cover
    from ucofia.data.video import StreamInfo

MS_PER_SECOND = 1000


class WindowError(ValueError):
    """A window or stride setting that cannot be used (the message names it and the fix)."""


@dataclass(frozen=True, order=True)
class Span:
    """A half-open time span ``[start_ms, end_ms)`` of a video, in integer milliseconds."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if not (0 <= self.start_ms < self.end_ms):
            raise WindowError(f"a span needs 0 <= start < end, got [{self.start_ms}, {self.end_ms}) ms")

    @property
    def start(self) -> float:
        """Start in seconds."""
        return self.start_ms / MS_PER_SECOND

    @property
    def end(self) -> float:
        """End in seconds (exclusive)."""
        return self.end_ms / MS_PER_SECOND

    @property
    def start_time(self) -> Fraction:
        return Fraction(self.start_ms, MS_PER_SECOND)

    @property
    def end_time(self) -> Fraction:
        return Fraction(self.end_ms, MS_PER_SECOND)

    def holds(self, t: Fraction) -> bool:
        """Whether a frame presented at ``t`` seconds belongs to the span."""
        return self.start_time <= t < self.end_time


def seconds_to_ms(seconds: float, what: str) -> int:
    """``seconds`` as whole milliseconds; WindowError unless it is finite, positive and >= 1 ms."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise WindowError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise WindowError(f"{what} must be a positive number of seconds, got {seconds!r}")
    ms = int(round(value * MS_PER_SECOND))
    if ms < 1:
        raise WindowError(f"{what} must be at least 0.001 s (spans are on a millisecond grid), got {seconds!r}")
    return ms


def format_seconds(ms: int) -> str:
    """Milliseconds as the shortest exact decimal seconds: 5000 -> '5', 2500 -> '2.5', 1 -> '0.001'."""
    whole, frac = divmod(int(ms), MS_PER_SECOND)
    return str(whole) if frac == 0 else f"{whole}.{frac:03d}".rstrip("0")


def media_duration_ms(frame_count: int, fps: float, fallback_s: float | None) -> int:
    """The span of time a video covers, in ms: ``frame_count / fps`` (what OpenCV reports as its
    length, and the time just after its last frame for constant frame rates), else ``fallback_s``
    (the container or stream duration). 0 when neither is known."""
    if frame_count > 0 and fps > 0:
        return int(math.floor(frame_count * MS_PER_SECOND / fps + 0.5))
    if fallback_s is not None and fallback_s > 0:
        return int(math.floor(fallback_s * MS_PER_SECOND + 0.5))
    return 0


def plan_spans(duration_ms: int, window_ms: int, stride_ms: int, last_start_ms: int | None = None) -> list[Span]:
    """The windows of a video of ``duration_ms``: starts ``0, stride, 2*stride, ...``, each
    ``window_ms`` long, the last one cut at the end of the video (a short tail).

    Windows stop at the first one that reaches the end, so no window lies inside the one before
    it; with a stride larger than the window the gaps between windows are not indexed. A video
    shorter than one window gives one window over the whole video. ``last_start_ms`` (e.g. the
    time of the last frame) drops windows that would start after it and so hold no frame.
    """
    if window_ms <= 0 or stride_ms <= 0:
        raise WindowError(f"window and stride must be positive, got {window_ms} and {stride_ms} ms")
    if duration_ms <= 0:
        return []
    limit = duration_ms - 1 if last_start_ms is None else min(last_start_ms, duration_ms - 1)
    spans: list[Span] = []
    start = 0
    while start <= limit:
        end = min(start + window_ms, duration_ms)
        spans.append(Span(start, end))
        if end >= duration_ms:
            break
        start += stride_ms
    return spans


def read_offsets(fps: int, feature_framerate: int) -> frozenset[int]:
    """Offsets within each second (``ind``) the reference reads: ``range(0, fps, fps // ff)[:ff]``."""
    return frozenset(t for t in reference_targets(1, fps, feature_framerate) if t < fps)


def is_read_position(position: int, fps: int, offsets: frozenset[int]) -> bool:
    """Whether the reference reads frame ``position`` (0-based within a clip) of a long enough clip."""
    return position % fps in offsets


def window_reads(n_frames: int, fps: int, feature_framerate: int) -> list[int]:
    """Positions (0-based within the span) the reference reads in a clip of ``n_frames`` frames:
    its seek targets up to the first one at or past the clip's end."""
    return [t for t in reference_targets(n_frames, fps, feature_framerate) if t < n_frames]


def stream_spans(info: StreamInfo, window_ms: int, stride_ms: int) -> tuple[int, list[Span]]:
    """(duration in ms, windows) of a probed stream (see :func:`media_duration_ms`, :func:`plan_spans`).

    Windows that would start after the last frame (``(frame_count - 1) / fps``) are dropped.
    """
    duration = media_duration_ms(info.frame_count, info.cv_fps, info.duration_s)
    last = None
    if info.frame_count > 0 and info.cv_fps > 0:
        last = int(math.floor((info.frame_count - 1) * MS_PER_SECOND / info.cv_fps))
    return duration, plan_spans(duration, window_ms, stride_ms, last)
