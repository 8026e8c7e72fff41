"""One sequential decoding pass that serves every time window of a video file.

:func:`decode_windows` reads the file once from the start (no seek back, no second pass) and
yields each window as soon as the decoder has passed its end, so memory holds only the sampled
frames of the windows still open, whatever the file's length. Each window comes out exactly as
:func:`ucofia.data.video.decode_video` decodes a clip made of that span's frames (same read
positions, same kept frames, same pixels): a span's frames are those presented at a time in
``[start, end)`` (``ucofia.data.windows``), sampled with the reference arithmetic of a clip of
that many frames at ``fps = int(CAP_PROP_FPS)`` of the file.

Constant-frame-rate files: that is what the reference reads from a clip cut out of the span
(``tests/ucofia/test_windows.py`` cuts such clips and compares). Variable-frame-rate files: spans are
cut by the frames' timestamps as well, and inside a span the frames are sampled by position, as
the reference's OpenCV reads land on constant-rate streams; the reference's timestamp-based seek
emulation (``decode_video``'s second pass on VFR files) is not applied inside windows, since it
needs a second pass over the file and depends on the key frames of the cut-out file.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ucofia.data.video import (
    DecodedVideo,
    StreamInfo,
    VideoDecodeError,
    VideoSpec,
    _check_truncation,
    _configure_decoder,
    _decode_error,
    _frame_to_rgb,
    _import_av,
    _open,
    _rotation_k,
    _stream_info,
    _video_stream,
    preprocess_frame,
    select_positions,
)
from ucofia.data.windows import Span, format_seconds, is_read_position, read_offsets, window_reads

__all__ = ["WindowOutcome", "decode_windows"]


@dataclass
class WindowOutcome:
    """One window of :func:`decode_windows`: its decoded clip, or why it has none."""

    span: Span
    video: DecodedVideo | None = None
    error: VideoDecodeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Open:
    span: Span
    first: int  # stream index of the span's first frame


@dataclass
class _Pass:
    """State of the decoding pass: sampled frames kept for the windows still open."""

    path: Path
    info: StreamInfo
    spec: VideoSpec
    offsets: frozenset[int]
    store: dict[int, np.ndarray] = field(default_factory=dict)
    rotation: int | None = None

    def wanted(self, index: int, active: Sequence[_Open]) -> bool:
        return any(is_read_position(index - w.first, self.info.fps, self.offsets) for w in active)

    def keep(self, index: int, frame: Any) -> None:
        if self.rotation is None:
            self.rotation = _rotation_k(frame)
        self.store[index] = preprocess_frame(_frame_to_rgb(frame, self.rotation), self.spec.image_size)

    def evict(self, active: Sequence[_Open]) -> None:
        """Drop frames before the first frame of every open window (no open window reads them)."""
        oldest = min((w.first for w in active), default=None)
        if oldest is None:
            self.store.clear()
        else:
            for index in [i for i in self.store if i < oldest]:
                del self.store[index]

    def finish(self, window: _Open, stop: int, decoded: int) -> WindowOutcome:
        """The clip of frames ``[window.first, stop)``, sampled as the reference samples a clip."""
        n = stop - window.first
        reads = [window.first + r for r in window_reads(n, self.info.fps, self.spec.feature_framerate)]
        kept = [reads[k] for k in select_positions(len(reads), self.spec.max_frames, self.spec.slice_framepos)]
        size = self.spec.image_size
        frames = np.zeros((self.spec.max_frames, size, size, 3), dtype=np.uint8)
        mask = np.zeros((self.spec.max_frames,), dtype=np.int64)
        for slot, index in enumerate(kept):
            frames[slot] = self.store[index]
            mask[slot] = 1
        video = DecodedVideo(frames_uint8=frames, video_mask=mask, frame_indices=kept, read_indices=reads,
                             info=self.info, path=str(self.path), frames_decoded=decoded)
        return WindowOutcome(window.span, video=video)

    def empty(self, span: Span, why: str) -> WindowOutcome:
        where = f"[{format_seconds(span.start_ms)}, {format_seconds(span.end_ms)}) s"
        return WindowOutcome(span, error=VideoDecodeError(self.path, f"no frame in the window {where}: {why}"))


def _frame_time(frame: Any, info: StreamInfo, previous: Fraction | None) -> Fraction:
    """Presentation time of ``frame`` in seconds from the stream start (exact), never decreasing.

    Frames without a timestamp are placed one frame period after the previous one.
    """
    ts = frame.pts if frame.pts is not None else frame.dts
    if ts is None:
        period = Fraction(1) / Fraction(info.cv_fps if info.cv_fps > 0 else 1).limit_denominator(1_000_000)
        t = Fraction(0) if previous is None else previous + period
    else:
        t = max(Fraction(ts - info.start_pts) * info.time_base, Fraction(0))
    return t if previous is None else max(t, previous)


def decode_windows(path: str | os.PathLike[str], spec: VideoSpec, spans: Sequence[Span], *,
                   threads: int = 0) -> Iterator[WindowOutcome]:
    """Decode ``path`` once and yield one :class:`WindowOutcome` per span, in the order the spans
    end (the order of ``spans`` when they are sorted and equally long, as planned windows are).

    A window that holds no frame, or that the decoder could not reach (the stream is damaged
    after the windows already yielded), comes out with ``.error`` set; the file itself failing to
    open raises :class:`VideoDecodeError` before anything is yielded. ``threads``: FFmpeg decoder
    threads (0: automatic).
    """
    p = Path(path)
    pending = sorted(set(spans))
    if not pending:
        return
    av = _import_av()
    with _open(p) as container:
        stream = _video_stream(container, p)
        info = _stream_info(container, stream, p)
        _check_truncation(stream, p)
        _configure_decoder(stream, threads)
        state = _Pass(p, info, spec, read_offsets(info.fps, spec.feature_framerate))
        active: list[_Open] = []
        next_span = 0
        index = -1
        t: Fraction | None = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = _frame_time(frame, info, t)
                for window in [w for w in active if w.span.end_time <= t]:  # this frame is past them
                    active.remove(window)
                    yield state.finish(window, index, index + 1)
                while next_span < len(pending) and pending[next_span].start_time <= t:
                    span = pending[next_span]
                    next_span += 1
                    if t >= span.end_time:
                        yield state.empty(span, "the stream has no frame presented in it")
                    else:
                        active.append(_Open(span, index))
                if state.wanted(index, active):
                    state.keep(index, frame)
                state.evict(active)
                if next_span == len(pending) and not active:
                    return
        except av.error.FFmpegError as exc:
            error = _decode_error(p, index + 1, exc)
            for window in active:
                yield WindowOutcome(window.span, error=error)
            for span in pending[next_span:]:
                yield WindowOutcome(span, error=error)
            return
    decoded = index + 1
    for window in active:  # the stream ended inside them
        yield state.finish(window, decoded, decoded)
    last = "no frame" if t is None else f"the last frame is presented at {float(t):.3f} s"
    for span in pending[next_span:]:
        yield state.empty(span, f"the window starts after the end of the stream ({last})")
