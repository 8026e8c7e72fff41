"""Test helpers for time windows: lossless test videos and spans cut out as their own files.

Both write H.264 with ``qp=0`` (lossless in the source's pixel format), so a cut-out clip decodes
to exactly the pixels the same frames have in the long file, and window-vs-clip comparisons test
the sampling, not the codec.
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from ucofia.data.windows import Span

LOSSLESS = {"qp": "0", "preset": "ultrafast", "threads": "1"}
COLOUR_FIELDS = ("color_range", "colorspace", "color_primaries", "color_trc")


def write_lossless(path: Path, frames: np.ndarray, fps: int | Fraction, pts: Sequence[int] | None = None,
                   time_base: Fraction | None = None) -> Path:
    """RGB frames [N, H, W, 3] as a lossless yuv444p H.264 mp4; ``pts`` (in ``time_base``) makes it
    variable-frame-rate, else frame i is at i / fps."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options=LOSSLESS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i if pts is None else int(pts[i])
            if time_base is not None:
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def frame_times(path: Path) -> list[Fraction]:
    """Presentation time (s, from the stream start) of every frame, in decode order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        return [max(Fraction(f.pts - start) * stream.time_base, Fraction(0)) for f in container.decode(stream)]


def cut_span(src: Path, dst: Path, span: Span) -> int:
    """Write the frames of ``src`` presented in ``span`` as their own constant-rate clip ``dst``
    (same pixel format, colour description and frame rate, losslessly); returns the frame count."""
    import av

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        start = stream.start_time or 0
        frames = [f for f in container.decode(stream) if span.holds(max(Fraction(f.pts - start) * stream.time_base, 0))]
        rate = stream.average_rate
        with av.open(str(dst), "w") as out:
            clip = out.add_stream("libx264", rate=rate, options=LOSSLESS)
            clip.width, clip.height, clip.pix_fmt = cc.width, cc.height, frames[0].format.name
            for name in COLOUR_FIELDS:
                setattr(clip.codec_context, name, getattr(cc, name))
            for i, frame in enumerate(frames):
                frame.pts, frame.time_base = i, Fraction(1) / rate
                out.mux(clip.encode(frame))
            out.mux(clip.encode(None))
    return len(frames)
