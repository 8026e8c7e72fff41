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
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from runtime.errors import QueryError, RuntimeUserError
from runtime.scoring import LEVELS
from runtime.serve.auth import ADMIN_SCOPE, SEARCH_SCOPE
from runtime.serve.batching import QueueFull, RequestTimeout
from runtime.serve.contract import (
    BINARY,
    BODY_ERRORS,
    CONTENT_RANGE,
    INTERNAL,
    MEDIA_TYPES,
    MULTIPART_RANGES,
    NOT_FOUND_VIDEO,
    OTHER_MEDIA_TYPE,
    PATTERN_RULES,
    RANGE_PATTERN,
    RETRY_AFTER,
    THUMBNAIL_TYPE,
    UNAUTHORIZED,
    HealthResponse,
    InfoResponse,
    ReadyResponse,
    ReloadResponse,
    SearchResponse,
    VideoInfo,
    error,
    forbidden,
    media_type_of,
    search_request_model,
    tidy_schema,
)
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
# Starlette serves the whole file for a Range of more parts than this (FileResponse.max_ranges).
MAX_RANGES = getattr(FileResponse, "max_ranges", 100)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------
def create_app(service: SearchService) -> FastAPI:
    """The ASGI app over a loaded ``service`` (its batcher and watcher start with the app).

    Its OpenAPI schema describes this server as started: security requirements (and the scope
    each route needs) only with ``--api-keys``, the request limits and ``--two-stage`` setting
    it validates with."""
    if service.metrics is None:
        service.attach_metrics(Metrics())
    metrics: Metrics = service.metrics
    settings = service.settings
    auth_on = service.keyring is not None  # fixed for the process: a reload re-reads the key file only
    SearchRequest = search_request_model(settings.limits, settings.two_stage)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="ucofia search", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-video search over a ucofia index: the fused UCoFiA score and its three "
                              "level scores per video. Errors are JSON `{\"error\": \"...\"}`. "
                              + ("API keys are on: each protected route lists the scope its key needs."
                                 if auth_on else "API keys are off: every route is open."))
    bearer = HTTPBearer(auto_error=False, description="an API key from `ucofia-run api-key create`, as "
                                                      "`Authorization: Bearer <key>`; a route lists the scope it needs")
    signed_url = APIKeyQuery(name="sig", scheme_name="SignedUrl", auto_error=False,
                             description="the `sig` (with `exp`) of a thumbnail or media link from a search result: "
                                         "grants one video for an hour, for <img> and <video> that cannot send a key")

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

    def api_key(security_scopes: SecurityScopes,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        """The key check of a route; its scopes are those the schema lists for the route."""
        for scope in security_scopes.scopes:
            check_key(credentials, scope)

    def media_access(video_id: str,
                     credentials: Annotated[HTTPAuthorizationCredentials | None,
                                            Security(bearer, scopes=[SEARCH_SCOPE])],
                     sig: Annotated[str | None, Depends(signed_url)],
                     exp: Annotated[str | None, Query(description="with `sig`: when the signed link expires "
                                                           "(unix seconds)")] = None) -> None:
        """A key with the search scope, or (without a key) a signed URL for this video."""
        if credentials is None and sig is not None and service.signer is not None:
            if service.signer.verify(video_id, exp, sig):
                return
            raise HTTPException(403, "the signed URL is invalid or expired; search again for fresh links")
        check_key(credentials, SEARCH_SCOPE)

    def protected(scope: str) -> dict[str, Any]:
        """Route arguments of a route that needs a key with ``scope`` when keys are on."""
        if not auth_on:
            return {"dependencies": [], "responses": {}}
        return {"dependencies": [Security(api_key, scopes=[scope])],
                "responses": {**UNAUTHORIZED, **forbidden(f"the API key lacks the {scope!r} scope")}}

    def media_protected() -> dict[str, Any]:
        if not auth_on:
            return {"dependencies": [], "responses": {}}
        return {"dependencies": [Depends(media_access)],
                "responses": {**UNAUTHORIZED, **forbidden("the API key lacks the 'search' scope, or the signed URL "
                                                          "is invalid, expired or for another video")}}

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
            if problem.get("type") == "string_pattern_mismatch":  # name the rule, not the regular expression
                message = PATTERN_RULES.get((problem.get("ctx") or {}).get("pattern"), message)
            parts.append(f"{loc}: {message}")
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        return JSONResponse({"error": "; ".join(parts) + more}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        logger.exception("internal error", exc_info=exc)
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)

    # ---- health ------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], operation_id="healthz", summary="The process is alive",
             response_model=HealthResponse, responses=INTERNAL)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], operation_id="readyz", summary="Sessions loaded, index open, batcher running",
             response_model=ReadyResponse,
             responses={503: {"model": ReadyResponse, "description": "not ready: the checks say what is missing"},
                        **INTERNAL})
    async def readyz(response: Response) -> dict[str, Any]:
        checks = service.readiness()
        ready = all(checks.values())
        if not ready:
            response.status_code = 503
        return {"ready": ready, "checks": checks, "snapshot": service.snapshot.describe()}

    @app.get("/metrics", tags=["health"], operation_id="metrics", summary="Prometheus metrics",
             response_class=Response,
             responses={200: {"description": "the Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}, **INTERNAL})
    async def metrics_route() -> Response:
        metrics.queue_depth(service.batcher.depth)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/info", tags=["search"], operation_id="info", response_model=InfoResponse, responses=INTERNAL,
             summary="What a client needs to know before searching")
    async def info() -> dict[str, Any]:
        limits = settings.limits
        return {"service": "ucofia", "api_version": API_VERSION, "auth_required": service.auth_required,
                "snapshot": service.snapshot.describe(), "levels": list(LEVELS),
                "two_stage": settings.two_stage, "two_stage_min_videos": settings.two_stage_min_videos,
                "limits": {"max_queries": limits.max_queries, "max_query_chars": limits.max_query_chars,
                           "max_top_k": limits.max_top_k, "max_windows_per_file": limits.max_windows_per_file,
                           "max_body_bytes": limits.max_body_bytes}}

    # ---- search ------------------------------------------------------------------------------
    search_auth = protected(SEARCH_SCOPE)

    @app.post("/v1/search", tags=["search"], operation_id="search", response_model=SearchResponse,
              dependencies=search_auth["dependencies"], summary="Rank the indexed videos for text queries",
              responses={**BODY_ERRORS, **search_auth["responses"],
                         422: error("a field breaks a rule of the schema, or a query has no text left after the "
                                    "tokenizer's cleaning (the message names the field and the rule)"),
                         503: error("the queue is full (`--max-queue`) or the service is not ready",
                                    RETRY_AFTER),
                         504: error("the request did not finish within `--timeout`, queue included"), **INTERNAL})
    async def search_route(body: SearchRequest,  # type: ignore[valid-type]
                           request: Request, response: Response) -> dict[str, Any]:
        ensure_ready()
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
    media_auth = media_protected()
    source_types = dict.fromkeys([*MEDIA_TYPES.values(), OTHER_MEDIA_TYPE], BINARY)

    @app.get("/v1/videos/{video_id:path}/thumbnail", tags=["videos"], operation_id="thumbnail",
             response_class=Response, summary="A JPEG thumbnail of an indexed video",
             dependencies=media_auth["dependencies"],
             responses={200: {"description": "the thumbnail", "content": {THUMBNAIL_TYPE: BINARY}},
                        **media_auth["responses"],
                        404: error("no video with this id; or it was indexed without its source file, or that file "
                                   "cannot be decoded"), **INTERNAL})
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
            return FileResponse(made, media_type=THUMBNAIL_TYPE, headers=headers)
        return Response(made, media_type=THUMBNAIL_TYPE, headers=headers)

    @app.get("/v1/videos/{video_id:path}/media", tags=["videos"], operation_id="media",
             response_class=Response, summary="The indexed source file (HTTP Range supported)",
             dependencies=media_auth["dependencies"],
             responses={200: {"description": "the whole file", "content": source_types},
                        206: {"description": "the requested range (several: multipart/byteranges)",
                              "content": {**source_types, MULTIPART_RANGES: BINARY}},
                        **media_auth["responses"],
                        404: error("no video with this id; or it was indexed without its source file, or that file "
                                   "is no longer there"),
                        409: error("the source file changed since it was indexed: re-index it"),
                        416: error("a range that starts past the end of the file, or ends before it starts",
                                   CONTENT_RANGE),
                        422: error("the Range header is not a byte range (the pattern)"), **INTERNAL})
    async def media(video_id: str,
                    byte_range: Annotated[str | None, Header(
                        alias="Range", pattern=RANGE_PATTERN,
                        description="bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX, several comma-separated: "
                                    "206 with the bytes asked for; more than 100 ranges: the whole file")] = None,
                    if_range: Annotated[str | None, Header(
                        alias="If-Range", description="an ETag or Last-Modified value of the file: the range "
                                                      "applies only while the file still has it")] = None) -> Response:
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
        reply = FileResponse(path, media_type=media_type_of(path.suffix), stat_result=stat,
                             headers={"Cache-Control": MEDIA_CACHE})
        if byte_range is not None and _range_applies(if_range, reply) and _unsatisfiable(byte_range, stat.st_size):
            raise HTTPException(416, f"the range {byte_range!r} cannot be served from the file's {stat.st_size} "
                                     f"bytes", headers={"Content-Range": f"bytes */{stat.st_size}"})
        return reply

    video_auth = protected(SEARCH_SCOPE)

    @app.get("/v1/videos/{video_id:path}", tags=["videos"], operation_id="video", response_model=VideoInfo,
             dependencies=video_auth["dependencies"], summary="An indexed video's metadata",
             responses={**video_auth["responses"], 404: NOT_FOUND_VIDEO, **INTERNAL})
    async def video(video_id: str, request: Request) -> dict[str, Any]:
        snapshot = service.snapshot
        entry = entry_or_404(snapshot, video_id)
        return {"id": video_id, "row": snapshot.index.row_of(video_id), "has_media": source_path(entry) is not None,
                "entry": public_entry(entry), "links": links(request, video_id, entry)}

    # ---- admin -------------------------------------------------------------------------------
    admin_auth = protected(ADMIN_SCOPE)

    @app.post("/v1/admin/reload", tags=["admin"], operation_id="reload", response_model=ReloadResponse,
              dependencies=admin_auth["dependencies"],
              summary="Re-open the index (and the key file) and swap it in atomically",
              responses={**BODY_ERRORS, **admin_auth["responses"],
                         409: error("the reload failed; the old snapshot keeps serving (the message says why)"),
                         **INTERNAL})
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

    generate_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = tidy_schema(generate_schema())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _range_applies(if_range: str | None, reply: FileResponse) -> bool:
    """Whether Starlette will honour the Range header: no If-Range, or one naming the file's
    strong ETag or Last-Modified (as ``FileResponse`` decides)."""
    if if_range is None:
        return True
    return not if_range.startswith("W/") and if_range in (reply.headers.get("etag"), reply.headers.get("last-modified"))


def _unsatisfiable(byte_range: str, size: int) -> bool:
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


__all__ = ["create_app"]
