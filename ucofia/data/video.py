"""Torch-free video decoding with the reference (CLIP4Clip / UCoFiA) frame sampling, via PyAV.

The reference reads frames with OpenCV: ``fps = int(CAP_PROP_FPS)``, one seek + read per
``1 / feature_framerate`` seconds at stream frame index ``sec * fps + ind``, and the loop ends at
the first failed read. It then keeps ``max_frames`` of the frames read (``slice_framepos`` 0: the
first, 1: the last, 2: ``np.linspace`` positions), resizes the shorter side to ``image_size`` with
PIL bicubic, centre-crops, divides by 255 and applies the CLIP mean/std. Short clips are padded with
frames that are zero *in normalised space*, with ``video_mask`` 0.

This module reproduces that without OpenCV, decoding sequentially with PyAV and stopping once past
the last frame it needs:

* Frame count, fps and the seek targets follow OpenCV's FFmpeg backend (``CAP_PROP_FPS`` is the
  stream's average frame rate, ``CAP_PROP_FRAME_COUNT`` its ``nb_frames`` or, when the container
  has none, ``round(duration * fps)``; a seek is clamped to the frame count).
* Which frame an OpenCV seek returns: OpenCV seeks to the key frame before ``target - 16`` frames,
  numbers that key frame from its timestamp (``round(fps * t)``) and counts decoded frames from
  there. For constant-frame-rate streams that is exactly stream frame ``target`` (checked on
  every key frame while decoding). When a key frame's timestamp number differs from its position
  (variable frame rate), the seek is emulated: the same ``av_seek_frame`` call is made on the
  demuxer to find the key frame, and the returned frame is that key frame plus the frames OpenCV
  counts (a second decoding pass fetches them).
* Pixels: frames are converted to BGR with swscale's bicubic flag as OpenCV does (bit-identical
  to ``cv2.VideoCapture.read`` with opencv-python 5.0 / FFmpeg 8, including BT.709, full-range and
  10-bit sources), then swapped to RGB; a display-matrix rotation is applied as OpenCV's
  ``CAP_PROP_ORIENTATION_AUTO`` does (multiples of 90 degrees).

Parity (``tests/ucofia/test_video.py``, fixtures made by running the reference ``rawvideo_util`` from a
scratch folder on 30 real clips -- the 4 shipped in ``tests/data/real_clips`` and an MSR-VTT sample
kept outside the repository -- and 19 synthetic edge cases): selected frame indices are identical
on every clip and the pixels are bit-identical (max abs difference 0 in 0-255 units and 0.0 in normalised
units); the tests assert max 1/255 in 0-1 units (= 1 in uint8, about 0.0146 in normalised units).

Deviations (only where the reference crashes or silently returns an all-zero video):

* ``int(fps) < feature_framerate``: the reference asserts; we read every frame (``ind`` = 0..fps-1).
* ``int(fps) == 0`` (below 1 fps): the reference divides by zero; we use fps = 1.
* No usable frame count (no ``nb_frames`` and no duration): the reference reads nothing; we count
  the frames by decoding.
* Zero frames read, or a file that fails to open or decode: the reference prints a message and
  returns an all-zero video; we raise :class:`VideoDecodeError` (``decode_many`` records it).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ucofia.config import UCoFiAConfig

# OpenCV's seek starts this many frames before the target and widens the window by 1.5x on a miss.
_CV_SEEK_DELTA = 16
_INT_MAX = 2**31 - 1
# How many trailing index entries to inspect for the truncation check.
_TRUNCATION_CHECK_ENTRIES = 64

__all__ = [
    "DecodeOutcome",
    "DecodedVideo",
    "StreamInfo",
    "VideoDecodeError",
    "VideoSpec",
    "decode_many",
    "decode_video",
    "display_rotation_k",
    "open_video_stream",
    "preprocess_frame",
    "probe_video",
    "reference_targets",
    "select_positions",
    "to_model_input",
]


# ---------------------------------------------------------------------------------------------
# errors and settings
# ---------------------------------------------------------------------------------------------
class VideoDecodeError(ValueError):
    """A video file cannot be used: missing, empty, truncated, not a video, or undecodable."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):  # picklable across process pools
        return (type(self), (self.path, self.reason))


