"""Thumbnails of indexed videos: one frame near the middle of the SOURCE file (not the model-size
frames), about ``LONG_SIDE`` px on the long side, as JPEG files in ``INDEX/thumbnails/``.

``ucofia-run index`` writes them after encoding, ``ucofia-run thumbnails`` backfills an existing
index, and ``ucofia-run serve`` makes a missing one on demand. The source of a URL entry is
downloaded to a temporary file for it (``runtime.remote.local_copy``). File names are derived from the
index entry (its id, content hash and time window), never from request input; every file is
written atomically, so a reader sees a whole JPEG or none.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import RuntimeUserError
from runtime.remote import RemoteError, Source, is_url, local_copy
from ucofia.io_utils import atomic_write_bytes

logger = logging.getLogger(__name__)

THUMBNAIL_DIR = "thumbnails"
LONG_SIDE = 256
JPEG_QUALITY = 82
# Where in the clip (or its time window) the frame is taken, as a fraction of its duration.
POSITION = 0.5
# After the seek to the key frame before the target, decode at most this many frames to reach it.
MAX_FRAMES_AFTER_SEEK = 48
DEFAULT_WORKERS = 2

Entry = Mapping[str, Any]


class ThumbnailError(RuntimeUserError):
    """No thumbnail can be made for an entry (no source path, or the source cannot be decoded)."""


@dataclass
class ThumbnailReport:
    """What one backfill did."""

    made: int = 0
    present: int = 0
    no_source: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.made} thumbnails made, {self.present} already present, {self.no_source} without a source "
                f"path (re-index to enable them), {len(self.failed)} failed")


def thumbnail_name(entry: Entry) -> str:
    """The file name of an entry's thumbnail: a hash of its id, content hash and window."""
    key = json.dumps([entry.get("id"), entry.get("sha256"), entry.get("start"), entry.get("end")])
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".jpg"


def thumbnail_file(index_root: str | os.PathLike[str], entry: Entry) -> Path:
    """Where the thumbnail of ``entry`` lives in the index directory."""
    return Path(index_root) / THUMBNAIL_DIR / thumbnail_name(entry)


def source_path(entry: Entry) -> Source | None:
    """The indexed source of ``entry``: a Path, a URL (a str, ``runtime.remote``), or None when
    the index did not record one."""
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        return None
    return path if is_url(path) else Path(path)


def _scaled_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_thumbnail(source: str | os.PathLike[str], start: float | None = None, end: float | None = None,
                     long_side: int = LONG_SIDE) -> bytes:
    """JPEG bytes of one frame near the middle of ``source`` (or of its [start, end] seconds).

    Seeks to the key frame before the target time and decodes forward at most
    ``MAX_FRAMES_AFTER_SEEK`` frames, so the cost is about one group of pictures, whatever the
    clip's length. Raises ThumbnailError naming the file and the cause.
    """
    import numpy as np
    from PIL import Image

    from ucofia.data.video import VideoDecodeError, display_rotation_k, open_video_stream

    try:
        with open_video_stream(source) as (container, stream, info):
            duration = info.duration_s or 0.0
            lo = max(0.0, float(start or 0.0))
            hi = float(end) if end is not None else duration
            if duration:
                hi = min(hi, duration)
            target = lo + POSITION * max(hi - lo, 0.0)
            tb = stream.time_base
            if target > 0 and tb:
                try:
                    container.seek(int(target / tb) + int(stream.start_time or 0), stream=stream, backward=True,
                                   any_frame=False)
                except Exception:  # an unseekable stream: decode from the start instead
                    container.seek(0)
            chosen = None
            for n, frame in enumerate(container.decode(stream)):
                chosen = frame
                if n + 1 >= MAX_FRAMES_AFTER_SEEK or frame.time is None or frame.time >= target:
                    break
            if chosen is None:
                raise ThumbnailError(f"cannot make a thumbnail of {source}: no frame decoded")
            width, height = _scaled_size(chosen.width, chosen.height, long_side)
            rgb = chosen.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
            turns = display_rotation_k(chosen)
            if turns:
                rgb = np.ascontiguousarray(np.rot90(rgb, turns))
    except VideoDecodeError as exc:
        raise ThumbnailError(f"cannot make a thumbnail: {exc}") from None
    except ThumbnailError:
        raise
    except Exception as exc:  # FFmpeg errors while decoding: name the file and the cause
        raise ThumbnailError(f"cannot make a thumbnail of {source}: {exc.__class__.__name__}: {exc}") from None
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def make_thumbnail(index_root: str | os.PathLike[str], entry: Entry, local: Path | None = None) -> Path | bytes:
    """The entry's thumbnail: the cached file, else a new one written atomically into the index
    (returned as bytes instead when the index directory is read-only). ``local``: a local copy of
    the entry's source to read instead (a URL's download, while indexing has it).

    Raises ThumbnailError when the entry has no source path or the source cannot be decoded."""
    path = thumbnail_file(index_root, entry)
    if path.is_file():
        return path
    source = source_path(entry) if local is None else local
    if source is None:
        raise ThumbnailError(f"video {entry.get('id')!r} has no recorded source file; re-index it with "
                             f"`ucofia-run index` to enable thumbnails and media")
    if is_url(source):  # decoded from a temporary local copy, as when it was indexed
        try:
            with local_copy(str(source)) as (copy, _):
                try:
                    data = render_thumbnail(copy, entry.get("start"), entry.get("end"))
                except ThumbnailError as exc:  # name the URL, not the temporary copy
                    raise ThumbnailError(str(exc).replace(str(copy), str(source))) from None
        except RemoteError as exc:
            raise ThumbnailError(f"cannot make a thumbnail: {exc}") from None
    else:
        data = render_thumbnail(source, entry.get("start"), entry.get("end"))
    try:
        atomic_write_bytes(path, data)
    except OSError:  # a read-only index: serve the bytes without caching them
        return data
    return path


