"""The service's outermost ASGI layer (runtime.serve.guard), driven directly with a stand-in app.

What the live-server tests cannot reach cheaply: an exception that escapes the app before and
after the response started, request ids given and made, HEAD answered as GET without a body,
which requests are checked (POSTs to POST routes only), the access log line and the metrics.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

pytest.importorskip("prometheus_client", reason="the service's metrics need the 'serve' extra")

from runtime.serve.guard import HEAD_KEY, SECURITY_HEADERS, GuardMiddleware
from runtime.serve.metrics import Metrics
from ucofia import logs

POST_PATHS = frozenset({"/v1/search"})
APP_SLEEP_S = 0.05


def _scope(method: str = "GET", path: str = "/v1/info", headers: dict[str, str] | None = None) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", "client": ("127.0.0.1", 5000),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {"host": "127.0.0.1"}).items()]}


def _run(guard: GuardMiddleware, scope: dict, body: bytes = b"") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent


def _headers(start: dict) -> dict[bytes, bytes]:
    return dict(start["headers"])


class App:
    """Answers 200 "hello" (after a short sleep), or raises before / after starting the answer."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope)
        await asyncio.sleep(APP_SLEEP_S)
        if self.fail == "before":
            raise RuntimeError("boom before")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if self.fail == "after":
            raise RuntimeError("boom after")
        await send({"type": "http.response.body", "body": b"hello"})
        await send({"type": "http.response.body", "body": b""})


def _guard(app, metrics=None, **kwargs) -> GuardMiddleware:
    return GuardMiddleware(app, max_body_bytes=1000, metrics=metrics, allowed_hosts=None, post_paths=POST_PATHS,
                           **kwargs)


def _counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _access_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.serve.access"]
    assert len(lines) == 1, lines
    return lines[0]


def test_an_exception_before_the_answer_is_a_500_naming_the_request_id(caplog):
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    sent = _run(_guard(App("before"), metrics), _scope())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    start, body = sent
    rid = _headers(start)[b"x-request-id"].decode()
    assert start["status"] == 500
    assert json.loads(body["body"]) == {"error": f"internal error; the server log has the cause under request id {rid}"}
    assert all(_headers(start)[k] == v for k, v in SECURITY_HEADERS)
    assert _counter(metrics, "ucofia_errors_total", kind="internal") == 1
    assert any(r.levelname == "ERROR" and "boom before" in (r.exc_text or "") for r in caplog.records)
    line = _access_line(caplog)
    assert re.fullmatch(r'127\.0\.0\.1:5000 "GET /v1/info" 500 [0-9.]+ ms', line), line
    assert APP_SLEEP_S * 1000 <= float(line.split()[-2]) < 60_000


def test_an_exception_after_the_answer_started_sends_nothing_more(caplog):
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    sent = _run(_guard(App("after"), metrics), _scope())
    assert [m["type"] for m in sent] == ["http.response.start"] and sent[0]["status"] == 200
    assert _counter(metrics, "ucofia_errors_total", kind="internal") == 1
    assert '"GET /v1/info" 200 ' in _access_line(caplog)


def test_without_metrics_an_escaping_exception_is_still_a_500():
    sent = _run(_guard(App("before"), None), _scope())
    assert sent[0]["status"] == 500


def test_request_ids_are_taken_when_safe_and_made_otherwise():
    made = _headers(_run(_guard(App()), _scope())[0])[b"x-request-id"].decode()
    assert re.fullmatch(r"[0-9a-f]{16}", made)
    for given, kept in (("abc-1.2:x_y", True), ("a" * 64, True), ("a" * 65, False), ("has space", False),
                        ("semi;colon", False)):
        rid = _headers(_run(_guard(App()), _scope(headers={"host": "h", "x-request-id": given}))[0])[b"x-request-id"]
        assert (rid.decode() == given) is kept, given


def test_the_request_id_is_in_the_log_context_only_while_the_request_runs():
    seen: list[dict] = []

    async def app(scope, receive, send):
        seen.append(dict(logs.CONTEXT.get()))
        await App()(scope, receive, send)

    before = dict(logs.CONTEXT.get())
    start = _run(_guard(app), _scope())[0]
    assert seen[0]["request_id"] == _headers(start)[b"x-request-id"].decode()
    assert dict(logs.CONTEXT.get()) == before


