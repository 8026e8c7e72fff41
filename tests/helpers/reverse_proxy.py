"""A small HTTP/1.1 reverse proxy on 127.0.0.1 for tests, in plain Python (asyncio streams in a thread).

It serves an upstream under a path prefix as nginx's ``location /search/ { proxy_pass
http://127.0.0.1:8080/; }`` with ``proxy_set_header Host $host`` and ``X-Forwarded-For`` /
``X-Forwarded-Proto`` does: a request for ``PREFIX/rest`` goes upstream as ``/rest`` with the
client's Host, ``PREFIX`` alone is redirected to ``PREFIX/``, anything else is 404. Client
connections are kept alive (as a browser wants); each request gets an upstream connection of its own
(``Connection: close``), opened from ``source`` (another loopback address lets a test tell the proxy
from a direct client) and with ``forwarded_for`` as the client address when given.
"""
from __future__ import annotations

import asyncio
import threading

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                        b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto"})
HEAD_LIMIT = 64 * 1024
IDLE_S = 30.0
START_TIMEOUT_S = 10.0


def _parse_head(head: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
    return lines[0].split(b" ", 2), headers


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k.lower() == name), None)


class ReverseProxy:
    """``with ReverseProxy((host, port), "/search") as proxy:`` serves the upstream at ``proxy.url``
    (``http://127.0.0.1:PORT/search/``); ``requests`` counts what it forwarded."""

    def __init__(self, upstream: tuple[str, int], prefix: str = "/search", *, source: str = "127.0.0.1",
                 forwarded_for: str | None = None) -> None:
        self.upstream = upstream
        self.prefix = prefix.rstrip("/").encode()
        self.source = source
        self.forwarded_for = forwarded_for
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> ReverseProxy:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the reverse proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        def stop() -> None:
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(START_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix.decode()}/"

    # ---- requests --------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                        ConnectionError):
                    return
                (method, target, _version), headers = _parse_head(head[:-4])
                length = int(_get(headers, b"content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                answer = await self._forward(method, target, headers, body, client)
                writer.write(answer)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    async def _forward(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                       client: str) -> bytes:
        path, _, query = target.partition(b"?")
        if path == self.prefix:
            return (b"HTTP/1.1 301 Moved Permanently\r\nLocation: " + self.prefix + b"/"
                    + (b"?" + query if query else b"") + b"\r\nContent-Length: 0\r\n\r\n")
        if not path.startswith(self.prefix + b"/"):
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        self.requests += 1
        upstream_target = target[len(self.prefix):]
        forwarded = (self.forwarded_for or client).encode()
        lines = [method + b" " + upstream_target + b" HTTP/1.1"]
        lines += [k + b": " + v for k, v in headers if k.lower() not in HOP_BY_HOP]
        lines += [b"X-Forwarded-For: " + forwarded, b"X-Forwarded-Proto: http", b"Connection: close"]
        reader, writer = await asyncio.open_connection(*self.upstream, local_addr=(self.source, 0))
        try:
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            await writer.drain()
            answer = await reader.read()  # Connection: close: the whole answer, then EOF
        finally:
            writer.close()
        head, _, rest = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        kept = [line for line in header_lines if line.split(b":", 1)[0].strip().lower() != b"connection"]
        return b"\r\n".join([status_line, *kept, b"Connection: keep-alive"]) + b"\r\n\r\n" + rest