_FIX_REENCODE = ("re-encode it (e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`) "
                 "or remove it from the annotation file")


@dataclass(frozen=True)
class VideoSpec:
    """Frame sampling and preprocessing settings (reference dataloader conventions)."""

    image_size: int = 224
    max_frames: int = 12
    feature_framerate: int = 1
    slice_framepos: int = 2
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(f"VideoSpec.image_size must be a positive integer, got {self.image_size!r}")
        if not isinstance(self.max_frames, int) or self.max_frames <= 0:
            raise ValueError(f"VideoSpec.max_frames must be a positive integer, got {self.max_frames!r}")
        if not isinstance(self.feature_framerate, int) or self.feature_framerate <= 0:
            raise ValueError("VideoSpec.feature_framerate must be a positive integer (frames per second "
                             f"to sample), got {self.feature_framerate!r}")
        if self.slice_framepos not in (0, 1, 2):
            raise ValueError(f"VideoSpec.slice_framepos must be 0, 1 or 2, got {self.slice_framepos!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("VideoSpec.mean/std need three values each and std > 0")

    @classmethod
    def from_config(cls, cfg: UCoFiAConfig) -> VideoSpec:
        """The spec a model with config ``cfg`` expects."""
        return cls(image_size=cfg.clip.image_size, max_frames=cfg.max_frames,
                   feature_framerate=cfg.feature_framerate, slice_framepos=cfg.slice_framepos,
                   mean=tuple(cfg.image_mean), std=tuple(cfg.image_std))


@dataclass(frozen=True)
class StreamInfo:
    """What OpenCV would report for the stream, plus what decoding needs."""

    cv_fps: float          # CAP_PROP_FPS
    fps: int               # int(CAP_PROP_FPS) as the reference uses it (1 when below 1 fps)
    frame_count: int       # CAP_PROP_FRAME_COUNT (<= 0: unknown)
    nb_frames: int         # container's frame count (0: none)
    start_pts: int
    time_base: Fraction
    width: int
    height: int
    codec: str
    duration_s: float | None
    stream_index: int
    container: str = ""    # the demuxer FFmpeg recognised the file as (e.g. "mov,mp4,m4a,3gp,3g2,mj2")


@dataclass
class DecodedVideo:
    """Sampled, resized and centre-cropped frames of one clip, padded to ``max_frames``."""

    frames_uint8: np.ndarray       # [max_frames, S, S, 3] uint8, RGB; padded frames are 0
    video_mask: np.ndarray         # [max_frames] int64, 1 for real frames
    frame_indices: list[int]       # stream frame index (0-based, decode order) of each kept frame
    read_indices: list[int]        # every frame the reference reads before max_frames selection
    info: StreamInfo
    path: str = ""
    two_pass: bool = False         # True when the variable-frame-rate emulation was used
    frames_decoded: int = 0        # frames decoded in all passes (cost measure)

    @property
    def num_frames(self) -> int:
        return int(self.video_mask.sum())

    def to_model_input(self, spec: VideoSpec) -> np.ndarray:
        """Normalised float32 [max_frames, 3, S, S] (padded frames all zero)."""
        return to_model_input(self.frames_uint8, self.video_mask, spec)


# ---------------------------------------------------------------------------------------------
# sampling arithmetic (pure functions, shared with the tests)
# ---------------------------------------------------------------------------------------------
def reference_targets(frame_count: int, fps: int, feature_framerate: int,
                      start_time: int | None = None, end_time: int | None = None) -> list[int]:
    """Stream frame indices the reference seeks to, in order (before clamping to the count).

    ``total_duration = ceil(frame_count / fps)``; seconds ``start .. min(end, total_duration)``
    inclusive; ``ind`` = ``range(0, fps, fps // feature_framerate)[:feature_framerate]``.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    total_duration = (frame_count + fps - 1) // fps
    start_sec, end_sec = 0, total_duration
    if start_time is not None or end_time is not None:
        start_sec, end_sec = _check_window(start_time, end_time)
        end_sec = min(end_sec, total_duration)
    interval = max(fps // feature_framerate, 1)
    inds = list(range(0, fps, interval))[:feature_framerate]
    return [sec * fps + ind for sec in range(start_sec, end_sec + 1) for ind in inds]


def _check_window(start_time: int | None, end_time: int | None) -> tuple[int, int]:
    if not (isinstance(start_time, (int, np.integer)) and isinstance(end_time, (int, np.integer))):
        raise ValueError(f"start_time and end_time must both be integers (seconds), got "
                         f"{start_time!r}, {end_time!r}")
    if start_time < 0 or end_time <= start_time:
        raise ValueError(f"need 0 <= start_time < end_time, got {start_time}, {end_time}")
    return int(start_time), int(end_time)


def select_positions(n: int, max_frames: int, slice_framepos: int) -> list[int]:
    """Positions (into the list of frames read) that the reference keeps."""
    if n <= max_frames:
        return list(range(n))
    if slice_framepos == 0:
        return list(range(max_frames))
    if slice_framepos == 1:
        return list(range(n - max_frames, n))
    return [int(i) for i in np.linspace(0, n - 1, num=max_frames, dtype=int)]


def _cv_frame_number(ts: int, start: int, tb: float, cv_fps: float) -> int:
    """OpenCV's dts_to_frame_number: int(fps * (ts - start) * time_base + 0.5), C truncation."""
    return int(cv_fps * (float(ts - start) * tb) + 0.5)


def _picture_ts(pts: int | None, dts: int | None) -> int | None:
    """OpenCV takes the frame's pts unless it is missing or 0, then the packet dts."""
    if pts is not None and pts != 0:
        return pts
    return dts if dts is not None else pts


# ---------------------------------------------------------------------------------------------
# opening and probing
# ---------------------------------------------------------------------------------------------
def _import_av():
    import av  # local import: keeps `import ucofia.data.video` cheap

    return av


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found; check the video folder / id-to-file mapping "
                               "or drop the entry from the annotation file")
    if path.is_dir():
        raise VideoDecodeError(path, "is a directory, not a video file; point to the file itself")
    size = path.stat().st_size
    if size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes), probably an interrupted download or "
                               "copy; download or copy it again")


