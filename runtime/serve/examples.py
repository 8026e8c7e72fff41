"""The service's queries by example and captions for a video: ``like`` in ``POST /v1/search``,
``POST /v1/search/by-video`` (an uploaded clip or image) and ``POST /v1/describe``.

The work is that of the command line (``runtime.search.similar``, ``runtime.describe``) on the
current snapshot; these functions block (decode, encode, read rows) and run off the event loop.
The video encoder is loaded on the first upload only: a server that never gets one never holds it.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

from runtime.backends import open_session
from runtime.bundle import Bundle
from runtime.describe import describe_videos, rows_of
from runtime.errors import RuntimeUserError
from runtime.search.filters import Filter
from runtime.search.similar import (
    QueryVideoError,
    UploadLimits,
    VideoQuery,
    encode_query_video,
    query_by_features,
    query_by_id,
    rank_similar,
    similar_records,
)
from runtime.serve.snapshot import Snapshot
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)
UPLOAD_CHUNK = 1 << 20


class UnknownVideo(RuntimeUserError):
    """A ``like`` or ``describe`` id that is not in the index (HTTP 404)."""


class ExampleSearch:
    """Queries by example and captions for videos over the service's snapshots."""

    def __init__(self, bundle: Bundle, backend: str, threads: int | None, limits: UploadLimits) -> None:
        self.bundle = bundle
        self.backend = backend
        self.threads = threads
        self.limits = limits
        self._encoder = None
        self._lock = threading.Lock()

    def video_encoder(self):
        """The bundle's video encoder session, opened on first use."""
        with self._lock:
            if self._encoder is None:
                logger.info("loading the video encoder for queries by example")
                self._encoder = open_session(self.bundle, "video_encoder", self.backend, self.threads)
            return self._encoder

    @staticmethod
    def _ranked(snapshot: Snapshot, query: VideoQuery, top_k: int, offset: int, where: Filter | None
                ) -> list[dict[str, Any]]:
        allowed = None if where is None else snapshot.searcher.table.mask(where)
        rows = rank_similar(snapshot.index, [query], top_k, offset, allowed=allowed)[0]
        return [{**record, "levels": {}} for record in similar_records(snapshot.index, rows, offset)]

    def like(self, snapshot: Snapshot, video_id: str, top_k: int, offset: int = 0, where: Filter | None = None,
             include_self: bool = False) -> list[dict[str, Any]]:
        """Ranked records of the videos most like an indexed one."""
        if snapshot.index.row_of(video_id) is None:
            raise UnknownVideo(f"no video with id {video_id!r} in the index")
        return self._ranked(snapshot, query_by_id(snapshot.index, video_id, include_self), top_k, offset, where)

    def by_file(self, snapshot: Snapshot, path: Path, label: str, top_k: int, offset: int = 0,
                where: Filter | None = None, include_self: bool = False) -> list[dict[str, Any]]:
        """Ranked records of the videos most like an uploaded clip or image (QueryVideoError)."""
        from ucofia.data.video import VideoSpec

        vector, sha256 = encode_query_video(self.video_encoder(), VideoSpec.from_config(self.bundle.config), path,
                                            self.limits)
        query = query_by_features(snapshot.index, vector, label, sha256, include_self)
        return self._ranked(snapshot, query, top_k, offset, where)

    @staticmethod
    def describe(snapshot: Snapshot, text: TextEncoder, scorer, video_ids: list[str], captions: list[str],
                 top_k: int, memory_mb: float) -> list[dict[str, Any]]:
        """Captions ranked for each video (``runtime.describe``; QueryError for a caption with no text)."""
        for video_id in video_ids:
            try:
                rows_of(snapshot.index, video_id)
            except RuntimeUserError:  # its message names the index directory: not for a client
                raise UnknownVideo(f"no video or file with id {video_id!r} in the index") from None
        features = text.encode(captions, "caption")
        return describe_videos(snapshot.index, scorer, features, captions, video_ids, top_k, memory_mb)


def save_upload(fileobj: BinaryIO, folder: Path, max_bytes: int) -> Path:
    """Copy an upload (a file object the form parser spooled) to a new file in ``folder`` for the
    decoder; QueryVideoError (too large) past ``max_bytes``, the partial file removed."""
    fd, name = tempfile.mkstemp(dir=folder, prefix="upload-")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in iter(lambda: fileobj.read(UPLOAD_CHUNK), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise QueryVideoError(f"the uploaded file is over the limit of {max_bytes} bytes", too_large=True)
                handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
