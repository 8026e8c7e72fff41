"""HTTP details of a real `ucofia-run serve` on 127.0.0.1 (issue 23, items 2, 4, 5 and 8).

* Metrics whose labels come from fixed sets: invented methods and paths add no series.
* HEAD wherever GET works; ETag / If-None-Match answers 304.
* Trusted hosts (DNS rebinding) and origins: a Host that is not allowed gets 421; a cross-site
  form-style POST (no JSON, or a foreign Origin) reloads nothing.
* Queries with no text (zero-width characters count as blank) get one clear message; a search whose
  client went away is dropped before the text encoder runs; the media type comes from the container
  recorded at indexing (a video named .html is served as video/mp4, with nosniff); a source file
  whose modification time changed is refused like one whose size changed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the HTTP tests use httpx")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServeProcess, ServerThread, build_index, open_app, private_keys  # noqa: E402

from runtime.serve.contract import QUERY_RULE  # noqa: E402
from runtime.serve.metrics import METHODS, STATUSES  # noqa: E402

QUERY = {"queries": ["a red car"], "top_k": 2}
INVENTED = 300  # invented methods, and as many invented paths
WAIT_S = 30.0


@pytest.fixture(scope="module")
def built(fake_bundle, tmp_path_factory):
    """(clip folder, index) of 3 clips."""
    _, clips, index = build_index(tmp_path_factory.mktemp("serve_http"), clips=3, bundle=fake_bundle)
    return clips, index


@pytest.fixture(scope="module")
def server(built):
    with ServeProcess("--index", str(built[1])) as proc, httpx.Client(base_url=proc.url, timeout=WAIT_S) as client:
        yield proc, client


# ------------------------------------------------------------------------------------------------ item 2
def _series(metrics: str, name: str) -> list[dict[str, str]]:
    return [dict(re.findall(r'(\w+)="([^"]*)"', labels))
            for labels in re.findall(rf"^{name}{{([^}}]*)}}", metrics, re.M)]


def test_invented_methods_and_paths_add_no_metric_series(server):
    _, client = server
    client.get("/healthz"), client.get("/nothing")
    before = _series(client.get("/metrics").text, "ucofia_http_requests_total")
    start = time.monotonic()
    for i in range(INVENTED):
        assert time.monotonic() - start < 60
        assert client.request(f"M{i}X", "/healthz").status_code == 405
        assert client.request(f"M{i}Y", f"/invented/{i}").status_code == 404
        assert client.get(f"/path{i}/{'x' * (i % 7)}").status_code == 404
    after = _series(client.get("/metrics").text, "ucofia_http_requests_total")
    assert len(after) <= len(before) + 3, after  # at most: other method on /healthz and on other; 405
    assert {s["method"] for s in after} <= METHODS | {"other"}
    assert {s["status"] for s in after} <= {str(s) for s in STATUSES} | {"other"}
    routes = {s["route"] for s in after}
    assert not any("invented" in r or "path" in r for r in routes), routes
    latency = _series(client.get("/metrics").text, "ucofia_http_request_duration_seconds_count")
    assert not any("invented" in s["route"] for s in latency)


# ------------------------------------------------------------------------------------------------ item 4
GET_ROUTES = ["/healthz", "/readyz", "/v1/info", "/openapi.json", "/", "/static/app.js", "/v1/videos/clip1",
              "/v1/videos/clip1/thumbnail", "/v1/videos/clip1/media", "/metrics"]


@pytest.mark.parametrize("path", GET_ROUTES)
def test_head_works_wherever_get_does(server, path):
    _, client = server
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code == 200, (head.status_code, head.text)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # the metrics change between the two requests
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert head.headers["x-content-type-options"] == "nosniff" and "x-request-id" in head.headers


@pytest.mark.parametrize("path", ["/v1/videos/clip1/media", "/v1/videos/clip1/thumbnail", "/", "/static/app.js"])
def test_if_none_match_answers_304(server, path):
    _, client = server
    first = client.get(path)
    etag = first.headers["etag"]
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get(path, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


# ------------------------------------------------------------------------------------------------ item 5
@pytest.mark.parametrize("path", ["/healthz", "/v1/info", "/v1/videos/clip0/media", "/"])
def test_a_host_that_is_not_allowed_gets_421(server, path):
    proc, client = server
    port = proc.address[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", "localhost.evil.example"):
        reply = client.get(path, headers={"Host": host})
        assert reply.status_code == 421, (host, reply.status_code)
        assert "does not answer for the host" in reply.json()["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert client.get(path, headers={"Host": host}).status_code == 200, host
    reply = client.post("/v1/search", json=QUERY, headers={"Host": "evil.example"})
    assert reply.status_code == 421


@pytest.mark.slow  # servers of its own
def test_allowed_hosts_with_keys_and_by_option(built, tmp_path):
    keys = private_keys(tmp_path / "keys.json")
    auth = {"Authorization": f"Bearer {keys.search}"}
    with ServeProcess("--index", str(built[1]), "--api-keys", str(keys.path)) as proc, \
            httpx.Client(base_url=proc.url, timeout=WAIT_S) as client:  # keys on 127.0.0.1: that address
        assert client.post("/v1/search", json=QUERY, headers=auth).status_code == 200
        assert client.post("/v1/search", json=QUERY, headers={**auth, "Host": "evil.example"}).status_code == 421
    with ServeProcess("--index", str(built[1]), "--allowed-host", "Search.Example") as proc, \
            httpx.Client(base_url=proc.url, timeout=WAIT_S) as client:
        assert client.get("/v1/info", headers={"Host": "search.example:443"}).status_code == 200
        assert client.get("/v1/info", headers={"Host": "localhost"}).status_code == 421
    with ServeProcess("--index", str(built[1]), "--allowed-host", "*") as proc, \
            httpx.Client(base_url=proc.url, timeout=WAIT_S) as client:
        assert client.get("/v1/info", headers={"Host": "anything.example"}).status_code == 200


def test_a_cross_site_form_post_reloads_nothing(server):
    proc, client = server
    port = proc.address[1]
    version = client.get("/readyz").json()["snapshot"]["version"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    refused = [
        (client.post("/v1/admin/reload", headers={**form, "Origin": "https://evil.example"}), 403),
        (client.post("/v1/admin/reload", headers=form), 415),
        (client.post("/v1/admin/reload", content=b"", headers={"Content-Type": "text/plain"}), 415),
        (client.post("/v1/admin/reload", json={}, headers={"Origin": "https://evil.example"}), 403),
        (client.post("/v1/admin/reload", json={}, headers={"Origin": "null"}), 403),
        (client.post("/v1/admin/reload", json={}, headers={"Origin": f"http://evil.example:{port}"}), 403),
        (client.post("/v1/search", json=QUERY, headers={"Origin": "https://evil.example"}), 403),
    ]
    for reply, status in refused:
        assert reply.status_code == status, reply.text
    assert client.get("/readyz").json()["snapshot"]["version"] == version
    assert "cross-origin request refused" in proc.log and "refused POST /v1/admin/reload" in proc.log
    same_origin = client.post("/v1/admin/reload", json={}, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same_origin.status_code == 200 and same_origin.json()["snapshot"]["version"] == version + 1


def test_a_cors_origin_may_post(built):
    with ServeProcess("--index", str(built[1]), "--cors-origin", "https://app.example.org") as proc, \
            httpx.Client(base_url=proc.url, timeout=WAIT_S) as client:
        reply = client.post("/v1/search", json=QUERY, headers={"Origin": "https://app.example.org"})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://app.example.org"


# ------------------------------------------------------------------------------------------------ item 8
NO_TEXT = "no text is left after cleaning"


@pytest.mark.parametrize("query,message", [
    ("\u200b", QUERY_RULE), ("\u200b \u2060\u200d", QUERY_RULE), ("\x00\x01\x1f", QUERY_RULE), (" \u180e ", QUERY_RULE),
    ("&nbsp;", NO_TEXT), ("&#8203;", NO_TEXT), ("&#8203; &nbsp;\u200c", NO_TEXT), ("\x1b[31m", NO_TEXT),
])
def test_a_query_with_no_text_gets_one_clear_message(server, query, message):
    _, client = server
    reply = client.post("/v1/search", json={"queries": ["a red car", query], "top_k": 1})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error.startswith("queries.1: ") and message in error, error
    assert "annotation file" not in error and "starting at number" not in error


def test_text_around_zero_width_characters_is_searched(server):
    _, client = server
    assert client.post("/v1/search", json={"queries": ["a\u200bred car", "&amp;"], "top_k": 1}).status_code == 200


def test_a_search_whose_client_went_away_is_dropped_before_the_encoder(built):
    """The first search holds the model (a gate); the second is queued, its client hangs up; when
    the gate opens only the first search's query has been encoded."""
    service, app = open_app(built[1], max_wait_ms=0)
    gate = threading.Event()
    real = service.batcher.process

    def held(jobs):
        gate.wait(WAIT_S)
        return real(jobs)

    service.batcher.process = held
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        def metric(pattern: str) -> str | None:
            found = re.search(pattern, client.get("/metrics").text, re.M)
            return found[1] if found else None

        def wait(pattern: str, value: str) -> None:
            deadline = time.monotonic() + WAIT_S
            while metric(pattern) != value:
                assert time.monotonic() < deadline, pattern
                time.sleep(0.02)

        first: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: first.update(reply=client.post("/v1/search", json=QUERY)))
        thread.start()
        wait(r"^ucofia_batch_queries_count (\S+)", "1.0")  # the first search is in the model, held
        body = json.dumps({"queries": ["one", "two", "three"], "top_k": 1}).encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
            sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait(r"^ucofia_queue_depth (\S+)", "1.0")  # queued behind the first
        wait(r'^ucofia_http_requests_total{method="POST",route="/v1/search",status="499"} (\S+)', "1.0")
        gate.set()
        thread.join(WAIT_S)
        assert first["reply"].status_code == 200
        wait(r'^ucofia_dropped_requests_total{reason="disconnected"} (\S+)', "1.0")
        assert metric(r"^ucofia_batch_queries_sum (\S+)") == "1.0"  # the three queries were never encoded
        assert metric(r"^ucofia_batch_queries_count (\S+)") == "1.0"