def _open(path: Path):
    av = _import_av()
    _check_file(path)
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.InvalidDataError, EOFError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(64)
        if _looks_like_text(head):
            reason = ("is a text file, not a video (first bytes: "
                      f"{head[:24]!r}); replace it with the real video file")
        elif b"ftyp" in head[:12]:
            reason = (f"MP4/MOV container is truncated or corrupt ({exc.__class__.__name__}: "
                      f"{_short(exc)}); download or copy it again, or {_FIX_REENCODE}")
        else:
            reason = (f"not a readable video container ({_short(exc)}); check the file, or "
                      f"{_FIX_REENCODE}")
        raise VideoDecodeError(path, reason) from None
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"FFmpeg cannot open it ({_short(exc)}); {_FIX_REENCODE}") from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:197] + "..."


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _video_stream(container: Any, path: Path):
    streams = [s for s in container.streams.video if not _is_attached_pic(s)]
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        raise VideoDecodeError(path, f"no video stream (the file has: {', '.join(kinds) or 'no streams'}); "
                               "is it an audio-only file? point the reader at the video file")
    return streams[0]


def _is_attached_pic(stream: Any) -> bool:
    """Cover art stored as a one-frame video stream (skipped: it is not the clip)."""
    try:
        from av.stream import Disposition

        return bool(stream.disposition & Disposition.attached_pic)
    except Exception:  # pragma: no cover - older PyAV
        return False


