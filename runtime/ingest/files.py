"""Video files against the index: what identifies a file's content, the entry a decoded file gets,
and which listed videos still need encoding (new ones, and indexed ones whose content changed).

Resumable: ids already in the index are skipped unless their file's content changed, in which case
the new features replace every row made from the old file (:func:`plan_ingest`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.index import METADATA, IndexWriter, source_key
from runtime.remote import Source, is_url, url_changed
from ucofia.data.video import DecodedVideo
from ucofia.io_utils import file_sha256


def file_identity(path: Path) -> dict[str, Any]:
    """What identifies a video file's content in an index entry: absolute path, sha256, size, mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": stat.st_size,
            "mtime": stat.st_mtime}


def unreadable_reason(exc: OSError) -> str:
    """Why a decoded video has no index entry: its file could not be read to hash it."""
    return f"cannot read the file to hash it ({exc}); check it exists and is readable"


def video_entry(video_id: str, identity: dict[str, Any], video: DecodedVideo,
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The index entry of one decoded video file (see docs/index-format.md), with the user
    ``metadata`` of its list row when it has some."""
    info = video.info
    entry = {"id": video_id, **identity, "duration_s": info.duration_s, "fps": info.cv_fps,
             "width": info.width, "height": info.height, "frames": video.num_frames}
    if info.container:  # the service's media type comes from it, not from the file name
        entry["container"] = info.container
    if metadata:
        entry[METADATA] = dict(metadata)
    return entry


def content_changed(entry: dict[str, Any], path: Source) -> bool:
    """Whether ``path`` now holds other content than the file ``entry`` was made from: same path,
    size and mtime mean unchanged; otherwise the sha256 decides. Rows without a recorded sha256
    (format 1) and files that are gone count as unchanged (remove those with ``ucofia-run remove``).
    A URL is checked by its validators (``runtime.remote.url_changed``)."""
    if is_url(path):
        return url_changed(entry, str(path))
    path = Path(path)
    sha = entry.get("sha256")
    if not sha:
        return False
    try:
        stat = path.stat()
        if (str(path.resolve()) == entry.get("path") and stat.st_size == entry.get("bytes")
                and stat.st_mtime == entry.get("mtime")):
            return False
        return file_sha256(path) != sha
    except OSError:
        return False


def plan_ingest(writer: IndexWriter, pairs: list[tuple[str, Source]]
                ) -> tuple[list[tuple[str, Source]], dict[str, list[str]], int]:
    """(videos to encode, id -> ids of the rows its new features replace, videos unchanged).

    A listed id that is indexed is encoded again when its file's content changed
    (:func:`content_changed`); its new rows then replace every row made from the same source file
    (same ``file_id`` or ``path``: all time windows of a file), in the same commit."""
    todo = [(vid, path) for vid, path in pairs if vid not in writer.indexed]
    if len(todo) == len(pairs):
        return todo, {}, 0
    index = writer.index
    by_source: dict[str, list[str]] = {}
    for entry in index.entries:
        by_source.setdefault(source_key(entry), []).append(entry["id"])
    replaces: dict[str, list[str]] = {}
    claimed: set[str] = set()
    unchanged = 0
    for vid, path in pairs:
        if vid not in writer.indexed:
            continue
        entry = index.entry(vid)
        if entry is not None and content_changed(entry, path):
            todo.append((vid, path))
            replaces[vid] = [old for old in by_source[source_key(entry)] if old not in claimed]
            claimed.update(replaces[vid])
        else:
            unchanged += 1
    return todo, replaces, unchanged