@pytest.fixture
def odd_index(fake_bundle, tmp_path):
    """An index of a video named page.html and of a copy of it named clip.mp4."""
    _, clips, _ = build_index(tmp_path / "src", clips=1, bundle=fake_bundle)
    page, clip = tmp_path / "page.html", tmp_path / "clip.mp4"
    shutil.copy(clips / "clip0.mp4", page)
    shutil.copy(clips / "clip0.mp4", clip)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"page\t{page}\nclip\t{clip}\n")
    index = tmp_path / "index"
    result = run_cli("index", "--bundle", str(fake_bundle), "--videos", str(listing), "-o", str(index), "-q",
                     "--workers", "1")
    assert result.returncode == 0, result.stderr
    return index, page, clip


def test_media_type_from_the_container_and_freshness_by_mtime(odd_index):
    index, page, clip = odd_index
    with ServeProcess("--index", str(index)) as proc, httpx.Client(base_url=proc.url, timeout=WAIT_S) as client:
        assert client.get("/v1/videos/page").json()["entry"]["container"].startswith("mov,mp4")
        reply = client.get("/v1/videos/page/media")
        assert reply.status_code == 200 and reply.content == page.read_bytes()
        assert reply.headers["content-type"] == "video/mp4" and reply.headers["x-content-type-options"] == "nosniff"
        assert client.get("/v1/videos/clip/media").status_code == 200
        stat = clip.stat()
        os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same size, another mtime
        changed = client.get("/v1/videos/clip/media")
        assert changed.status_code == 409 and "changed since it was indexed" in changed.json()["error"]
