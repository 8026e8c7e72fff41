"""The HTTP API and the search page of ``ucofia-run serve`` (FastAPI).

Routes (the OpenAPI schema is served at /openapi.json):

* ``POST /v1/search``                  ranked videos per text query, or ``like`` an indexed video (scope ``search``)
* ``POST /v1/search/by-video``         ranked videos like an uploaded clip or image (scope ``search``)
* ``POST /v1/describe``                captions ranked for indexed videos (scope ``search``)
* ``GET  /v1/videos/{id}``             an indexed video's metadata (scope ``search``)
* ``GET  /v1/videos/{id}/thumbnail``   its JPEG thumbnail (scope ``search`` or a signed URL)
* ``GET  /v1/videos/{id}/media``       its source file, with HTTP Range (scope ``search`` or a signed URL)
* ``POST /v1/admin/reload``            re-open the index and swap it in (scope ``admin``)
* ``GET  /v1/info``                    what the page needs to know (public)
* ``GET  /v1/fields``                  the metadata fields of the indexed videos, for filters (scope ``search``)
* ``GET  /healthz``, ``/readyz``, ``/metrics``, ``/`` (the page) and ``/static/*`` (public)

Errors are JSON ``{"error": "<what is wrong and how to fix it>"}`` with a 4xx status for bad
requests; a failure of the server's own (5xx) is logged with its cause and answered with a generic
message naming the request id (``X-Request-ID``), never a path or a traceback. Every GET route
answers HEAD too (``runtime.serve.guard``); thumbnails, media and the page answer
``If-None-Match`` with 304.
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at
# runtime, and those refer to classes and dependencies local to create_app.
import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from runtime.errors import QueryError, RuntimeUserError, ShardsUnavailable
from runtime.scoring import LEVELS
from runtime.search.filters import parse_filter
from runtime.search.similar import UploadLimits
from runtime.serve.auth import ADMIN_SCOPE, SEARCH_SCOPE, ApiKey
from runtime.serve.batching import QueueFull, RequestTimeout
from runtime.serve.contract import (
    BODY_ERRORS,
    CROSS_ORIGIN,
    INTERNAL,
    PATTERN_RULES,
    RETRY_AFTER,
    UNAUTHORIZED,
    FieldsResponse,
    HealthResponse,
    InfoResponse,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    SearchResponse,
    describe_request_model,
    error,
    forbidden,
    search_request_model,
    tidy_schema,
)
from runtime.serve.engine import JobResult, SearchJob
from runtime.serve.example_routes import example_routes
from runtime.serve.examples import ExampleSearch
from runtime.serve.file_responses import HeadAwareFileResponse, etag_matches, not_modified
from runtime.serve.guard import GuardMiddleware, head_only, request_id
from runtime.serve.metrics import Metrics
from runtime.serve.responses import ChunkedResponse, Responder, make_links
from runtime.serve.service import SearchService
from runtime.serve.settings import RETRY_AFTER_S
from runtime.serve.snapshot import Snapshot
from runtime.serve.video_routes import video_routes

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_VERSION = "1"
PAGE_CACHE = "no-cache"
# The status logged and counted for a search whose client went away before its answer (nginx's).
CLIENT_CLOSED = 499


class ClientGone(Exception):
    """The client of a search closed its connection before the answer was ready."""


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
    auth_on = service.auth_required  # fixed for the process: the key file's keys change, not whether there is one
    SearchRequest = search_request_model(settings.limits, settings.two_stage)
    responder = Responder(service.signer)
    examples = ExampleSearch(service.engine.bundle, settings.backend, settings.threads,
                             UploadLimits(max_bytes=int(settings.max_upload_mb * 1024 * 1024)))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        responder.start()
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            responder.stop()

    app = FastAPI(title="ucofia search", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-video search over a ucofia index: the fused UCoFiA score and its three "
                              "level scores per video. Errors are JSON `{\"error\": \"...\"}`. "
                              + ("API keys are on: each protected route lists the scope its key needs."
                                 if auth_on else "API keys are off: every route is open."))
    app.state.metrics = metrics  # the connection layer counts what it closes here (runtime.serve.server)
    bearer = HTTPBearer(auto_error=False, description="an API key from `ucofia-run api-key create`, as "
                                                      "`Authorization: Bearer <key>`; a route lists the scope it needs")
    signed_url = APIKeyQuery(name="sig", scheme_name="SignedUrl", auto_error=False,
                             description="the `sig` (with `exp` and `kid`) of a thumbnail or media link from a search "
                                         "result: opens that resource of one video for an hour or more, for <img> and "
                                         "<video> that cannot send a key, while the key that searched exists")

    # ---- auth --------------------------------------------------------------------------------
    def check_key(request: Request, credentials: HTTPAuthorizationCredentials | None, scope: str) -> None:
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
        request.state.api_key = key

    def api_key(security_scopes: SecurityScopes, request: Request,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        """The key check of a route; its scopes are those the schema lists for the route."""
        for scope in security_scopes.scopes:
            check_key(request, credentials, scope)

    def signed_access(kind: str):
        """The access check of the thumbnail or media route: a key with the search scope, or
        (without a key) a link signed for this kind of resource and this video by a key that is
        still in the key file."""
        def access(request: Request, video_id: str,
                   credentials: Annotated[HTTPAuthorizationCredentials | None,
                                          Security(bearer, scopes=[SEARCH_SCOPE])],
                   sig: Annotated[str | None, Depends(signed_url)],
                   exp: Annotated[str | None, Query(description="with `sig`: when the signed link expires "
                                                         "(unix seconds)")] = None,
                   kid: Annotated[str | None, Query(description="with `sig`: the id of the key the link was made "
                                                         "for; the link dies with that key")] = None) -> None:
            if credentials is None and sig is not None and service.signer is not None:
                ring = service.keyring
                key = ring.by_kid(kid) if ring is not None and kid else None
                if (key is not None and SEARCH_SCOPE in key.scopes
                        and service.signer.verify(kind, video_id, exp, kid, sig)):
                    return
                raise HTTPException(403, "the signed URL is invalid or expired, for another video or resource, or "
                                         "its key was revoked; search again for fresh links")
            check_key(request, credentials, SEARCH_SCOPE)

        return access

    def protected(scope: str, cross_origin: bool = False) -> dict[str, Any]:
        """Route arguments of a route that needs a key with ``scope`` when keys are on (and whose
        method is one the guard checks the Origin of: ``cross_origin``)."""
        refused = [CROSS_ORIGIN] if cross_origin else []
        if not auth_on:
            return {"dependencies": [], "responses": forbidden("; or ".join(refused)) if refused else {}}
        return {"dependencies": [Security(api_key, scopes=[scope])],
                "responses": {**UNAUTHORIZED, **forbidden("; or ".join([f"the API key lacks the {scope!r} scope",
                                                                        *refused]))}}

    def media_protected(kind: str) -> dict[str, Any]:
        if not auth_on:
            return {"dependencies": [], "responses": {}}
        return {"dependencies": [Depends(signed_access(kind))],
                "responses": {**UNAUTHORIZED, **forbidden("the API key lacks the 'search' scope, or the signed URL "
                                                          "is invalid, expired, for another video or resource, or "
                                                          "its key was revoked")}}

    # ---- helpers -------------------------------------------------------------------------------
    def key_id(request: Request) -> str | None:
        key: ApiKey | None = getattr(request.state, "api_key", None)
        return None if key is None else key.kid

    def links(request: Request, video_id: str, entry: dict[str, Any] | None = None) -> dict[str, str]:
        return make_links(request.scope.get("root_path", ""), video_id, entry, service.signer, key_id(request))

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
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (401, 403):
            client = request.client
            logger.warning("refused %s %s from %s (%d): %s", request.method, request.url.path,
                           client.host if client else "-", exc.status_code, exc.detail)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it; logged and counted as such

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

    # An exception that escapes a route is logged and answered 500 by the guard (runtime.serve.guard).

    # ---- health ------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], operation_id="healthz", summary="The process is alive",
             response_model=HealthResponse, responses=INTERNAL)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], operation_id="readyz", summary="Sessions loaded, index open, batcher running",
             response_model=ReadyResponse, response_model_exclude_none=True,
             responses={503: {"model": ReadyResponse, "description": "not ready: the checks say what is missing"},
                        **INTERNAL})
    async def readyz(response: Response) -> dict[str, Any]:
        checks = service.readiness()
        shards = service.shard_status()
        if shards is not None:  # serve --ray: every shard answered its last call
            checks["shards"] = shards["up"] == shards["total"]
        ready = all(checks.values())
        if not ready:
            response.status_code = 503
        answer = {"ready": ready, "checks": checks, "snapshot": service.snapshot.describe()}
        if shards is not None:
            answer["shards"] = shards
        return answer

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

    fields_auth = protected(SEARCH_SCOPE)

    @app.get("/v1/fields", tags=["search"], operation_id="fields", response_model=FieldsResponse,
             dependencies=fields_auth["dependencies"], responses={**fields_auth["responses"], **INTERNAL},
             summary="The metadata fields of the indexed videos: their kinds and values, for filter controls")
    async def fields() -> dict[str, Any]:
        snapshot = service.snapshot  # summarised once per snapshot, when it was loaded
        return {"snapshot": snapshot.describe(), "fields": [summary.to_dict() for summary in snapshot.fields]}

    # ---- search ------------------------------------------------------------------------------
    search_auth = protected(SEARCH_SCOPE, cross_origin=True)

    async def until_disconnected(request: Request) -> None:
        """Returns when the client has closed its connection (the body is read by then)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    @app.post("/v1/search", tags=["search"], operation_id="search", response_model=SearchResponse,
              dependencies=search_auth["dependencies"],
              summary="Rank the indexed videos for text queries, or like an indexed video",
              responses={**BODY_ERRORS, **search_auth["responses"],
                         404: error("`like` names a video that is not in the index"),
                         422: error("a field breaks a rule of the schema, or a query has no text left after the "
                                    "tokenizer's cleaning (the message names the field and the rule)"),
                         503: error("the queue is full (`--max-queue`), the service is not ready, or (`serve --ray`) "
                                    "a shard of the gallery did not answer and `allow_partial` is false",
                                    RETRY_AFTER),
                         504: error("the request did not finish within `--timeout`, queue included"), **INTERNAL})
    async def search_route(body: SearchRequest,  # type: ignore[valid-type]
                           request: Request) -> Response:
        if body.like is not None:
            return await like_search(body, request)
        ensure_ready()
        job = SearchJob(queries=list(body.queries), top_k=body.top_k, two_stage=body.two_stage,
                        group_by=body.group_by, windows_per_file=body.windows_per_file, offset=body.offset,
                        where=None if body.filter is None else parse_filter(body.filter),
                        allow_partial=body.allow_partial)
        start = time.monotonic()
        searching = asyncio.ensure_future(service.search(job))
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            await asyncio.wait({searching, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not searching.done():  # the client went away: its search is dropped unless it runs already
                job.abandon("disconnected")
                searching.cancel()
                raise ClientGone
            result: JobResult = searching.result()
        except QueueFull as exc:
            metrics.errors.labels("rejected").inc()
            raise HTTPException(503, f"the server is busy ({exc}); retry in {RETRY_AFTER_S} s",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except RequestTimeout as exc:
            metrics.errors.labels("timeout").inc()
            raise HTTPException(504, str(exc)) from None
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from None
        except ShardsUnavailable as exc:
            metrics.errors.labels("shards").inc()
            logger.warning("search without shards %s: %s", exc.missing, exc)
            raise HTTPException(503, f"part of the gallery is not answering ({exc}); retry in {RETRY_AFTER_S} s, or "
                                     f"send \"allow_partial\": true to be answered from the rest",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except RuntimeUserError as exc:
            metrics.errors.labels("search").inc()
            logger.error("search failed: %s", exc)
            raise HTTPException(500, f"the search failed; the server log has the cause under request id "
                                     f"{request_id()}") from None
        finally:
            gone.cancel()
        if gone.done() and not gone.cancelled():  # gone while the answer was made: do not encode it
            metrics.request_dropped("disconnected")
            raise ClientGone
        snapshot = result.snapshot
        queue = (job.started or start) - job.enqueued
        head = {"mode": result.mode, "group_by": result.group_by, "top_k": body.top_k, "offset": body.offset}
        if result.missing_shards:
            head.update({"partial": True, "missing_shards": result.missing_shards})
        tail = {"snapshot": snapshot.describe(), "batch": {"queries": result.batch_queries,
                                                             "requests": result.batch_requests},
                "timings": {"queue_ms": round(queue * 1000, 3), "encode_ms": round(result.encode_s * 1000, 3),
                            "score_ms": round(result.score_s * 1000, 3),
                            "total_ms": round((time.monotonic() - start) * 1000, 3)}}
        content = await responder.search_body(head, result.queries, snapshot, request.scope.get("root_path", ""),
                                              key_id(request), tail)
        return ChunkedResponse(content, media_type="application/json", headers={"Cache-Control": "no-store"})

    example_router, like_search = example_routes(service, examples, responder, search_auth,
                                                 describe_request_model(settings.limits), ensure_ready, key_id)
    app.include_router(example_router)

    # ---- videos --------------------------------------------------------------------------------
    app.include_router(video_routes(service, metrics, protected(SEARCH_SCOPE), media_protected, entry_or_404, links))

    # ---- admin -------------------------------------------------------------------------------
    admin_auth = protected(ADMIN_SCOPE, cross_origin=True)

    @app.post("/v1/admin/reload", tags=["admin"], operation_id="reload", response_model=ReloadResponse,
              dependencies=admin_auth["dependencies"],
              summary="Re-open the index (and the key file) and swap it in atomically",
              responses={**BODY_ERRORS, **admin_auth["responses"],
                         409: error("the reload failed; the old snapshot keeps serving (the message says why)"),
                         422: error("the body is not the empty JSON object `{}`"),
                         **INTERNAL})
    async def reload_route(body: ReloadRequest) -> dict[str, Any]:
        try:
            return await service.reload("api")
        except RuntimeUserError as exc:
            raise HTTPException(409, f"reload failed, still serving snapshot {service.snapshot.version}: "
                                     f"{exc}") from None

    # ---- the page ----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        path = STATIC_DIR / "index.html"
        reply = HeadAwareFileResponse(path, media_type="text/html", headers={"Cache-Control": PAGE_CACHE},
                              stat_result=path.stat(), head=head_only(request.scope))
        if etag_matches(request, reply.headers.get("etag")):
            return not_modified(reply.headers["etag"], PAGE_CACHE)
        return reply

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    post_paths = frozenset(route.path for route in app.routes if "POST" in (getattr(route, "methods", None) or ()))
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.limits.max_body_bytes, metrics=metrics,
                       allowed_hosts=settings.allowed_host_names(), post_paths=post_paths,
                       cors_origins=settings.cors_origins, access_log=settings.access_log,
                       upload_paths=frozenset({"/v1/search/by-video"}), max_upload_bytes=examples.limits.max_bytes)

    generate_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = tidy_schema(generate_schema())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


__all__ = ["create_app"]