def test_head_is_answered_as_get_without_the_body():
    app = App()
    sent = _run(_guard(app), _scope("HEAD"))
    assert app.scopes[0]["method"] == "GET" and app.scopes[0][HEAD_KEY] is True
    assert sent[0]["status"] == 200 and _headers(sent[0])[b"content-type"] == b"text/plain"
    assert [m.get("body") for m in sent[1:]] == [b"", b""]
    get = App()
    assert [m.get("body") for m in _run(_guard(get), _scope())[1:]] == [b"hello", b""]
    assert HEAD_KEY not in get.scopes[0]


@pytest.mark.parametrize("method, path, checked", [
    ("POST", "/v1/search", True),      # a POST route: Origin, type and body are checked
    ("POST", "/v1/info", False),       # not a POST route: the app answers (405)
    ("GET", "/v1/search", False),      # not a POST: the app answers
])
def test_only_posts_to_post_routes_are_checked(method, path, checked):
    app = App()
    sent = _run(_guard(app), _scope(method, path, headers={"host": "127.0.0.1", "origin": "http://evil.example"}))
    assert (sent[0]["status"] == 403) is checked and (not app.scopes) is checked


def test_the_access_log_names_unknown_methods_as_other_and_is_on_by_default(caplog):
    caplog.set_level(logging.INFO)
    _run(_guard(App()), _scope("BREW", "/coffee"))
    assert '"(other) /coffee" 200' in _access_line(caplog)
    caplog.clear()
    _run(_guard(App(), access_log=False), _scope())
    assert not [r for r in caplog.records if r.name == "runtime.serve.access"]


def test_the_metrics_count_each_request_once_by_route_method_and_status():
    metrics = Metrics()
    _run(_guard(App(), metrics), _scope("GET", "/static/app.js"))
    _run(_guard(App("before"), metrics), _scope("GET", "/static/app.js"))
    count = {status: _counter(metrics, "ucofia_http_requests_total", route="/static", method="GET", status=status)
             for status in ("200", "500")}
    assert count == {"200": 1, "500": 1}


# ---- bodies and uploads --------------------------------------------------------------------------
MAX_BODY = 1000
MAX_UPLOAD = 5000
MULTIPART_SLACK = 64 * 1024  # what docs/serve.md allows an upload's form on top of --max-upload-mb
UPLOAD = "/v1/search/by-video"


