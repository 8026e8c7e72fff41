"""More like this: rank indexed videos by their similarity to a video (search by example).

The query is an indexed video (``like``: its stored features) or a clip or image file encoded by
the bundle's video encoder (:func:`encode_query_video`, with limits on size, length and pixels).

The video-to-video score is the cosine similarity of the two videos' video-level features (the
``video`` role: the masked mean of the frame embeddings in CLIP's joint space, the vector the
video-sentence level compares with a sentence). UCoFiA's other two levels align *words* with
frames and patches (ISA weights learned over text tokens) and have no video-to-video form; the
video-level vector is the one the model trains to stand for the whole clip, is symmetric, and
costs one dot product a row. Rows are read one role, one chunk at a time.

By default the query video is left out of its own results: for ``like`` its row, for a file every
indexed row made from the same content (the entry's sha256), so an uploaded copy of an indexed
file ranks the rest of the gallery exactly as ``like`` on its id does.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import RuntimeUserError
from runtime.index import GalleryIndex, file_of, is_windowed, metadata_of, span_of
from runtime.search.filters import Filter, MetadataTable

VIDEO_ROLE = "video"
ROWS_PER_READ = 65536
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_UPLOAD_SECONDS = 600.0
DEFAULT_MAX_UPLOAD_PIXELS = 4096 * 4096
Record = dict[str, Any]

logger = logging.getLogger(__name__)


class QueryVideoError(RuntimeUserError):
    """A query video that cannot be used; ``too_large`` says whether a limit refused it (HTTP 413)
    rather than its content (422)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class UploadLimits:
    """What a query video file may be: bytes, seconds and pixels per frame."""

    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_seconds: float = DEFAULT_MAX_UPLOAD_SECONDS
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS


@dataclass
class VideoQuery:
    """A unit-length video-level vector and the rows left out of its results."""

    vector: np.ndarray
    label: str
    exclude: frozenset[int] = field(default_factory=frozenset)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, np.float32(1))


def query_by_id(gallery: GalleryIndex, video_id: str, include_self: bool = False) -> VideoQuery:
    """The stored video-level vector of an indexed row (``video_id`` as search reports it)."""
    row = gallery.row_of(video_id)
    if row is None:
        raise RuntimeUserError(f"no video {video_id!r} in the index {gallery.root}: --like takes an id as "
                               f"`ucofia-run search` reports it (video_id)")
    vector = gallery.features(row, row + 1, roles=(VIDEO_ROLE,))[VIDEO_ROLE][0]
    return VideoQuery(unit(vector), video_id, frozenset() if include_self else frozenset({row}))


def rows_with_content(gallery: GalleryIndex, sha256: str) -> frozenset[int]:
    """Rows indexed from a file with this content (entries' sha256)."""
    return frozenset(r for r, entry in enumerate(gallery.entries) if entry.get("sha256") == sha256)


def query_by_features(gallery: GalleryIndex, vector: np.ndarray, label: str, sha256: str | None,
                      include_self: bool = False) -> VideoQuery:
    """A query from an encoded file's video-level vector; its own content left out unless asked."""
    exclude = frozenset() if include_self or sha256 is None else rows_with_content(gallery, sha256)
    return VideoQuery(unit(vector), label, exclude)


