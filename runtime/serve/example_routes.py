"""Routes of the queries by example and of captions for videos (a FastAPI router):

* ``POST /v1/search`` with ``like`` (answered here, without the text batcher: no model runs);
* ``POST /v1/search/by-video``: a clip or image uploaded as ``multipart/form-data``;
* ``POST /v1/describe``: captions ranked for indexed videos.

The answers have the shape of a text search's (records with entry, metadata and links) or
``DescribeResponse``; the work runs off the event loop (``runtime.serve.examples``).
"""
# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from runtime.errors import QueryError
from runtime.search.filters import FilterError, parse_filter, read_filter
from runtime.search.similar import QueryVideoError
from runtime.serve.contract import BODY_ERRORS, INTERNAL, DescribeResponse, SearchResponse, error
from runtime.serve.examples import ExampleSearch, UnknownVideo, save_upload
from runtime.serve.responses import ChunkedResponse, Responder
from runtime.serve.service import SearchService


def like_answer_head(top_k: int, offset: int) -> dict[str, Any]:
    """The fields before ``results`` in the answer to a query by example."""
    return {"mode": "exhaustive", "group_by": None, "top_k": top_k, "offset": offset}


def example_routes(service: SearchService, examples: ExampleSearch, responder: Responder, auth: dict[str, Any],
                   describe_model: type, ensure_ready: Callable[[], None],
                   key_id: Callable[[Request], str | None]
                   ) -> tuple[APIRouter, Callable[[Any, Request], Awaitable[Response]]]:
    """(the router, the handler the search route gives a ``like`` request); ``auth``: the
    dependencies and responses of a search-scope route."""
    router = APIRouter()
    settings = service.settings

    async def answer(request: Request, label: dict[str, str], records: list[dict[str, Any]], top_k: int, offset: int,
                     snapshot, started: float) -> Response:
        query = {"query": None, **label, "truncated": False, "results": records}
        elapsed = round((time.monotonic() - started) * 1000, 3)
        tail = {"snapshot": snapshot.describe(), "batch": {"queries": 1, "requests": 1},
                "timings": {"queue_ms": 0.0, "encode_ms": 0.0, "score_ms": elapsed, "total_ms": elapsed}}
        content = await responder.search_body(like_answer_head(top_k, offset), [query], snapshot,
                                              request.scope.get("root_path", ""), key_id(request), tail)
        return ChunkedResponse(content, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def like(body: Any, request: Request) -> Response:
        """``POST /v1/search`` with ``like`` (called by the search route)."""
        ensure_ready()
        started = time.monotonic()
        snapshot = service.snapshot
        where = None if body.filter is None else parse_filter(body.filter)
        try:
            records = await run_in_threadpool(examples.like, snapshot, body.like, body.top_k, body.offset, where,
                                              body.include_self)
        except UnknownVideo as exc:
            raise HTTPException(404, str(exc)) from None
        except FilterError as exc:
            raise HTTPException(422, str(exc)) from None
        return await answer(request, {"like": body.like}, records, body.top_k, body.offset, snapshot, started)

    @router.post("/v1/search/by-video", tags=["search"], operation_id="search_by_video", response_model=SearchResponse,
                 dependencies=auth["dependencies"], summary="Rank the indexed videos by their similarity to an "
                                                            "uploaded clip or image",
                 responses={**BODY_ERRORS, **auth["responses"],
                            411: error("the upload has no Content-Length"),
                            413: error("the file is over --max-upload-mb, lasts longer than the limit or has "
                                       "frames of more pixels than the limit"),
                            415: error("the body is not multipart/form-data"),
                            422: error("the file cannot be decoded as a video or image, or a field is invalid"),
                            503: error("the service is not ready"), **INTERNAL})
    async def search_by_video(request: Request, file: Annotated[UploadFile, File(description="a clip or an image")],
                              top_k: Annotated[int, Form(ge=1, le=settings.limits.max_top_k)] = 10,
                              offset: Annotated[int, Form(ge=0, le=settings.limits.max_top_k - 1)] = 0,
                              filter: Annotated[str | None, Form(description="a filter as JSON text (the Filter "
                                                                             "schema)")] = None,
                              include_self: Annotated[bool, Form(description="keep indexed rows of the same "
                                                                             "content")] = False) -> Response:
        ensure_ready()
        started = time.monotonic()
        if offset + top_k > settings.limits.max_top_k:
            raise HTTPException(422, f"offset + top_k is {offset + top_k}; it must be at most "
                                     f"{settings.limits.max_top_k} (--max-top-k)")
        try:
            where = None if filter is None else read_filter(filter, "filter")
        except FilterError as exc:
            raise HTTPException(422, str(exc)) from None
        snapshot = service.snapshot
        label = Path(file.filename or "upload").name
        with tempfile.TemporaryDirectory(prefix="ucofia-upload-") as folder:
            path: Path | None = None
            try:
                path = await run_in_threadpool(save_upload, file.file, Path(folder), examples.limits.max_bytes)
                records = await run_in_threadpool(examples.by_file, snapshot, path, label, top_k, offset, where,
                                                  include_self)
            except QueryVideoError as exc:  # the message names the upload, not the temporary copy
                message = str(exc) if path is None else str(exc).replace(str(path), repr(label))
                raise HTTPException(413 if exc.too_large else 422, message) from None
            finally:
                await file.close()
        return await answer(request, {"query_video": label}, records, top_k, offset, snapshot, started)

    @router.post("/v1/describe", tags=["search"], operation_id="describe", response_model=DescribeResponse,
                 dependencies=auth["dependencies"], summary="Rank captions for indexed videos (video-to-text)",
                 responses={**BODY_ERRORS, **auth["responses"],
                            404: error("a video id is not in the index"),
                            422: error("a field breaks a rule of the schema, or a caption has no text left after the "
                                       "tokenizer's cleaning"),
                            503: error("the service is not ready"), **INTERNAL})
    async def describe(body: describe_model) -> dict[str, Any]:  # type: ignore[valid-type]
        ensure_ready()
        snapshot = service.snapshot
        engine = service.engine
        try:
            results = await run_in_threadpool(examples.describe, snapshot, engine.text, engine.scorer,
                                              list(body.video_ids), list(body.captions), body.top_k,
                                              settings.memory_mb)
        except UnknownVideo as exc:
            raise HTTPException(404, str(exc)) from None
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"top_k": body.top_k, "results": results, "snapshot": snapshot.describe()}

    return router, like
