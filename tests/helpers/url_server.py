"""Loopback servers for videos at URLs (tests of ``runtime.remote``).

``FileServer``: a stdlib HTTP server on 127.0.0.1 (any free port, in a thread) serving a folder,
with HEAD, single byte ranges, ETag (of the file's content) and Last-Modified, and knobs a test
turns: ``slow`` (paths answered only after ``slow_s``: timeouts), ``no_validators`` (no ETag nor
Last-Modified), ``no_ranges`` (Range ignored), ``status`` (path -> an error status it answers).
``requests`` logs (method, path) of every request.

``moto_s3()``: moto's S3 server on 127.0.0.1 with fake credentials, or a pytest skip naming what
is missing.
"""
from __future__ import annotations

import email.utils
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class FileServer:
    """Serve ``root`` at ``url`` (``http://127.0.0.1:PORT``) while the ``with`` block runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slow: set[str] = set()
        self.slow_s = 5.0
        self.no_validators = False
        self.no_ranges = False
        self.status: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                with server._lock:
                    server.requests.append((self.command, self.path))
                if self.path in server.slow:
                    time.sleep(server.slow_s)
                if self.path in server.status:
                    self.send_error(server.status[self.path])
                    return
                file = server.root / self.path.lstrip("/").split("?", 1)[0]
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start, end, status = 0, len(data), 200
                match = RANGE.match(self.headers.get("Range", ""))
                if match and not server.no_ranges:
                    first, last = match.groups()
                    if first:
                        start, end = int(first), min(int(last) + 1 if last else len(data), len(data))
                    else:
                        start = max(len(data) - int(last), 0)
                    status = 206
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(end - start))
                    self.send_header("Content-Type", "video/mp4")
                    if status == 206:
                        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                    if not server.no_validators:
                        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
                        self.send_header("Last-Modified", email.utils.formatdate(file.stat().st_mtime, usegmt=True))
                    self.end_headers()
                    if body:
                        self.wfile.write(data[start:end])
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def count(self, method: str, path: str) -> int:
        """How many ``method`` requests for ``path`` came in."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and p == path)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@contextmanager
def moto_s3(monkeypatch) -> Iterator[str]:
    """The endpoint URL of moto's S3 server on 127.0.0.1, with fake AWS credentials and
    ``UCOFIA_S3_ENDPOINT_URL`` set in the environment; skips when moto, boto3 or s3fs is missing."""
    import pytest

    for module in ("moto.server", "boto3", "s3fs"):
        pytest.importorskip(module, reason=f"the S3 tests need {module} (pip install 'ucofia[test]')")
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("UCOFIA_S3_ENDPOINT_URL", endpoint)
        yield endpoint
    finally:
        server.stop()