def rank_similar(gallery: GalleryIndex, queries: Sequence[VideoQuery], top_k: int, offset: int = 0,
                 rows_per_read: int = ROWS_PER_READ, allowed: np.ndarray | None = None
                 ) -> list[list[tuple[int, float]]]:
    """Per query, (row, cosine) of ranks ``offset + 1 .. offset + top_k`` (ties: lower row first);
    ``allowed``: a boolean row mask (a filter's), None for every row."""
    if not queries:
        return []
    if allowed is not None and not allowed.any():
        return [[] for _ in queries]
    matrix = np.stack([q.vector for q in queries]).astype(np.float32)
    keep = offset + top_k
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(gallery), rows_per_read):
        stop = min(start + rows_per_read, len(gallery))
        scores = matrix @ unit(gallery.features(start, stop, roles=(VIDEO_ROLE,))[VIDEO_ROLE]).T
        if allowed is not None:
            scores[:, ~allowed[start:stop]] = -np.inf
        for q, query in enumerate(queries):
            for row in query.exclude:
                if start <= row < stop:
                    scores[q, row - start] = -np.inf
        rows = np.broadcast_to(np.arange(start, stop), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        order = np.lexsort((best_rows, -best_scores), axis=1)[:, :keep]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_rows = np.take_along_axis(best_rows, order, axis=1)
    ranked = []
    for q in range(len(queries)):
        pairs = [(int(r), float(s)) for r, s in zip(best_rows[q], best_scores[q], strict=True) if np.isfinite(s)]
        ranked.append(pairs[offset:keep])
    return ranked


def similar_records(gallery: GalleryIndex, ranked: list[tuple[int, float]], offset: int = 0) -> list[Record]:
    """Records ``{rank, video_id, [file_id, start, end,] score, metadata}`` of one query's ranked rows."""
    entries = gallery.entries
    records = []
    for n, (row, score) in enumerate(ranked, offset + 1):
        record: Record = {"rank": n, "video_id": gallery.ids[row]}
        if is_windowed(entries[row]):
            start, end = span_of(entries[row])
            record.update({"file_id": file_of(entries[row]), "start": start, "end": end})
        record.update({"score": score, "metadata": metadata_of(entries[row])})
        records.append(record)
    return records


def check_upload(path: Path, limits: UploadLimits) -> str:
    """The file's sha256 once its size is within the limit (QueryVideoError naming it else)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise QueryVideoError(f"query video {path}: cannot read it ({exc})") from None
    if size == 0:
        raise QueryVideoError(f"query video {path} is empty")
    if size > limits.max_bytes:
        raise QueryVideoError(f"query video {path} holds {size} bytes, over the limit of {limits.max_bytes}",
                              too_large=True)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_query_video(encoder, spec, path: Path, limits: UploadLimits) -> tuple[np.ndarray, str]:
    """(video-level vector, sha256) of a clip or image file, decoded as indexing decodes it and
    encoded by the video encoder session ``encoder``; QueryVideoError when it breaks a limit or
    cannot be decoded."""
    from ucofia.data.video import VideoDecodeError, decode_video, probe_video

    sha256 = check_upload(path, limits)
    try:
        info = probe_video(path)
    except VideoDecodeError as exc:
        raise QueryVideoError(f"query video {path} cannot be decoded: {exc}") from None
    if info.width * info.height > limits.max_pixels:
        raise QueryVideoError(f"query video {path} is {info.width}x{info.height}, over the limit of "
                              f"{limits.max_pixels} pixels a frame", too_large=True)
    if info.duration_s is not None and info.duration_s > limits.max_seconds:
        raise QueryVideoError(f"query video {path} lasts {info.duration_s:.1f} s, over the limit of "
                              f"{limits.max_seconds:g} s", too_large=True)
    try:
        video = decode_video(path, spec)
    except VideoDecodeError as exc:
        raise QueryVideoError(f"query video {path} cannot be decoded: {exc}") from None
    mask = video.video_mask[None].astype(np.float32)
    out = encoder.run({"frames": video.to_model_input(spec)[None], "video_mask": mask})
    return np.asarray(out[VIDEO_ROLE][0], dtype=np.float32), sha256


def search_like(index_dir: Path, like_ids: Sequence[str], query_videos: Sequence[Path], top_k: int, *,
                offset: int = 0, where: Filter | None = None, include_self: bool = False,
                bundle_dir: Path | None = None, backend: str = "auto", threads: int | None = None,
                limits: UploadLimits = UploadLimits()) -> str:
    """JSON lines ``{"like": id | "query_video": path, "results": [...]}`` for ``ucofia-run search
    --like / --query-video`` (the video encoder is loaded only for files)."""
    import json

    from runtime.deployment import open_index

    gallery, bundle = open_index(index_dir, bundle_dir)
    queries = [query_by_id(gallery, video_id, include_self) for video_id in like_ids]
    labels: list[tuple[str, str]] = [("like", video_id) for video_id in like_ids]
    if query_videos:
        from runtime.backends import open_session
        from ucofia.data.video import VideoSpec

        encoder = open_session(bundle, "video_encoder", backend, threads)
        spec = VideoSpec.from_config(bundle.config)
        for path in query_videos:
            vector, sha256 = encode_query_video(encoder, spec, Path(path), limits)
            queries.append(query_by_features(gallery, vector, str(path), sha256, include_self))
            labels.append(("query_video", str(path)))
    allowed = None if where is None else MetadataTable(gallery.entries).mask(where)
    ranked = rank_similar(gallery, queries, top_k, offset, allowed=allowed)
    return "".join(json.dumps({key: label, "results": similar_records(gallery, rows, offset)}, ensure_ascii=False)
                   + "\n" for (key, label), rows in zip(labels, ranked, strict=True))
