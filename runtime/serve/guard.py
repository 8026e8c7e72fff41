"""The outermost ASGI layer of the app. For every HTTP request, in this order:

1. **request id**: the ``X-Request-ID`` the client or a proxy sent when it is a short safe token,
   else a new one; it is in the log context of everything logged while the request runs
   (``ucofia.logs.CONTEXT``) and in the ``X-Request-ID`` header of the response;
2. **Host** (DNS rebinding): a request whose Host name is not allowed gets 421;
3. **POST to a POST route** (the one method that changes state or takes a body; any other method
   or path goes on to the app, which answers 405 or 404): an ``Origin`` that is neither this
   server's (the Host) nor a ``--cors-origin`` gets 403; a request without ``Content-Type: application/json`` gets
   415 (a cross-site form cannot send that type without a CORS preflight, which the server
   refuses); a body over the limit 413, a bad Content-Length 400;
4. **HEAD** is answered as the GET of the same URL, without the body;
5. on the way out: the security headers, the request metrics (route template, method and status,
   each from a fixed set: ``runtime.serve.metrics``) and the access log line (client address as
   uvicorn's proxy-headers layer left it: a trusted proxy's ``X-Forwarded-For`` only, the path
   without its query string -- signed links stay out of the log, the status, the time taken).

Refusals (421, 403, 413, 415, 400) are logged with their reason. An exception that escapes the
app is logged with its traceback and answered 500 with a generic message naming the request id.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from runtime.serve.metrics import OTHER, method_label, status_label
from ucofia import logs

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("runtime.serve.access")

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
CHECKED_METHODS = frozenset({"POST"})
JSON_TYPES = ("application/json",)
PLAIN_ROUTES = frozenset({"/openapi.json"})
REQUEST_ID_HEADER = b"x-request-id"
# A request id taken from the request: letters, digits and . _ : - only (it goes into log lines).
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The scope key that tells a route the request is a HEAD answered as GET (see head_only).
HEAD_KEY = "ucofia.head"


def head_only(scope: Scope) -> bool:
    """Whether the request is a HEAD the guard passed on as GET: a route that streams a file
    should then send its headers only."""
    return bool(scope.get(HEAD_KEY))


def request_id() -> str:
    """The id of the request being served ('-' outside a request)."""
    return logs.CONTEXT.get().get("request_id", "-")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def host_name(host_header: str) -> str:
    """The name of a Host header value: lower case, without port or IPv6 brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _route_path(scope: Scope) -> str:
    """The request's path below the root path (what the app's routes match)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _send_error(send: Send, status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """The checks and bookkeeping of the module docstring. ``allowed_hosts``: the Host names
    answered (None: any); ``post_paths``: the paths of the app's POST routes; ``cors_origins``:
    foreign origins allowed to send them;
    ``metrics``: runtime.serve.metrics.Metrics or None."""

    def __init__(self, app: Callable, *, max_body_bytes: int, metrics: Any, allowed_hosts: frozenset[str] | None,
                 post_paths: frozenset[str], cors_origins: tuple[str, ...] = (), access_log: bool = True) -> None:
        self.app = app
        self.post_paths = post_paths
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.allowed_hosts = allowed_hosts
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = _header(scope, REQUEST_ID_HEADER)
        rid = given if given is not None and REQUEST_ID_PATTERN.match(given) else secrets.token_hex(8)
        token = logs.CONTEXT.set({**logs.CONTEXT.get(), "request_id": rid})
        status = [500]
        started = [False]
        method = scope["method"]
        head = method == "HEAD"

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status[0] = message["status"]
                present = {key.lower() for key, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in present),
                                      (REQUEST_ID_HEADER, rid.encode())]
            elif head and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                self._refused(scope, *refusal)
                await _send_error(send_secured, *refusal)
                return
            if self._checked(scope):
                replay = await self._checked_body(scope, receive, send_secured)
                if replay is None:
                    return
                receive = replay
            if head:
                scope = {**scope, "method": "GET", HEAD_KEY: True}
            await self.app(scope, receive, send_secured)
        except Exception:
            if self.metrics is not None:
                self.metrics.errors.labels("internal").inc()
            logger.exception("internal error in %s %s", method_label(method), scope.get("path", ""))
            if not started[0]:
                await _send_error(send_secured, 500, f"internal error; the server log has the cause under request "
                                                     f"id {rid}")
        finally:
            seconds = time.perf_counter() - start
            self._observe(scope, method, status[0], seconds)
            if self.access_log:
                client = scope.get("client")
                access_logger.info('%s "%s %s" %d %.1f ms', f"{client[0]}:{client[1]}" if client else "-",
                                   method if method_label(method) != OTHER else "(other)", scope.get("path", ""),
                                   status[0], seconds * 1000)
            logs.CONTEXT.reset(token)

    # ---- checks ------------------------------------------------------------------------------
    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) for a request refused before the app sees it, else None."""
        host = _header(scope, b"host")
        if self.allowed_hosts is not None and (host is None or host_name(host) not in self.allowed_hosts):
            return 421, (f"this server does not answer for the host {host!r}" if host is not None else
                         "send a Host header") + "; it answers for the names of --allowed-host"
        if not self._checked(scope):
            return None
        origin = _header(scope, b"origin")
        if origin is not None and not self._same_or_allowed(origin, host):
            return 403, (f"cross-origin request refused: the Origin {origin!r} is neither this server nor an "
                         f"allowed --cors-origin")
        ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            return 415, (f"send the request as JSON (Content-Type: application/json), not "
                         f"{ctype or 'without a content type'}")
        return None

    def _checked(self, scope: Scope) -> bool:
        """Whether the request is a POST to a POST route (its Origin, type and body are checked)."""
        return scope["method"] in CHECKED_METHODS and _route_path(scope) in self.post_paths

    def _same_or_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return host is not None and parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()

    async def _checked_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """A receive() that replays the whole (checked) body, or None after answering 4xx."""
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit()):
            self._refused(scope, 400, "Content-Length is not a number")
            await _send_error(send, 400, "Content-Length must be a number")
            return None
        if length is not None and int(length) > self.max_body_bytes:
            message = f"request body of {int(length)} bytes is over the limit of {self.max_body_bytes} bytes"
            self._refused(scope, 413, message)
            await _send_error(send, 413, message)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                text = f"request body is over the limit of {self.max_body_bytes} bytes"
                self._refused(scope, 413, text)
                await _send_error(send, 413, text)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    # ---- bookkeeping -------------------------------------------------------------------------
    @staticmethod
    def _refused(scope: Scope, status: int, message: str) -> None:
        client = scope.get("client")
        logger.warning("refused %s %s from %s (%d): %s", method_label(scope["method"]), scope.get("path", ""),
                       client[0] if client else "-", status, message)

    def _observe(self, scope: Scope, method: str, status: int, seconds: float) -> None:
        if self.metrics is None:
            return
        route = getattr(scope.get("route"), "path", None)
        if route is None:  # not an API route: a fixed label, never the raw path (unbounded label values)
            path = _route_path(scope)
            route = "/static" if path.startswith("/static/") else path if path in PLAIN_ROUTES else OTHER
        self.metrics.requests.labels(route, method_label(method), status_label(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