class BodyApp:
    """Answers 200 with the body it received (all of it, through receive())."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.bodies.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _body_guard(app, metrics=None) -> GuardMiddleware:
    return GuardMiddleware(app, max_body_bytes=MAX_BODY, metrics=metrics, allowed_hosts=None,
                           post_paths=POST_PATHS | {UPLOAD}, upload_paths=frozenset({UPLOAD}),
                           max_upload_bytes=MAX_UPLOAD)


def _post(guard, path: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[list[dict], list[str]]:
    """(what the guard sent, what the app's receive() saw after the body: the next message types)."""
    scope = _scope("POST", path, headers={"host": "127.0.0.1", **headers})
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent, [m["type"] for m in messages]


JSON = {"content-type": "application/json"}


def test_a_json_body_up_to_the_limit_reaches_the_app_whole(caplog):
    app = BodyApp()
    body = b"x" * MAX_BODY
    sent, _ = _post(_body_guard(app), "/v1/search", [body], {**JSON, "content-length": str(MAX_BODY)})
    assert sent[0]["status"] == 200 and app.bodies == [body]
    chunked = [b"a" * 400, b"b" * 400, b"c" * 200]  # no Content-Length: counted as it arrives
    sent, left = _post(_body_guard(app), "/v1/search", chunked, JSON)
    assert sent[0]["status"] == 200 and app.bodies[-1] == b"".join(chunked) and left == ["http.disconnect"]


@pytest.mark.parametrize("chunks, headers, status, message", [
    ([b"x" * (MAX_BODY + 1)], {"content-length": str(MAX_BODY + 1)}, 413,
     f"request body of {MAX_BODY + 1} bytes is over the limit of {MAX_BODY} bytes"),
    ([b"x" * 600, b"x" * (MAX_BODY - 599)], {}, 413, f"request body is over the limit of {MAX_BODY} bytes"),
    ([b"{}"], {"content-length": "2x"}, 400, "Content-Length must be a number"),
])
def test_a_json_body_over_the_limit_or_with_a_bad_length_is_refused(caplog, chunks, headers, status, message):
    caplog.set_level(logging.WARNING)
    app = BodyApp()
    sent, _ = _post(_body_guard(app), "/v1/search", chunks, {**JSON, **headers})
    assert sent[0]["status"] == status and json.loads(sent[1]["body"]) == {"error": message}
    assert app.calls == 0
    assert any(r.levelname == "WARNING" and f"({status})" in r.getMessage() for r in caplog.records)


def test_a_client_gone_during_the_body_gets_nothing():
    app = BodyApp()
    guard = _body_guard(app)
    scope = _scope("POST", "/v1/search", headers={"host": "127.0.0.1", **JSON})
    messages = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    assert app.calls == 0 and sent == []


def test_an_upload_up_to_its_limit_reaches_the_app_unbuffered():
    app = BodyApp()
    form = {"content-type": "multipart/form-data; boundary=x"}
    limit = MAX_UPLOAD + MULTIPART_SLACK
    chunks = [b"y" * (limit - 10), b"z" * 10]
    sent, left = _post(_body_guard(app), UPLOAD, chunks, {**form, "content-length": str(limit)})
    assert sent[0]["status"] == 200 and app.bodies == [b"".join(chunks)] and left == ["http.disconnect"]


@pytest.mark.parametrize("headers, status, message", [
    ({"content-type": "application/json", "content-length": "10"}, 415,
     "send the file as multipart/form-data, not application/json"),
    ({"content-type": "multipart/form-data; boundary=x"}, 411, "send the upload with a Content-Length"),
    ({"content-type": "multipart/form-data; boundary=x", "content-length": "ten"}, 400,
     "Content-Length must be a number"),
    ({"content-type": "multipart/form-data; boundary=x", "content-length": str(MAX_UPLOAD + MULTIPART_SLACK + 1)},
     413, f"the upload of {MAX_UPLOAD + MULTIPART_SLACK + 1} bytes is over the limit of {MAX_UPLOAD} bytes "
          f"(--max-upload-mb)"),
    ({"content-type": "multipart/form-data; boundary=x", "content-length": "10", "origin": "http://evil.example"},
     403, "cross-origin request refused"),
])
def test_an_upload_of_the_wrong_type_length_or_origin_is_refused(headers, status, message):
    app = BodyApp()
    sent, _ = _post(_body_guard(app), UPLOAD, [b"0123456789"], headers)
    assert sent[0]["status"] == status and message in json.loads(sent[1]["body"])["error"]
    assert app.calls == 0
    # the same request as a GET is the app's to answer (405 there), not the guard's
    get = BodyApp()
    assert _run(_body_guard(get), _scope("GET", UPLOAD, headers={"host": "127.0.0.1", **headers}))[0]["status"] == 200


def test_an_app_that_answers_nothing_is_logged_as_500(caplog):
    caplog.set_level(logging.INFO)

    async def silent(scope, receive, send) -> None:
        return None

    assert _run(_guard(silent), _scope()) == []
    assert '"GET /v1/info" 500 ' in _access_line(caplog)


def test_the_log_context_is_restored_in_the_callers_context_too():
    async def main():
        before = dict(logs.CONTEXT.get())
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await _guard(App())(_scope(), receive, send)
        return before, dict(logs.CONTEXT.get()), sent

    before, after, sent = asyncio.run(main())
    assert after == before and sent[0]["status"] == 200


def test_latency_is_observed_per_route():
    metrics = Metrics()
    for _ in range(2):
        _run(_guard(App(), metrics), _scope("GET", "/static/app.js"))
    assert _counter(metrics, "ucofia_http_request_duration_seconds_count", route="/static") == 2


def test_host_names_and_the_root_path():
    from runtime.serve.guard import _route_path, host_name

    assert host_name("[::1]:8080") == "::1" and host_name("Example.org:80") == "example.org"
    assert host_name("::1") == "::1" and host_name("localhost") == "localhost"
    assert _route_path({"path": "/search/v1/search", "root_path": "/search"}) == "/v1/search"
    assert _route_path({"path": "/v1/search", "root_path": ""}) == "/v1/search"


def test_a_body_message_without_more_body_is_the_last_one():
    """ASGI: ``more_body`` defaults to False, so a server may leave it out of the last message."""
    app = BodyApp()
    scope = _scope("POST", "/v1/search", headers={"host": "127.0.0.1", **JSON})
    messages = [{"type": "http.request", "body": b"{}"}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(_body_guard(app)(scope, receive, send))
    assert app.bodies == [b"{}"] and sent[0]["status"] == 200
