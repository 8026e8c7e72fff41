"""The media route for a video indexed from a URL (``runtime.remote``): the service proxies it.

The URL is checked first (one HEAD / metadata request): unreachable -> 404, another size or
validator than at indexing -> 409. A single byte range is fetched from the remote with a ranged
read and answered 206; several ranges, or none, get the whole file (200), streamed in chunks.
The ETag is the indexed content hash, so a client's cached copy stays valid while the URL serves
the same content.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from runtime.errors import RuntimeUserError
from runtime.remote import read_range, stat
from runtime.serve.contract import media_type_of

logger = logging.getLogger(__name__)


def parse_single_range(byte_range: str, size: int) -> tuple[int, int] | None:
    """[start, end) of a one-part Range header (RANGE_PATTERN) within ``size`` bytes; None for
    several parts (the whole file is sent); ValueError when unsatisfiable."""
    parts = byte_range.split("=", 1)[1].split(",")
    if len(parts) != 1:
        return None
    first, _, last = parts[0].strip().partition("-")
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    else:
        start, end = max(size - int(last), 0), size
    if start >= size or end <= start:
        raise ValueError(byte_range)
    return start, end


def _changed(entry: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    for name in ("bytes", "etag", "last_modified"):
        if entry.get(name) is not None and now.get(name) is not None and entry[name] != now[name]:
            return True
    return False


async def url_media(video_id: str, entry: Mapping[str, Any], url: str, byte_range: str | None,
                    if_range: str | None, if_none_match: str | None, head: bool, cache: str) -> Response:
    """The response of ``GET /v1/videos/{id}/media`` for a URL source (see the module doc)."""
    try:
        now = await run_in_threadpool(stat, url)
    except RuntimeUserError as exc:  # RemoteError, or the protocol's extra missing
        logger.warning("media of %r: %s", video_id, exc)
        raise HTTPException(404, f"the source URL of video {video_id!r} cannot be reached now (details in the "
                                 f"server log)") from None
    if _changed(entry, now):
        raise HTTPException(409, f"the source URL of video {video_id!r} serves other content than when it was "
                                 f"indexed; re-index it with `ucofia-run index`")
    size = now.get("bytes", entry.get("bytes"))
    if size is None:
        raise HTTPException(404, f"the source URL of video {video_id!r} does not say its size; it cannot be "
                                 f"proxied")
    etag = f'"{str(entry.get("sha256", ""))[:32]}"'
    headers = {"Cache-Control": cache, "ETag": etag, "Accept-Ranges": "bytes"}
    if if_none_match and etag in [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    media_type = media_type_of(Path(url.split("?", 1)[0]).suffix, entry.get("container"))
    span, status = (0, size), 200
    if byte_range is not None and (if_range is None or if_range == etag):
        try:
            part = parse_single_range(byte_range, size)
        except ValueError:
            raise HTTPException(416, f"the range {byte_range!r} cannot be served from the file's {size} bytes",
                                headers={"Content-Range": f"bytes */{size}"}) from None
        if part is not None:
            span, status = part, 206
            headers["Content-Range"] = f"bytes {part[0]}-{part[1] - 1}/{size}"
    headers["Content-Length"] = str(span[1] - span[0])
    if head:
        return Response(status_code=status, headers=headers, media_type=media_type)
    body: Iterator[bytes] = read_range(url, span[0], span[1])
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)