def _stream_info(container: Any, stream: Any, path: Path) -> StreamInfo:
    tb = stream.time_base or Fraction(1, 1)
    avg = stream.average_rate
    cv_fps = float(avg) if avg else 0.0
    if cv_fps < 0.000025:  # OpenCV's eps_zero fallback: 1 / time_base
        cv_fps = float(1 / tb) if tb else 0.0
    fps = int(cv_fps) if cv_fps >= 1 else 1
    nb = int(stream.frames or 0)
    duration_s: float | None = None
    if container.duration is not None and container.duration / 1_000_000 >= 0.000025:
        duration_s = container.duration / 1_000_000
    elif stream.duration is not None:
        duration_s = float(stream.duration * tb)
    if nb > 0:
        count = nb
    elif duration_s is not None:
        count = int(math.floor(duration_s * cv_fps + 0.5))
    else:
        count = 0
    cc = stream.codec_context
    return StreamInfo(cv_fps=cv_fps, fps=fps, frame_count=count, nb_frames=nb,
                      start_pts=int(stream.start_time or 0), time_base=tb,
                      width=int(cc.width or 0), height=int(cc.height or 0),
                      codec=str(cc.name), duration_s=duration_s, stream_index=stream.index,
                      container=str(getattr(container.format, "name", "") or ""))


def _check_truncation(stream: Any, path: Path) -> None:
    """Index entries pointing past the end of the file mean the download was cut short."""
    try:
        entries = stream.index_entries
        n = len(entries)
    except Exception:  # pragma: no cover - very old PyAV
        return
    if n == 0:
        return
    size = path.stat().st_size
    end = 0
    for i in range(max(0, n - _TRUNCATION_CHECK_ENTRIES), n):
        e = entries[i]
        end = max(end, int(e.pos) + int(e.size))
    if end > size:
        raise VideoDecodeError(path, f"file is truncated: the container index needs {end} bytes but the "
                               f"file has {size}; download or copy it again")


