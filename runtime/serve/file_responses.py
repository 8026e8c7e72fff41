"""File answers of the service (the page, thumbnails, media): HEAD passed on as GET, If-None-Match,
and the Range cases Starlette's ``FileResponse`` would answer in plain text."""
# No `from __future__ import annotations`: kept like the route modules that use these.
from typing import Any

from fastapi import Request, Response
from fastapi.responses import FileResponse

# Starlette serves the whole file for a Range of more parts than this (FileResponse.max_ranges).
MAX_RANGES = getattr(FileResponse, "max_ranges", 100)


class HeadAwareFileResponse(FileResponse):
    """A FileResponse that sends its headers only for a HEAD the guard passed on as GET."""

    def __init__(self, *args: Any, head: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = head

    async def __call__(self, scope, receive, send) -> None:
        await super().__call__({**scope, "method": "HEAD"} if self.head else scope, receive, send)


def etag_matches(request: Request, etag: str | None) -> bool:
    """Whether If-None-Match names ``etag`` (weak comparison, as RFC 9110 wants for it) or is *."""
    header = request.headers.get("if-none-match")
    if not header or not etag:
        return False
    if header.strip() == "*":
        return True
    return etag.removeprefix("W/") in [tag.strip().removeprefix("W/") for tag in header.split(",")]


def not_modified(etag: str, cache_control: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})


def range_applies(if_range: str | None, reply: FileResponse) -> bool:
    """Whether Starlette will honour the Range header: no If-Range, or one naming the file's
    strong ETag or Last-Modified (as ``FileResponse`` decides)."""
    if if_range is None:
        return True
    return not if_range.startswith("W/") and if_range in (reply.headers.get("etag"), reply.headers.get("last-modified"))


def unsatisfiable(byte_range: str, size: int) -> bool:
    """Whether a Range header (matching RANGE_PATTERN) has a part that starts past the end of a
    file of ``size`` bytes or ends before it starts -- where Starlette's FileResponse would answer
    a plain-text 416 or 400; the route answers 416 with a JSON body instead. Parts are read as
    FileResponse reads them."""
    parts = byte_range.split("=", 1)[1].split(",")
    if len(parts) > MAX_RANGES:
        return False  # FileResponse serves the whole file
    for part in parts:
        first, _, last = part.strip().partition("-")
        if first:
            start = int(first)
            end = int(last) + 1 if last and int(last) < size else size
        else:
            start, end = max(size - int(last), 0), size
        if not 0 <= start < size or start >= end:
            return True
    return False
