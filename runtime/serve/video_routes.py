"""The video routes of the service (a FastAPI router): an indexed video's metadata, its thumbnail
and its source file (local files with HTTP Range; URL sources proxied by
``runtime.serve.remote_media``). Specific routes come first: ids may contain '/'."""
# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from runtime.index import metadata_of
from runtime.serve.auth import MEDIA, THUMBNAIL
from runtime.serve.contract import (
    BINARY,
    CONTENT_RANGE,
    INTERNAL,
    MULTIPART_RANGES,
    NOT_FOUND_VIDEO,
    NOT_MODIFIED,
    RANGE_PATTERN,
    SOURCE_MEDIA_TYPES,
    THUMBNAIL_TYPE,
    VideoInfo,
    error,
    media_type_of,
)
from runtime.serve.file_responses import (
    HeadAwareFileResponse,
    etag_matches,
    not_modified,
    range_applies,
    unsatisfiable,
)
from runtime.serve.guard import head_only
from runtime.serve.remote_media import url_media
from runtime.serve.responses import public_entry
from runtime.serve.service import SearchService
from runtime.thumbnails import ThumbnailError, make_thumbnail, source_path

MEDIA_CACHE = "private, max-age=300"

logger = logging.getLogger(__name__)


def video_routes(service: SearchService, metrics: Any, search_auth: dict[str, Any],
                 media_protected: Callable[[str], dict[str, Any]], entry_or_404: Callable[[Any, str], dict[str, Any]],
                 links: Callable[..., dict[str, str]]) -> APIRouter:
    """The router; ``search_auth`` / ``media_protected(kind)``: the dependencies and responses of a
    search-scope route and of a thumbnail or media route (a key, or a signed link)."""
    router = APIRouter()
    # ---- videos (specific routes first: ids may contain '/') ---------------------------------------
    source_types = dict.fromkeys(SOURCE_MEDIA_TYPES, BINARY)
    if_none_match = Header(alias="If-None-Match", description="the ETag of a copy the client holds: 304 while it is "
                                                              "still the current one")
    thumbnail_auth = media_protected(THUMBNAIL)

    @router.get("/v1/videos/{video_id:path}/thumbnail", tags=["videos"], operation_id="thumbnail",
             response_class=Response, summary="A JPEG thumbnail of an indexed video",
             dependencies=thumbnail_auth["dependencies"],
             responses={200: {"description": "the thumbnail", "content": {THUMBNAIL_TYPE: BINARY}}, **NOT_MODIFIED,
                        **thumbnail_auth["responses"],
                        404: error("no video with this id; or it was indexed without its source file, or that file "
                                   "cannot be decoded"), **INTERNAL})
    async def thumbnail(video_id: str, request: Request,
                        etag: Annotated[str | None, if_none_match] = None) -> Response:
        snapshot = service.snapshot
        entry = entry_or_404(snapshot, video_id)
        assert service.thumbnail_slots is not None
        async with service.thumbnail_slots:
            try:
                made = await run_in_threadpool(make_thumbnail, snapshot.index.root, entry)
            except ThumbnailError as exc:
                metrics.errors.labels("thumbnail").inc()
                logger.warning("thumbnail of %r: %s", video_id, exc)
                if source_path(entry) is None:
                    raise HTTPException(404, f"video {video_id!r} was indexed without its source file; re-index "
                                             f"it with `ucofia-run index` to enable thumbnails") from None
                raise HTTPException(404, f"no thumbnail for video {video_id!r}: its source file cannot be decoded "
                                         f"(details in the server log)") from None
        headers = {"Cache-Control": MEDIA_CACHE}
        if isinstance(made, Path):
            reply: Response = HeadAwareFileResponse(made, media_type=THUMBNAIL_TYPE, headers=headers,
                                                    stat_result=made.stat(), head=head_only(request.scope))
        else:
            headers["ETag"] = f'"{hashlib.sha256(made).hexdigest()[:32]}"'
            reply = Response(made, media_type=THUMBNAIL_TYPE, headers=headers)
        if etag_matches(request, reply.headers.get("etag")):
            return not_modified(reply.headers["etag"], MEDIA_CACHE)
        return reply

    media_auth = media_protected(MEDIA)

    @router.get("/v1/videos/{video_id:path}/media", tags=["videos"], operation_id="media",
             response_class=Response, summary="The indexed source file (HTTP Range supported)",
             dependencies=media_auth["dependencies"],
             responses={200: {"description": "the whole file; its type from the container format recorded at "
                                             "indexing", "content": source_types},
                        206: {"description": "the requested range (several: multipart/byteranges)",
                              "content": {**source_types, MULTIPART_RANGES: BINARY}},
                        **NOT_MODIFIED, **media_auth["responses"],
                        404: error("no video with this id; or it was indexed without its source file, or that file "
                                   "is no longer there (a URL source: it cannot be reached)"),
                        409: error("the source file changed since it was indexed (its size or modification time; "
                                   "a URL's size, ETag or Last-Modified): re-index it"),
                        416: error("a range that starts past the end of the file, or ends before it starts",
                                   CONTENT_RANGE),
                        422: error("the Range header is not a byte range (the pattern)"), **INTERNAL})
    async def media(video_id: str, request: Request,
                    byte_range: Annotated[str | None, Header(
                        alias="Range", pattern=RANGE_PATTERN,
                        description="bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX, several comma-separated: "
                                    "206 with the bytes asked for; more than 100 ranges: the whole file")] = None,
                    if_range: Annotated[str | None, Header(
                        alias="If-Range", description="an ETag or Last-Modified value of the file: the range "
                                                      "applies only while the file still has it")] = None,
                    etag: Annotated[str | None, if_none_match] = None) -> Response:
        entry = entry_or_404(service.snapshot, video_id)
        path = source_path(entry)
        if path is None:
            raise HTTPException(404, f"video {video_id!r} was indexed without its source file (an index written "
                                     f"before format 2); re-index it with `ucofia-run index` to enable media")
        if isinstance(path, str):  # a URL: proxied (runtime.serve.remote_media)
            return await url_media(video_id, entry, path, byte_range, if_range, request.headers.get("if-none-match"),
                                   head_only(request.scope), MEDIA_CACHE)
        try:
            stat = path.stat()
        except OSError:
            raise HTTPException(404, f"the source file of video {video_id!r} is no longer where it was indexed; "
                                     f"restore it or re-index") from None
        if ((entry.get("bytes") is not None and stat.st_size != entry["bytes"])
                or (entry.get("mtime") is not None and stat.st_mtime != entry["mtime"])):
            raise HTTPException(409, f"the source file of video {video_id!r} changed since it was indexed; "
                                     f"re-index it with `ucofia-run index`")
        reply = HeadAwareFileResponse(path, media_type=media_type_of(path.suffix, entry.get("container")),
                                      stat_result=stat, headers={"Cache-Control": MEDIA_CACHE},
                                      head=head_only(request.scope))
        if etag_matches(request, reply.headers.get("etag")):
            return not_modified(reply.headers["etag"], MEDIA_CACHE)
        if byte_range is not None and range_applies(if_range, reply) and unsatisfiable(byte_range, stat.st_size):
            raise HTTPException(416, f"the range {byte_range!r} cannot be served from the file's {stat.st_size} "
                                     f"bytes", headers={"Content-Range": f"bytes */{stat.st_size}"})
        return reply

    video_auth = search_auth

    @router.get("/v1/videos/{video_id:path}", tags=["videos"], operation_id="video", response_model=VideoInfo,
             dependencies=video_auth["dependencies"], summary="An indexed video's metadata",
             responses={**video_auth["responses"], 404: NOT_FOUND_VIDEO, **INTERNAL})
    async def video(video_id: str, request: Request) -> dict[str, Any]:
        snapshot = service.snapshot
        entry = entry_or_404(snapshot, video_id)
        return {"id": video_id, "row": snapshot.index.row_of(video_id), "has_media": source_path(entry) is not None,
                "metadata": metadata_of(entry), "entry": public_entry(entry), "links": links(request, video_id, entry)}

    return router
