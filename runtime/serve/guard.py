"""The outermost ASGI layer of the app: request body limits and content type, security headers on
every response, and the per-route request metrics."""
from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_TYPES = ("application/json",)
PLAIN_ROUTES = frozenset({"/openapi.json"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_error(send: Send, status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Rejects bodies over ``max_body_bytes`` (413) and non-JSON bodies (415) before the app sees
    them, adds the security headers (CSP etc.) to every response, and counts requests by route
    template, method and status (``metrics``: runtime.serve.metrics.Metrics)."""

    def __init__(self, app: Callable, *, max_body_bytes: int, metrics: Any) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                present = {key.lower() for key, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in present)]
            await send(message)

        try:
            if scope["method"] in BODY_METHODS:
                replay = await self._checked_body(scope, receive, send_secured)
                if replay is None:
                    return
                receive = replay
            await self.app(scope, receive, send_secured)
        finally:
            self._observe(scope, status[0], time.perf_counter() - start)

    async def _checked_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """A receive() that replays the whole (checked) body, or None after answering 4xx."""
        length = _header(scope, b"content-length")
        chunked = "chunked" in (_header(scope, b"transfer-encoding") or "").lower()
        if length is not None and (not length.isdigit()):
            await _send_error(send, 400, "Content-Length must be a number")
            return None
        has_body = chunked or (length is not None and int(length) > 0)
        if has_body:
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if ctype not in JSON_TYPES:
                await _send_error(send, 415, f"send the request body as JSON (Content-Type: application/json), "
                                             f"not {ctype or 'no content type'}")
                return None
        if length is not None and int(length) > self.max_body_bytes:
            await _send_error(send, 413, f"request body of {int(length)} bytes is over the limit of "
                                         f"{self.max_body_bytes} bytes")
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
                await _send_error(send, 413, f"request body is over the limit of {self.max_body_bytes} bytes")
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

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        if self.metrics is None:
            return
        route = getattr(scope.get("route"), "path", None)
        if route is None:  # not an API route: a fixed label, never the raw path (unbounded label values)
            path = scope.get("path", "")
            route = "/static" if path.startswith("/static/") else path if path in PLAIN_ROUTES else "unmatched"
        self.metrics.requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