def backfill(index_root: str | os.PathLike[str], entries: Iterable[Entry], workers: int = DEFAULT_WORKERS,
             progress: Callable[[int], None] | None = None) -> ThumbnailReport:
    """Make every missing thumbnail of ``entries`` (``workers`` decoding threads)."""
    import time

    start = time.perf_counter()
    report = ThumbnailReport()
    todo = []
    for entry in entries:
        if source_path(entry) is None:
            report.no_source += 1
        elif thumbnail_file(index_root, entry).is_file():
            report.present += 1
        else:
            todo.append(entry)
            continue
        if progress:
            progress(1)

    def one(entry: Entry) -> tuple[Entry, str | None]:
        try:
            make_thumbnail(index_root, entry)
            return entry, None
        except ThumbnailError as exc:
            return entry, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ucofia-thumb") as pool:
        for entry, error in pool.map(one, todo):
            if error is None:
                report.made += 1
            else:
                report.failed.append((str(entry.get("id")), error))
                logger.warning("%s", error)
            if progress:
                progress(1)
    report.seconds = time.perf_counter() - start
    return report


class ThumbnailWriter:
    """Makes thumbnails in the background while ``ucofia-run index`` encodes (``submit`` each
    stored batch's entries), then ``close`` waits for them and backfills any still missing
    (e.g. from a run killed earlier)."""

    def __init__(self, index_root: str | os.PathLike[str], workers: int = 1) -> None:
        self.index_root = Path(index_root)
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ucofia-thumb")
        self._futures: list[Future] = []

    def _one(self, entry: Entry) -> tuple[str, bool, str | None]:
        """(id, made, error) of one entry's thumbnail."""
        vid = str(entry.get("id"))
        if source_path(entry) is None or thumbnail_file(self.index_root, entry).is_file():
            return vid, False, None
        try:
            make_thumbnail(self.index_root, entry)
            return vid, True, None
        except ThumbnailError as exc:
            return vid, False, str(exc)

    def submit(self, entries: list[Entry]) -> None:
        """Queue thumbnails for ``entries`` (returns at once)."""
        self._futures.extend(self._pool.submit(self._one, dict(entry)) for entry in entries)

    def abort(self) -> None:
        """Drop the queued thumbnails (an interrupted run; the next run backfills them)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self, all_entries: Iterable[Entry] = (), progress: Callable[[int], None] | None = None
              ) -> ThumbnailReport:
        """Wait for the queued thumbnails, then make the missing ones of ``all_entries``."""
        import time

        start = time.perf_counter()
        outcomes = [future.result() for future in self._futures]
        self._pool.shutdown(wait=True)
        failed = [(vid, error) for vid, _, error in outcomes if error is not None]
        failed_ids = {vid for vid, _ in failed}
        for _, error in failed:
            logger.warning("%s", error)
        report = backfill(self.index_root, [e for e in all_entries if str(e.get("id")) not in failed_ids],
                          self.workers, progress)
        made_now = sum(1 for _, made, _ in outcomes if made)
        report.made += made_now
        report.present = max(0, report.present - made_now)  # backfill found them on disk
        report.failed = failed + report.failed
        report.seconds = time.perf_counter() - start
        return report
