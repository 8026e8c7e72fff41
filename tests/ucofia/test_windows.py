"""Time windows: span arithmetic, and the one-pass window decoder against clips cut out of the span.

A window must come out exactly as ``decode_video`` decodes the same span cut out as its own file
(same read and kept frames, same pixels): checked on synthetic constant- and variable-frame-rate
files with whole, fractional, overlapping and gapped spans, and on real clips of ../shared.
Cut-out clips are written losslessly (tests/helpers/window_helpers.py), so pixels must match exactly
(the decode's own tolerance, 1/255, is not even needed).
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from window_helpers import cut_span, frame_times, write_lossless

from ucofia.data import window_decode
from ucofia.data.video import VideoSpec, decode_video, probe_video, reference_targets
from ucofia.data.window_decode import decode_windows
from ucofia.data.windows import (
    Span,
    WindowError,
    format_seconds,
    media_duration_ms,
    plan_spans,
    read_offsets,
    seconds_to_ms,
    stream_spans,
    window_reads,
)

SPEC = VideoSpec(image_size=16)
SHARED_CLIPS = ("data/msrvtt_1ka_sample/videos/video7138.mp4", "data/real_clips/msrvtt_original_video9771.mp4")


def _spans(pairs):
    return [Span(a, b) for a, b in pairs]


# ---- arithmetic --------------------------------------------------------------------------------
@pytest.mark.parametrize("duration, window, stride, expected", [
    (30000, 10000, 10000, [(0, 10000), (10000, 20000), (20000, 30000)]),              # exact fit
    (23000, 10000, 10000, [(0, 10000), (10000, 20000), (20000, 23000)]),              # short tail
    (23000, 10000, 5000, [(0, 10000), (5000, 15000), (10000, 20000), (15000, 23000)]),  # overlap, stop at end
    (23000, 5000, 10000, [(0, 5000), (10000, 15000), (20000, 23000)]),                # gaps
    (4000, 10000, 5000, [(0, 4000)]),                                                 # shorter than a window
    (10000, 10000, 2500, [(0, 10000)]),                                               # one window is the file
    (7500, 2500, 2500, [(0, 2500), (2500, 5000), (5000, 7500)]),                      # fractional seconds
    (0, 5000, 5000, []),
])
def test_plan_spans(duration, window, stride, expected):
    assert plan_spans(duration, window, stride) == _spans(expected)


def test_plan_spans_drops_windows_after_the_last_frame():
    # 61 frames at 3 fps: duration 20.333 s, last frame at 20.0 s
    assert plan_spans(20333, 10000, 10000, last_start_ms=20000)[-1] == Span(20000, 20333)
    assert plan_spans(20333, 10000, 10200, last_start_ms=20000) == _spans([(0, 10000), (10200, 20200)])


def test_no_window_lies_inside_another():
    rng = np.random.default_rng(0)
    for _ in range(200):
        duration, window, stride = (int(x) for x in rng.integers(1, 50_000, 3))
        spans = plan_spans(duration, window, stride)
        assert (spans[0].start_ms == 0 and spans[-1].end_ms == duration) or stride > window
        assert all(b.start_ms - a.start_ms == stride for a, b in itertools.pairwise(spans))
        assert all(s.end_ms - s.start_ms <= window for s in spans)
        assert all(a.end_ms < b.end_ms for a, b in itertools.pairwise(spans))
        assert spans[-1].end_ms == min(duration, spans[-1].start_ms + window)


def test_seconds_and_ids_on_the_millisecond_grid():
    assert [format_seconds(ms) for ms in (0, 5000, 2500, 1, 600200, 22667)] == ["0", "5", "2.5", "0.001", "600.2",
                                                                                "22.667"]
    assert seconds_to_ms(2.5, "--window") == 2500 and seconds_to_ms(0.0004 + 0.001, "--stride") == 1
    for bad in (0, -1, float("nan"), float("inf"), 0.0004, "x"):
        with pytest.raises(WindowError):
            seconds_to_ms(bad, "--window")
    assert media_duration_ms(68, 3.0, 99.0) == 22667 and media_duration_ms(0, 0.0, 4.25) == 4250
    assert Span(0, 1000).holds(Fraction(0)) and not Span(0, 1000).holds(Fraction(1))


@pytest.mark.parametrize("fps, ff", [(3, 1), (29, 1), (25, 2), (1, 2), (30, 5)])
def test_window_reads_are_what_the_reference_reads_in_a_clip(fps, ff):
    offsets = read_offsets(fps, ff)
    for n in range(1, 4 * fps + 3):
        targets = [min(t, n) for t in reference_targets(n, fps, ff)]
        reads = []
        for t in targets:  # the reference's loop: the first failed read ends it
            if t >= n:
                break
            reads.append(t)
        assert window_reads(n, fps, ff) == reads
        assert all(r % fps in offsets for r in reads)


# ---- decoding against cut-out clips -------------------------------------------------------------
def _frames(n: int, seed: int, size=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _check_against_cuts(path: Path, spans: list[Span], spec: VideoSpec, tmp: Path) -> int:
    times = frame_times(path)
    outcomes = list(decode_windows(path, spec, spans))
    assert sorted(o.span for o in outcomes) == sorted(spans)
    for k, outcome in enumerate(outcomes):
        span = outcome.span
        inside = [i for i, t in enumerate(times) if span.holds(t)]
        assert outcome.ok, outcome.error
        window = outcome.video
        assert window.read_indices[0] == inside[0] and set(window.read_indices) <= set(inside)
        clip_path = tmp / f"cut{k}.mp4"
        assert cut_span(path, clip_path, span) == len(inside)
        clip = decode_video(clip_path, spec)
        assert [i - inside[0] for i in window.frame_indices] == clip.frame_indices
        assert [i - inside[0] for i in window.read_indices] == clip.read_indices
        np.testing.assert_array_equal(window.video_mask, clip.video_mask)
        np.testing.assert_array_equal(window.frames_uint8, clip.frames_uint8)
        np.testing.assert_array_equal(window.to_model_input(spec), clip.to_model_input(spec))
    return len(outcomes)


@pytest.mark.parametrize("fps, seconds, window, stride", [(3, 41, 10000, 5000), (25, 9, 2500, 1500),
                                                          (3, 20, 4000, 7000), (3, 5, 12000, 6000)])
def test_windows_equal_clips_cut_out_of_the_span(tmp_path, fps, seconds, window, stride):
    path = write_lossless(tmp_path / "long.mp4", _frames(fps * seconds, seed=fps), fps)
    _, spans = stream_spans(probe_video(path), window, stride)
    assert _check_against_cuts(path, spans, SPEC, tmp_path) == len(spans) >= 1


def test_variable_frame_rate_windows_follow_timestamps(tmp_path):
    rng = np.random.default_rng(3)
    durations = rng.integers(120, 700, 70)  # ms between frames: 1.4 to 8 fps
    pts = np.concatenate([[0], np.cumsum(durations)[:-1]])
    path = write_lossless(tmp_path / "vfr.mp4", _frames(70, seed=4), 3, pts=pts, time_base=Fraction(1, 1000))
    info = probe_video(path)
    assert abs(info.cv_fps - 70 / (pts[-1] / 1000 + durations[-1] / 1000)) < 0.2  # really variable
    _, spans = stream_spans(info, 5000, 3000)
    assert _check_against_cuts(path, spans, SPEC, tmp_path) == len(spans)


@pytest.mark.parametrize("rel", SHARED_CLIPS)
def test_windows_of_real_clips_equal_cut_clips(shared_dir, tmp_path, rel):
    path = shared_dir / rel
    if not path.is_file():
        pytest.skip(f"{path} absent")
    _, spans = stream_spans(probe_video(path), 6000, 5000)  # 5.0 s at 29.97 fps is not a whole frame
    assert _check_against_cuts(path, spans, VideoSpec(image_size=224), tmp_path) == len(spans) > 2


def test_one_pass_that_streams_windows(tmp_path, monkeypatch):
    path = write_lossless(tmp_path / "long.mp4", _frames(3 * 60, seed=5), 3)
    opened = []
    real_open = window_decode._open
    monkeypatch.setattr(window_decode, "_open", lambda p: opened.append(p) or real_open(p))
    _, spans = stream_spans(probe_video(path), 10000, 5000)
    outcomes = decode_windows(path, SPEC, spans)
    first = next(outcomes)
    assert first.span == spans[0] and first.video.frames_decoded == 31  # out as soon as frame 30 (t=10 s) came
    rest = list(outcomes)
    assert len(opened) == 1  # one open, one sequential pass, no seek
    assert [o.span for o in rest] == spans[1:]
    assert rest[-1].video.frames_decoded == 180  # every frame decoded once


def test_windows_without_frames_report_errors(tmp_path):
    path = write_lossless(tmp_path / "short.mp4", _frames(30, seed=6), 3)  # 10 s
    spans = [Span(0, 4000), Span(9500, 9600), Span(12000, 14000)]  # 9.5-9.6 s holds no frame (9.333, 9.667)
    outcomes = {o.span: o for o in decode_windows(path, SPEC, spans)}
    assert outcomes[spans[0]].ok and outcomes[spans[0]].video.num_frames == 4
    assert "no frame in the window [9.5, 9.6) s" in str(outcomes[spans[1]].error)
    assert "starts after the end of the stream" in str(outcomes[spans[2]].error)