@contextlib.contextmanager
def open_video_stream(path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any, StreamInfo]]:
    """The open PyAV container, its video stream and what ``probe_video`` reports about it;
    :class:`VideoDecodeError` (with the cause and the fix) for a missing, empty or non-video file."""
    p = Path(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        yield container, stream, _stream_info(container, stream, p)


def probe_video(path: str | os.PathLike[str]) -> StreamInfo:
    """Open ``path`` and report what OpenCV would (fps, frame count) plus geometry and codec."""
    p = Path(path)
    with _open(p) as container:
        return _stream_info(container, _video_stream(container, p), p)


# ---------------------------------------------------------------------------------------------
# pixels
# ---------------------------------------------------------------------------------------------
def _frame_to_rgb(frame: Any, rotation_k: int) -> np.ndarray:
    # BGR with swscale's bicubic flag, as OpenCV converts; then swap to RGB (cv2.COLOR_BGR2RGB).
    bgr = frame.to_ndarray(format="bgr24", interpolation="BICUBIC")
    rgb = bgr[:, :, ::-1]
    if rotation_k:
        rgb = np.rot90(rgb, rotation_k)
    return np.ascontiguousarray(rgb)


def display_rotation_k(frame: Any) -> int:
    """Quarter turns for ``np.rot90`` that show ``frame`` upright (its display-matrix rotation)."""
    return _rotation_k(frame)


def _rotation_k(frame: Any) -> int:
    """np.rot90 turns matching OpenCV's auto-orientation (display matrix, multiples of 90)."""
    try:
        angle = float(frame.rotation)
    except Exception:  # pragma: no cover
        return 0
    cv_angle = (-int(round(angle))) % 360
    return {90: -1, 180: 2, 270: 1}.get(cv_angle, 0)


def preprocess_frame(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """PIL bicubic resize of the shorter side to ``image_size`` + centre crop -> uint8 [S,S,3].

    Matches torchvision ``Resize(S, BICUBIC)`` + ``CenterCrop(S)`` on PIL images: the longer side
    becomes ``int(S * long / short)``; the crop offset is ``int(round((size - S) / 2))``.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty frame")
    img = Image.fromarray(rgb)
    if img.mode != "RGB":
        img = img.convert("RGB")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = image_size, int(image_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.uint8)


def to_model_input(frames_uint8: np.ndarray, video_mask: np.ndarray, spec: VideoSpec) -> np.ndarray:
    """uint8 [F,S,S,3] + mask [F] -> float32 [F,3,S,S]: /255, (x-mean)/std, masked frames = 0.

    Uses float32 arithmetic in the same order as torchvision's ToTensor + Normalize, so the
    result is bit-identical to the reference's preprocessing of the same uint8 pixels.
    """
    frames_uint8 = np.asarray(frames_uint8)
    if frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
        raise ValueError(f"frames_uint8 must be [F,H,W,3], got shape {frames_uint8.shape}")
    mask = np.asarray(video_mask)
    if mask.shape != frames_uint8.shape[:1]:
        raise ValueError(f"video_mask shape {mask.shape} does not match {frames_uint8.shape[0]} frames")
    x = frames_uint8.astype(np.float32) / np.float32(255)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (x - mean) / std
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    x[mask == 0] = 0.0
    return x


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def _configure_decoder(stream: Any, threads: int) -> None:
    cc = stream.codec_context
    try:
        if threads == 1:
            cc.thread_count = 1
        else:
            cc.thread_type = "AUTO"
            cc.thread_count = threads  # 0 = FFmpeg picks
    except Exception:  # pragma: no cover - codec without threading
        pass


def _decode_error(path: Path, index: int, exc: BaseException) -> VideoDecodeError:
    return VideoDecodeError(path, f"undecodable or truncated stream at frame {index} "
                            f"({exc.__class__.__name__}: {_short(exc)}); {_FIX_REENCODE}")


class _VFR(Exception):
    """Raised inside the first pass when a key frame's timestamp number differs from its index."""


def _plan_reads(positions: Sequence[int], n_frames: int) -> list[int]:
    """Prefix of ``positions`` that read successfully when the stream has ``n_frames`` frames."""
    reads = []
    for p in positions:
        if p >= n_frames or p < 0:
            break
        reads.append(p)
    return reads


def decode_video(path: str | os.PathLike[str], spec: VideoSpec, *, start_time: int | None = None,
                 end_time: int | None = None, threads: int = 0) -> DecodedVideo:
    """Decode ``path`` the way the reference dataloader samples it.

    ``start_time`` / ``end_time`` (integer seconds, both or neither) restrict sampling to seconds
    ``start .. min(end, duration)`` as the reference does for DiDeMo / ActivityNet. ``threads``
    sets FFmpeg decoder threads (0: automatic, 1: single-threaded for process pools).
    Raises :class:`VideoDecodeError` for missing, empty, truncated, non-video or undecodable files.
    """
    p = Path(path)
    if start_time is not None or end_time is not None:
        _check_window(start_time, end_time)
    av = _import_av()
    with _open(p) as container:
        stream = _video_stream(container, p)
        info = _stream_info(container, stream, p)
        _check_truncation(stream, p)
        _configure_decoder(stream, threads)
        count = info.frame_count
        if count <= 0:  # no usable count: decode to count (documented deviation)
            count = _count_frames(p, threads)
            info = _replace_count(info, count)
        targets = reference_targets(count, info.fps, spec.feature_framerate, start_time, end_time)
        positions = [min(t, count) for t in targets]
        try:
            reads, stored, n_decoded = _identity_pass(container, stream, p, info, positions, spec)
            two_pass = False
        except _VFR:
            reads, stored, n_decoded = [], {}, 0
            two_pass = True
        except av.error.FFmpegError as exc:  # pragma: no cover - caught inside, kept as a guard
            raise _decode_error(p, -1, exc) from None
    if two_pass:
        reads, stored, n_decoded = _emulated_passes(p, info, targets, spec, threads)
    if not reads:
        raise VideoDecodeError(p, "no frame could be read at the sampled positions (the stream "
                               f"reports {info.frame_count} frames at {info.cv_fps:.3f} fps); "
                               f"{_FIX_REENCODE}")
    keep = select_positions(len(reads), spec.max_frames, spec.slice_framepos)
    kept_indices = [reads[k] for k in keep]
    missing = sorted({i for i in kept_indices if i not in stored})
    if missing:  # frame count in the header was wrong: fetch what the true count selects
        fetched, extra = _fetch_frames(p, set(missing), spec, threads)
        stored.update(fetched)
        n_decoded += extra
    size = spec.image_size
    frames = np.zeros((spec.max_frames, size, size, 3), dtype=np.uint8)
    mask = np.zeros((spec.max_frames,), dtype=np.int64)
    for slot, idx in enumerate(kept_indices):
        frames[slot] = stored[idx]
        mask[slot] = 1
    return DecodedVideo(frames_uint8=frames, video_mask=mask, frame_indices=kept_indices,
                        read_indices=list(reads), info=info, path=str(p), two_pass=two_pass,
                        frames_decoded=n_decoded)


def _replace_count(info: StreamInfo, count: int) -> StreamInfo:
    from dataclasses import replace

    return replace(info, frame_count=count)


def _count_frames(path: Path, threads: int) -> int:
    """Number of decodable frames (for streams that report neither a count nor a duration)."""
    av = _import_av()
    n = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        _configure_decoder(stream, threads)
        try:
            for _ in container.decode(stream):
                n += 1
        except av.error.FFmpegError as exc:
            raise _decode_error(path, n, exc) from None
    return n


def _identity_pass(container: Any, stream: Any, path: Path, info: StreamInfo, positions: Sequence[int],
                   spec: VideoSpec) -> tuple[list[int], dict[int, np.ndarray], int]:
    """Sequential decode assuming OpenCV's seek lands on stream frame == target (CFR).

    Converts only the frames that the expected read list selects; raises _VFR when a key frame's
    timestamp-derived number differs from its index (then OpenCV's seek lands elsewhere).
    """
    av = _import_av()
    n_expected = info.nb_frames if info.nb_frames > 0 else info.frame_count
    reads_expected = _plan_reads(positions, n_expected)
    keep = select_positions(len(reads_expected), spec.max_frames, spec.slice_framepos)
    needed = {reads_expected[k] for k in keep}
    # Decode until the outcome is settled: for slice_framepos 0 with enough reads, the first
    # max_frames reads; otherwise every position (EOF tells where reads start to fail).
    if spec.slice_framepos == 0 and len(reads_expected) >= spec.max_frames:
        stop = reads_expected[spec.max_frames - 1]
    else:
        stop = max(positions) if positions else 0
    tb = float(info.time_base)
    stored: dict[int, np.ndarray] = {}
    first_number: int | None = None
    rot: int | None = None
    decoded = 0
    index = -1
    try:
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            ts = _picture_ts(frame.pts, frame.dts)
            if ts is not None:
                number = _cv_frame_number(ts, info.start_pts, tb, info.cv_fps)
                if first_number is None:
                    first_number = max(number, 0)
                if frame.key_frame and number - first_number != index:
                    raise _VFR()
            if index in needed:
                if rot is None:
                    rot = _rotation_k(frame)
                stored[index] = preprocess_frame(_frame_to_rgb(frame, rot), spec.image_size)
            if index >= stop:
                break
    except av.error.FFmpegError as exc:
        raise _decode_error(path, index + 1, exc) from None
    if decoded <= stop:
        n_frames = decoded  # EOF before the last position: reads fail from there
    elif stop == (max(positions) if positions else 0):
        n_frames = stop + 1  # every position exists
    else:
        # stopped early (slice_framepos 0, enough frames): the later reads are predicted from the
        # header's frame count; they do not change which frames are kept.
        n_frames = max(n_expected, stop + 1)
    return _plan_reads(positions, n_frames), stored, decoded


def _fetch_frames(path: Path, wanted: set[int], spec: VideoSpec,
                  threads: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode sequentially; return preprocessed frames at the given stream indices + frames decoded."""
    av = _import_av()
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out, 0
    last = max(wanted)
    with _open(path) as container:
        stream = _video_stream(container, path)
        _configure_decoder(stream, threads)
        rot: int | None = None
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    if rot is None:
                        rot = _rotation_k(frame)
                    out[index] = preprocess_frame(_frame_to_rgb(frame, rot), spec.image_size)
                if index >= last:
                    break
        except av.error.FFmpegError as exc:
            raise _decode_error(path, index + 1, exc) from None
    return out, index + 1


def _emulated_passes(path: Path, info: StreamInfo, targets: Sequence[int], spec: VideoSpec,
                     threads: int) -> tuple[list[int], dict[int, np.ndarray], int]:
    """Variable frame rate: emulate OpenCV's timestamp-based seek, then fetch the frames."""
    av = _import_av()
    numbers: list[int | None] = []
    pts_to_index: dict[int, int] = {}
    with _open(path) as container:
        stream = _video_stream(container, path)
        _configure_decoder(stream, threads)
        tb = float(info.time_base)
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                ts = _picture_ts(frame.pts, frame.dts)
                numbers.append(None if ts is None else _cv_frame_number(ts, info.start_pts, tb, info.cv_fps))
                if frame.pts is not None and frame.pts not in pts_to_index:
                    pts_to_index[frame.pts] = index
        except av.error.FFmpegError as exc:
            raise _decode_error(path, index + 1, exc) from None
    n_frames = len(numbers)
    first = next((n for n in numbers if n is not None), 0)
    first = max(first, 0)
    count = info.frame_count
    reads: list[int] = []
    with _open(path) as probe:
        pstream = _video_stream(probe, path)
        for t in targets:
            r = _emulate_cv_seek(probe, pstream, info, min(t, count), numbers, first, pts_to_index)
            if r is None or r >= n_frames or r < 0:
                break
            reads.append(r)
    keep = select_positions(len(reads), spec.max_frames, spec.slice_framepos)
    stored, n_second = _fetch_frames(path, {reads[k] for k in keep}, spec, threads)
    return reads, stored, n_frames + n_second


def _landing_index(probe: Any, pstream: Any, ts: int, pts_to_index: dict[int, int]) -> int:
    """Stream index of the first frame after ``av_seek_frame(ts, AVSEEK_FLAG_BACKWARD)``."""
    try:
        probe.seek(ts, backward=True, any_frame=False, stream=pstream)
        for packet in probe.demux(pstream):
            if packet.pts is not None and packet.size:
                return pts_to_index.get(packet.pts, _nearest_index(packet.pts, pts_to_index))
    except Exception:
        pass
    return 0


def _nearest_index(pts: int, pts_to_index: dict[int, int]) -> int:
    best = min(pts_to_index, key=lambda k: (abs(k - pts), k)) if pts_to_index else None
    return pts_to_index[best] if best is not None else 0


def _emulate_cv_seek(probe: Any, pstream: Any, info: StreamInfo, target: int,
                     numbers: Sequence[int | None], first: int,
                     pts_to_index: dict[int, int]) -> int | None:
    """Stream index that ``cap.set(CAP_PROP_POS_FRAMES, target); cap.read()`` returns."""
    tb = float(info.time_base)

    def seek_ts(frame_no: int) -> int:
        sec = frame_no / info.cv_fps
        return info.start_pts + int(sec / tb + 0.5)

    if target <= 0:
        return _landing_index(probe, pstream, seek_ts(0), pts_to_index)
    delta = _CV_SEEK_DELTA
    while True:
        tmp = max(target - delta, 0)
        k = _landing_index(probe, pstream, seek_ts(tmp), pts_to_index)
        if target == 1:
            return k + 1
        n0 = numbers[k] if k < len(numbers) and numbers[k] is not None else k
        n0 -= first
        if n0 < 0 or n0 > target - 1:
            if tmp == 0 or delta >= _INT_MAX // 4:
                if info.nb_frames > 0 and n0 > info.nb_frames:
                    return None
                return k + 1
            delta = delta * 2 if delta < 16 else delta * 3 // 2
            continue
        return k + (target - n0)


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------
@dataclass
class DecodeOutcome:
    """One item of :func:`decode_many`: the decoded video, or the error that stopped it."""

    index: int
    path: str
    video: DecodedVideo | None = None
    error: VideoDecodeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _item_args(item: Any) -> tuple[str, int | None, int | None]:
    if isinstance(item, (str, os.PathLike)):
        return str(item), None, None
    if isinstance(item, tuple):
        if len(item) == 3:
            return str(item[0]), item[1], item[2]
        if len(item) == 1:
            return str(item[0]), None, None
        raise ValueError(f"decode_many items are paths or (path, start_time, end_time), got {item!r}")
    path = getattr(item, "path", None)
    if path is None:
        raise ValueError(f"decode_many items are paths, (path, start, end) or objects with .path; got {item!r}")
    return str(path), getattr(item, "start_time", None), getattr(item, "end_time", None)


def _decode_one(index: int, path: str, start: int | None, end: int | None, spec: VideoSpec,
                threads: int) -> DecodeOutcome:
    try:
        video = decode_video(path, spec, start_time=start, end_time=end, threads=threads)
        return DecodeOutcome(index, path, video=video)
    except VideoDecodeError as exc:
        return DecodeOutcome(index, path, error=exc)
    except Exception as exc:  # any other failure is reported for this item, not raised
        return DecodeOutcome(index, path, error=VideoDecodeError(path, f"{exc.__class__.__name__}: {_short(exc)}"))


def decode_many(items: Iterable[Any], spec: VideoSpec, *, workers: int = 2, processes: bool = False,
                threads_per_video: int | None = None, prefetch: int | None = None,
                failures: list[DecodeOutcome] | None = None) -> Iterator[DecodeOutcome]:
    """Decode many clips in a thread (default) or process pool; yield outcomes in input order.

    ``items`` are paths, ``(path, start_time, end_time)`` tuples or objects with ``.path`` (and
    optional ``.start_time`` / ``.end_time``, e.g. reader ``VideoItem``s). A bad file never
    raises: its outcome has ``.error`` (a :class:`VideoDecodeError` naming the file and reason)
    and is also appended to ``failures`` when given, so callers skip it and carry on.
    ``threads_per_video`` defaults to 1 when ``workers > 1`` (the pool already fills the cores).
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    threads = threads_per_video if threads_per_video is not None else (1 if workers > 1 else 0)
    window = prefetch if prefetch is not None else 2 * workers
    args = (_item_args(it) for it in items)

    def record(outcome: DecodeOutcome) -> DecodeOutcome:
        if failures is not None and not outcome.ok:
            failures.append(outcome)
        return outcome

    if workers == 1 and not processes:
        for i, (path, start, end) in enumerate(args):
            yield record(_decode_one(i, path, start, end, spec, threads))
        return
    executor: Executor
    if processes:
        import multiprocessing as mp

        executor = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    else:
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ucofia-decode")
    from collections import deque

    pending: deque = deque()
    with executor:
        for i, (path, start, end) in enumerate(args):
            pending.append(executor.submit(_decode_one, i, path, start, end, spec, threads))
            if len(pending) >= window:
                yield record(pending.popleft().result())
        while pending:
            yield record(pending.popleft().result())
