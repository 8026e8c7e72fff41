"""The HTTP API and the search page of ``ucofia-run serve`` (FastAPI).

Routes (the OpenAPI schema is served at /openapi.json):

* ``POST /v1/search``                  ranked videos per query (scope ``search``)
* ``GET  /v1/videos/{id}``             an indexed video's metadata (scope ``search``)
* ``GET  /v1/videos/{id}/thumbnail``   its JPEG thumbnail (scope ``search`` or a signed URL)
* ``GET  /v1/videos/{id}/media``       its source file, with HTTP Range (scope ``search`` or a signed URL)
* ``POST /v1/admin/reload``            re-open the index and swap it in (scope ``admin``)
* ``GET  /v1/info``                    what the page needs to know (public)
* ``GET  /healthz``, ``/readyz``, ``/metrics``, ``/`` (the page) and ``/static/*`` (public)

Errors are JSON ``{"error": "<what is wrong and how to fix it>"}`` with a 4xx status for bad
requests; tracebacks go to the server log only.
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at
# runtime, and those refer to classes and dependencies local to create_app.
import logging
import mimetypes
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from runtime.errors import QueryError, RuntimeUserError
from runtime.scoring import LEVELS
from runtime.search import DEFAULT_TOP_K, DEFAULT_WINDOWS_PER_FILE
from runtime.serve.batching import QueueFull, RequestTimeout
from runtime.serve.engine import JobResult, SearchJob
from runtime.serve.guard import GuardMiddleware
from runtime.serve.metrics import Metrics
from runtime.serve.service import SearchService
from runtime.serve.settings import RETRY_AFTER_S
from runtime.serve.snapshot import Snapshot
from runtime.thumbnails import ThumbnailError, make_thumbnail, source_path

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_VERSION = "1"
# Entry fields kept from API answers: the server's file layout is nobody's business.
HIDDEN_ENTRY_FIELDS = frozenset({"id", "path"})
MEDIA_CACHE = "private, max-age=300"

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# response models (for the OpenAPI schema and response validation)
# ------------------------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, and how to fix it")


class Links(BaseModel):
    video: str = Field(description="GET: the video's metadata")
    thumbnail: str = Field(description="GET: a JPEG thumbnail (signed when auth is on)")
    media: str = Field(description="GET: the source file, with HTTP Range (signed when auth is on)")


class WindowHit(BaseModel):
    video_id: str = Field(description="the window's id (FILE@START-END)")
    start: float | None = Field(None, description="the window's start (seconds)")
    end: float | None = Field(None, description="the window's end (seconds)")
    score: float = Field(description="fused score of the window")
    levels: dict[str, float] = Field(description=f"the level scores: {', '.join(LEVELS)}")
    links: Links


class Hit(BaseModel):
    rank: int
    video_id: str = Field(description="the indexed row: a video, or a time window (grouped by file: the file's "
                                      "best window)")
    file_id: str | None = Field(None, description="on an index of time windows: the file the window is of")
    start: float | None = Field(None, description="on an index of time windows: the window's start (seconds)")
    end: float | None = Field(None, description="on an index of time windows: the window's end (seconds)")
    score: float = Field(description="fused score: mean over the levels of (level score + its SK bias)")
    levels: dict[str, float] = Field(description=f"the level scores: {', '.join(LEVELS)}")
    entry: dict[str, Any] = Field(description="what the index recorded about the video (duration_s, fps, "
                                              "width, height, ...; time windows add start/end)")
    links: Links
    windows: list[WindowHit] | None = Field(None, description="grouped by file: the file's best windows, best "
                                                              "first (at most windows_per_file)")


class QueryResult(BaseModel):
    query: str
    truncated: bool = Field(description="the query was longer than the text encoder's max_words tokens")
    results: list[Hit]


class SnapshotInfo(BaseModel):
    version: int = Field(description="loads of the index since the server started (1 = first)")
    videos: int
    loaded_at: float
    load_seconds: float


class BatchInfo(BaseModel):
    queries: int = Field(description="queries encoded and scored together with this request's")
    requests: int = Field(description="requests coalesced into that batch")


class Timings(BaseModel):
    queue_ms: float
    encode_ms: float
    score_ms: float
    total_ms: float


class SearchResponse(BaseModel):
    mode: Literal["exhaustive", "two_stage"]
    group_by: Literal["file", "window"] | None = Field(description="how the rows of an index of time windows were "
                                                                   "ranked; null on an index of whole files")
    top_k: int
    results: list[QueryResult]
    snapshot: SnapshotInfo
    batch: BatchInfo
    timings: Timings


class VideoInfo(BaseModel):
    id: str
    row: int
    has_media: bool = Field(description="the index recorded the source file (needed for thumbnail and media)")
    entry: dict[str, Any]
    links: Links


class ReloadResponse(BaseModel):
    reloaded: bool
    trigger: str
    seconds: float
    changed: bool
    snapshot: SnapshotInfo
    previous: SnapshotInfo


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 415, 422, 503, 504)}


def _request_model(service: SearchService) -> type[BaseModel]:
    limits = service.settings.limits
    Query = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars)]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "examples": [{"queries": ["a dog runs on the beach"], "top_k": 10}]})

        queries: list[Query] = Field(min_length=1, max_length=limits.max_queries,
                                     description=f"1 to {limits.max_queries} texts of at most "
                                                 f"{limits.max_query_chars} characters")
        top_k: int = Field(DEFAULT_TOP_K, ge=1, le=limits.max_top_k, description="results per query")
        two_stage: bool | None = Field(None, description="true: FAISS shortlist + fused re-rank; false: "
                                                         "exhaustive; null: the server's choice by gallery size")
        group_by: Literal["file", "window"] | None = Field(
            None, description="on an index of time windows: 'file' (the default there) ranks each file once by its "
                              "best window and lists its best windows; 'window' ranks windows on their own. Ignored "
                              "on an index of whole files. As `ucofia-run search --group-by`.")
        windows_per_file: int = Field(DEFAULT_WINDOWS_PER_FILE, ge=1, le=limits.max_windows_per_file,
                                      description="grouped by file: best windows listed per file")

        @field_validator("queries")
        @classmethod
        def _not_blank(cls, queries: list[str]) -> list[str]:
            for number, text in enumerate(queries, 1):
                if not text.strip():
                    raise ValueError(f"query {number} is only whitespace; give it some text")
            return queries

    return SearchRequest


# ------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------
def create_app(service: SearchService) -> FastAPI:
    """The ASGI app over a loaded ``service`` (its batcher and watcher start with the app)."""
    if service.metrics is None:
        service.attach_metrics(Metrics())
    metrics: Metrics = service.metrics
    settings = service.settings
    SearchRequest = _request_model(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="ucofia search", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-video search over a ucofia index: the fused UCoFiA score and its three "
                              "level scores per video.")
    bearer = HTTPBearer(auto_error=False, description="an API key from `ucofia-run api-key create`")

    # ---- auth --------------------------------------------------------------------------------
    def check_key(credentials: HTTPAuthorizationCredentials | None, scope: str) -> None:
        ring = service.keyring
        if ring is None:
            return
        if credentials is None or not credentials.credentials.strip():
            raise HTTPException(401, "this server needs an API key: send `Authorization: Bearer <key>`",
                                headers={"WWW-Authenticate": "Bearer"})
        key = ring.match(credentials.credentials.strip())
        if key is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if scope not in key.scopes:
            raise HTTPException(403, f"API key {key.name!r} lacks the {scope!r} scope (it has: "
                                     f"{', '.join(sorted(key.scopes))})")

    def require(scope: str):
        def dependency(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
            check_key(credentials, scope)
        return dependency

    def media_access(video_id: str, request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        signer = service.signer
        params = request.query_params
        if signer is not None and "sig" in params:
            if signer.verify(video_id, params.get("exp"), params.get("sig")):
                return
            raise HTTPException(403, "the signed URL is invalid or expired; search again for fresh links")
        check_key(credentials, "search")

    # ---- helpers -------------------------------------------------------------------------------
    def links(request: Request, video_id: str, entry: dict[str, Any] | None = None) -> dict[str, str]:
        base = f"{request.scope.get('root_path', '')}/v1/videos/{quote(video_id, safe='')}"
        signed = "" if service.signer is None else "?" + urlencode(service.signer.sign(video_id))
        media = f"{base}/media{signed}"
        if entry and entry.get("start") is not None and entry.get("end") is not None:
            media += f"#t={float(entry['start']):g},{float(entry['end']):g}"  # a window: play its span
        return {"video": base, "thumbnail": f"{base}/thumbnail{signed}", "media": media}

    def public_entry(entry: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (entry or {}).items() if k not in HIDDEN_ENTRY_FIELDS}

    def decorate(request: Request, snapshot: Snapshot, hit: dict[str, Any]) -> dict[str, Any]:
        """A result record of the search path with the entry and links of its row (and of each of
        its windows when grouped by file)."""
        entry = snapshot.index.entry(hit["video_id"])
        out = {**hit, "entry": public_entry(entry), "links": links(request, hit["video_id"], entry)}
        if "windows" in hit:
            out["windows"] = [{**w, "links": links(request, w["video_id"], snapshot.index.entry(w["video_id"]))}
                              for w in hit["windows"]]
        return out

    def entry_or_404(snapshot: Snapshot, video_id: str) -> dict[str, Any]:
        entry = snapshot.index.entry(video_id)
        if entry is None:
            raise HTTPException(404, f"no video with id {video_id!r} in the index")
        return entry

    def ensure_ready() -> None:
        if not all(service.readiness().values()):
            raise HTTPException(503, "the service is not ready; see /readyz",
                                headers={"Retry-After": str(RETRY_AFTER_S)})

    # ---- errors --------------------------------------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = list(exc.errors())
        if any(p.get("type") == "json_invalid" for p in problems):
            where = next(p for p in problems if p.get("type") == "json_invalid")
            detail = (where.get("ctx") or {}).get("error", "")
            return JSONResponse({"error": f"the request body is not valid JSON ({detail})"}, status_code=400)
        parts = []
        for problem in problems[:5]:
            loc = ".".join(str(x) for x in problem.get("loc", ()) if x != "body") or "body"
            message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {message}")
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        return JSONResponse({"error": "; ".join(parts) + more}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        logger.exception("internal error", exc_info=exc)
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)

    # ---- health ------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Sessions loaded, index open, batcher running",
             responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        checks = service.readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks, "snapshot": service.snapshot.describe()},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    async def metrics_route() -> Response:
        metrics.queue_depth(service.batcher.depth)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/info", tags=["search"], summary="What a client needs to know before searching")
    async def info() -> dict[str, Any]:
        limits = settings.limits
        return {"service": "ucofia", "api_version": API_VERSION, "auth_required": service.auth_required,
                "snapshot": service.snapshot.describe(), "levels": list(LEVELS),
                "two_stage": settings.two_stage, "two_stage_min_videos": settings.two_stage_min_videos,
                "limits": {"max_queries": limits.max_queries, "max_query_chars": limits.max_query_chars,
                           "max_top_k": limits.max_top_k, "max_windows_per_file": limits.max_windows_per_file,
                           "max_body_bytes": limits.max_body_bytes}}

    # ---- search ------------------------------------------------------------------------------
    @app.post("/v1/search", tags=["search"], response_model=SearchResponse, responses=ERRORS,
              dependencies=[Depends(require("search"))], summary="Rank the indexed videos for text queries")
    async def search_route(body: SearchRequest,  # type: ignore[valid-type]
                           request: Request, response: Response) -> dict[str, Any]:
        ensure_ready()
        if body.two_stage and settings.two_stage == "off":
            raise HTTPException(400, "two-stage search is off on this server (--two-stage off); leave two_stage "
                                     "out or set it to false")
        job = SearchJob(queries=list(body.queries), top_k=body.top_k, two_stage=body.two_stage,
                        group_by=body.group_by, windows_per_file=body.windows_per_file)
        start = time.monotonic()
        try:
            result: JobResult = await service.search(job)
        except QueueFull as exc:
            metrics.errors.labels("rejected").inc()
            raise HTTPException(503, f"the server is busy ({exc}); retry in {RETRY_AFTER_S} s",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except RequestTimeout as exc:
            metrics.errors.labels("timeout").inc()
            raise HTTPException(504, str(exc)) from None
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from None
        except RuntimeUserError as exc:
            metrics.errors.labels("search").inc()
            raise HTTPException(500, f"the search failed: {exc}") from None
        total = time.monotonic() - start
        snapshot = result.snapshot
        response.headers["Cache-Control"] = "no-store"
        queue = (job.started or start) - job.enqueued
        return {
            "mode": result.mode, "group_by": result.group_by, "top_k": body.top_k,
            "results": [{**q, "results": [decorate(request, snapshot, hit) for hit in q["results"]]}
                        for q in result.queries],
            "snapshot": snapshot.describe(),
            "batch": {"queries": result.batch_queries, "requests": result.batch_requests},
            "timings": {"queue_ms": round(queue * 1000, 3), "encode_ms": round(result.encode_s * 1000, 3),
                        "score_ms": round(result.score_s * 1000, 3), "total_ms": round(total * 1000, 3)},
        }

    # ---- videos (specific routes first: ids may contain '/') ---------------------------------------
    @app.get("/v1/videos/{video_id:path}/thumbnail", tags=["videos"], responses=ERRORS,
             response_class=Response, summary="A JPEG thumbnail of an indexed video",
             dependencies=[Depends(media_access)])
    async def thumbnail(video_id: str) -> Response:
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
            return FileResponse(made, media_type="image/jpeg", headers=headers)
        return Response(made, media_type="image/jpeg", headers=headers)

    @app.get("/v1/videos/{video_id:path}/media", tags=["videos"],
             responses={**ERRORS, 206: {"description": "a range"}, 416: {"description": "range not satisfiable"}},
             response_class=Response, summary="The indexed source file (HTTP Range supported)",
             dependencies=[Depends(media_access)])
    async def media(video_id: str) -> Response:
        entry = entry_or_404(service.snapshot, video_id)
        path = source_path(entry)
        if path is None:
            raise HTTPException(404, f"video {video_id!r} was indexed without its source file (an index written "
                                     f"before format 2); re-index it with `ucofia-run index` to enable media")
        try:
            stat = path.stat()
        except OSError:
            raise HTTPException(404, f"the source file of video {video_id!r} is no longer where it was indexed; "
                                     f"restore it or re-index") from None
        if entry.get("bytes") is not None and stat.st_size != entry["bytes"]:
            raise HTTPException(409, f"the source file of video {video_id!r} changed since it was indexed; "
                                     f"re-index it with `ucofia-run index`")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, stat_result=stat, headers={"Cache-Control": MEDIA_CACHE})

    @app.get("/v1/videos/{video_id:path}", tags=["videos"], response_model=VideoInfo, responses=ERRORS,
             dependencies=[Depends(require("search"))], summary="An indexed video's metadata")
    async def video(video_id: str, request: Request) -> dict[str, Any]:
        snapshot = service.snapshot
        entry = entry_or_404(snapshot, video_id)
        return {"id": video_id, "row": snapshot.index.row_of(video_id), "has_media": source_path(entry) is not None,
                "entry": public_entry(entry), "links": links(request, video_id, entry)}

    # ---- admin -------------------------------------------------------------------------------
    @app.post("/v1/admin/reload", tags=["admin"], response_model=ReloadResponse, responses=ERRORS,
              dependencies=[Depends(require("admin"))],
              summary="Re-open the index (and the key file) and swap it in atomically")
    async def reload_route() -> dict[str, Any]:
        try:
            return await service.reload("api")
        except RuntimeUserError as exc:
            raise HTTPException(409, f"reload failed, still serving snapshot {service.snapshot.version}: "
                                     f"{exc}") from None

    # ---- the page ----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.limits.max_body_bytes, metrics=metrics)
    return app


__all__ = ["create_app"]
