"""ucofia-run serve's HTTP API on a real uvicorn server (127.0.0.1, free port): every route, the auth
matrix, bad input (each gets its 4xx and the server keeps answering), media with HTTP Range,
signed URLs, metrics, CORS, security headers, and the bounded queue (503 + Retry-After) / timeout."""
from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the API tests use httpx")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServerThread, build_index, make_keys, open_app  # noqa: E402

from runtime.bundle import load_bundle  # noqa: E402
from runtime.index import GalleryIndex, IndexWriter  # noqa: E402
from runtime.thumbnails import THUMBNAIL_DIR, thumbnail_file  # noqa: E402

CLIPS = 5
CLIENT_TIMEOUT_S = 30
QUERY = {"queries": ["a red car on the road"], "top_k": 3}


@pytest.fixture(scope="module")
def served(fake_bundle, tmp_path_factory):
    """An index of 5 clips plus three odd entries, served with API keys."""
    root = tmp_path_factory.mktemp("serve_api")
    bundle_dir, clips, index = build_index(root, CLIPS, bundle=fake_bundle)
    gallery = GalleryIndex(index)
    first = gallery.features(0, 1, roles=("video", "frame_features", "patches", "video_mask"))
    three = {role: np.repeat(value, 3, axis=0) for role, value in first.items()}
    clip0 = gallery.entry("clip0")
    with IndexWriter(index, load_bundle(bundle_dir)) as writer:
        writer.add_batch(["legacy", "dir/clip0", "gone"], three, [
            {"id": "legacy"},  # as a format 1 index records it: no source path
            {**clip0, "id": "dir/clip0"},  # an id with a slash
            {**clip0, "id": "gone", "path": str(root / "deleted.mp4")},  # its source went away
        ])
    keys = make_keys(root / "keys.json")
    service, app = open_app(index, api_keys=keys.path)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        yield {"client": client, "keys": keys, "index": index, "service": service, "clips": clips,
               "url": server.url}


def _auth(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _search_ok(served) -> None:
    reply = served["client"].post("/v1/search", json=QUERY, headers=_auth(served["keys"].search))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["results"][0]["results"]) == 3


def test_health_ready_info_and_openapi(served):
    client = served["client"]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["checks"] == {"sessions": True, "index": True, "batcher": True}
    info = client.get("/v1/info").json()
    assert info["auth_required"] is True and info["snapshot"]["videos"] == CLIPS + 3
    assert info["levels"] == ["video_sentence", "frame_sentence", "patch_word"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/videos/{video_id}", "/v1/videos/{video_id}/thumbnail", "/v1/videos/{video_id}/media",
            "/v1/admin/reload", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert request["queries"]["maxItems"] == 64 and request["top_k"]["maximum"] == 100
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_search_matches_the_cli(served, tmp_path):
    queries = ["a red car on the road", "someone cooking", "blue sky"]
    reply = served["client"].post("/v1/search", json={"queries": queries, "top_k": 6},
                                  headers=_auth(served["keys"].search))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert reply.headers["cache-control"] == "no-store"
    assert body["mode"] == "exhaustive" and body["top_k"] == 6
    assert body["group_by"] is None  # an index of whole files: nothing to group
    assert body["batch"]["queries"] >= 3 and body["batch"]["requests"] >= 1
    assert set(body["timings"]) == {"queue_ms", "encode_ms", "score_ms", "total_ms"}
    out = tmp_path / "cli.jsonl"
    cli = run_cli("search", "--index", str(served["index"]), *[a for q in queries for a in ("--query", q)],
                  "--top-k", "6", "-o", str(out))
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    for got, want in zip(body["results"], expected):
        assert got["query"] == want["query"] and got["truncated"] is False
        assert [h["video_id"] for h in got["results"]] == [h["video_id"] for h in want["results"]]
        for hit, ref in zip(got["results"], want["results"]):
            assert hit["rank"] == ref["rank"]
            assert hit["score"] == pytest.approx(ref["score"], rel=1e-6, abs=1e-6)
            for level, value in ref["levels"].items():
                assert hit["levels"][level] == pytest.approx(value, rel=1e-6, abs=1e-6)
            assert "path" not in hit["entry"] and "id" not in hit["entry"]
            assert hit["links"]["video"] == "/v1/videos/" + hit["video_id"].replace("/", "%2F")
            assert "sig=" in hit["links"]["thumbnail"] and "sig=" in hit["links"]["media"]


def test_two_stage_per_request_equals_exhaustive_on_a_small_gallery(served):
    client, key = served["client"], served["keys"].search
    plain = client.post("/v1/search", json={**QUERY, "top_k": 5}, headers=_auth(key)).json()
    staged = client.post("/v1/search", json={**QUERY, "top_k": 5, "two_stage": True}, headers=_auth(key)).json()
    assert staged["mode"] == "two_stage" and plain["mode"] == "exhaustive"
    assert [h["video_id"] for h in staged["results"][0]["results"]] == \
           [h["video_id"] for h in plain["results"][0]["results"]]


SEARCH_ROUTES = [("POST", "/v1/search"), ("GET", "/v1/videos/clip1"), ("GET", "/v1/videos/clip1/thumbnail"),
                 ("GET", "/v1/videos/clip1/media")]


@pytest.mark.parametrize("method,path", SEARCH_ROUTES + [("POST", "/v1/admin/reload")])
@pytest.mark.parametrize("who", ["nobody", "wrong key", "not bearer", "search", "admin", "both"])
def test_auth_matrix(served, method, path, who):
    keys = served["keys"]
    headers = {"nobody": {}, "wrong key": _auth("ucofia_not-a-real-key"),
               "not bearer": {"Authorization": f"Basic {keys.both}"},
               "search": _auth(keys.search), "admin": _auth(keys.admin), "both": _auth(keys.both)}[who]
    scope = "admin" if path.endswith("reload") else "search"
    body = QUERY if path == "/v1/search" else {} if method == "POST" else None  # reload: an empty JSON object
    reply = served["client"].request(method, path, headers=headers, json=body)
    if who in ("nobody", "wrong key", "not bearer"):
        assert reply.status_code == 401, reply.text
        assert reply.headers["www-authenticate"].startswith("Bearer")
    elif who == "both" or who == scope:
        assert reply.status_code == 200, reply.text
    else:
        assert reply.status_code == 403, reply.text
        assert f"lacks the '{scope}' scope" in reply.json()["error"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v1/info", "/", "/static/app.js",
                                  "/openapi.json"])
def test_public_routes_need_no_key(served, path):
    assert served["client"].get(path).status_code == 200


BIG_BODY = json.dumps({"queries": ["x" * 900] * 1200}).encode()  # ~1.08 MB, over the 1 MiB limit
BAD_REQUESTS = [
    ("malformed JSON", "POST", "/v1/search",
     {"content": b'{"queries": ["a"', "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ("wrong content type", "POST", "/v1/search", {"content": b"queries=a", "headers": {"Content-Type": "text/plain"}},
     415, "application/json"),
    ("no content type", "POST", "/v1/search", {"content": json.dumps(QUERY).encode()}, 415, "application/json"),
    ("a list body", "POST", "/v1/search", {"json": ["a dog"]}, 422, "body"),
    ("no queries", "POST", "/v1/search", {"json": {"queries": []}}, 422, "queries"),
    ("missing queries", "POST", "/v1/search", {"json": {"top_k": 3}}, 422, "queries: Field required"),
    ("empty query", "POST", "/v1/search", {"json": {"queries": [""]}}, 422, "queries.0"),
    ("blank query", "POST", "/v1/search", {"json": {"queries": ["   "]}}, 422, "only whitespace"),
    ("30,000-character query", "POST", "/v1/search", {"json": {"queries": ["a" * 30_000]}}, 422, "1000 characters"),
    ("10,000 queries", "POST", "/v1/search", {"json": {"queries": ["a dog"] * 10_000}}, 422, "at most 64"),
    ("a query that is not text", "POST", "/v1/search", {"json": {"queries": [42]}}, 422, "queries.0"),
    ("top_k 0", "POST", "/v1/search", {"json": {"queries": ["a"], "top_k": 0}}, 422, "top_k"),
    ("top_k 10^9", "POST", "/v1/search", {"json": {"queries": ["a"], "top_k": 10 ** 9}}, 422, "top_k"),
    ("top_k as text", "POST", "/v1/search", {"json": {"queries": ["a"], "top_k": "ten"}}, 422, "top_k"),
    ("an unknown field", "POST", "/v1/search", {"json": {"queries": ["a"], "topk": 3}}, 422, "topk"),
    ("an oversized body", "POST", "/v1/search", {"content": BIG_BODY, "headers": {"Content-Type": "application/json"}},
     413, "over the limit"),
    ("an oversized chunked body", "POST", "/v1/search",
     {"content": iter([BIG_BODY[:100_000], BIG_BODY[100_000:]]), "headers": {"Content-Type": "application/json"}},
     413, "over the limit"),
    ("an unknown id", "GET", "/v1/videos/no-such-video", {}, 404, "no video with id"),
    ("an unknown id's media", "GET", "/v1/videos/no-such-video/media", {}, 404, "no video with id"),
    ("an unknown id's thumbnail", "GET", "/v1/videos/no-such-video/thumbnail", {}, 404, "no video with id"),
    ("..%2F in an id", "GET", "/v1/videos/..%2F..%2F..%2Fetc%2Fpasswd/media", {}, 404, "no video with id"),
    ("an encoded absolute path", "GET", "/v1/videos/%2Fetc%2Fpasswd/media", {}, 404, "no video with id"),
    ("a source path as id", "GET", "/v1/videos/{clip}/media", {}, 404, "no video with id"),
    ("a range past the end", "GET", "/v1/videos/clip1/media", {"headers": {"Range": "bytes=10000000-10000100"}},
     416, ""),
    ("a malformed range", "GET", "/v1/videos/clip1/media", {"headers": {"Range": "bytes=abc"}}, 422, "byte range"),
    ("a backwards range", "GET", "/v1/videos/clip1/media", {"headers": {"Range": "bytes=50-10"}}, 416, ""),
    ("an unknown route", "GET", "/v1/nothing", {}, 404, ""),
    ("a wrong method", "GET", "/v1/search", {}, 405, ""),
]


@pytest.mark.parametrize("name,method,path,kwargs,status,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_4xx_and_the_server_keeps_answering(served, name, method, path, kwargs, status, message):
    clip = str(served["clips"] / "clip1.mp4").replace("/", "%2F")
    headers = {**_auth(served["keys"].search), **kwargs.get("headers", {})}
    reply = served["client"].request(method, path.replace("{clip}", clip), **{**kwargs, "headers": headers})
    assert reply.status_code == status, reply.text
    assert "Traceback" not in reply.text
    if message:
        assert message in reply.json()["error"]
    if status == 416:
        assert reply.headers["content-range"].startswith("bytes */")
    _search_ok(served)
    assert served["client"].get("/readyz").status_code == 200


def test_video_metadata_thumbnail_and_media_with_range(served):
    client, headers = served["client"], _auth(served["keys"].search)
    meta = client.get("/v1/videos/clip1", headers=headers).json()
    assert meta["id"] == "clip1" and meta["row"] == 1 and meta["has_media"] is True
    assert meta["entry"]["width"] == 64 and meta["entry"]["height"] == 48 and "path" not in meta["entry"]

    thumb = client.get("/v1/videos/clip1/thumbnail", headers=headers)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"

    source = (served["clips"] / "clip1.mp4").read_bytes()
    whole = client.get("/v1/videos/clip1/media", headers=headers)
    assert whole.status_code == 200 and whole.content == source
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get("/v1/videos/clip1/media", headers={**headers, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == source[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(source)}"
    tail = client.get("/v1/videos/clip1/media", headers={**headers, "Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == source[-7:]


def test_an_id_with_a_slash_resolves(served):
    client, headers = served["client"], _auth(served["keys"].search)
    meta = client.get("/v1/videos/dir%2Fclip0", headers=headers)
    assert meta.status_code == 200 and meta.json()["id"] == "dir/clip0"
    media = client.get("/v1/videos/dir%2Fclip0/media", headers=headers)
    assert media.content == (served["clips"] / "clip0.mp4").read_bytes()


def test_entries_without_a_usable_source(served):
    client, headers = served["client"], _auth(served["keys"].search)
    assert client.get("/v1/videos/legacy", headers=headers).json()["has_media"] is False
    for what in ("media", "thumbnail"):
        reply = client.get(f"/v1/videos/legacy/{what}", headers=headers)
        assert reply.status_code == 404 and "re-index" in reply.json()["error"]
    reply = client.get("/v1/videos/gone/media", headers=headers)
    assert reply.status_code == 404 and "no longer where it was indexed" in reply.json()["error"]
    reply = client.get("/v1/videos/gone/thumbnail", headers=headers)
    assert reply.status_code == 404 and "cannot be decoded" in reply.json()["error"]
    assert str(served["clips"]) not in reply.text  # the server's paths stay private


def test_missing_thumbnail_is_made_on_demand_and_cached(served):
    entry = GalleryIndex(served["index"]).entry("clip2")
    cached = thumbnail_file(served["index"], entry)
    assert cached.is_file()  # written by `ucofia-run index`
    cached.unlink()
    reply = served["client"].get("/v1/videos/clip2/thumbnail", headers=_auth(served["keys"].search))
    assert reply.status_code == 200 and reply.content == cached.read_bytes()
    names = sorted(p.name for p in (served["index"] / THUMBNAIL_DIR).iterdir())
    assert all(len(n) == 36 and n.endswith(".jpg") for n in names)  # named from entries, not ids


def test_signed_links_work_without_a_header_and_only_for_their_video(served):
    from runtime.serve.auth import MEDIA, KeyRing

    client = served["client"]
    hit = client.post("/v1/search", json=QUERY, headers=_auth(served["keys"].search)).json()["results"][0]["results"][0]
    assert client.get(hit["links"]["thumbnail"]).status_code == 200
    assert client.get(hit["links"]["media"], headers={"Range": "bytes=0-3"}).status_code == 206
    other = "clip4" if hit["video_id"] != "clip4" else "clip3"
    query = hit["links"]["media"].split("?", 1)[1]
    assert client.get(f"/v1/videos/{other}/media?{query}").status_code == 403
    tampered = hit["links"]["media"][:-2] + ("AA" if not hit["links"]["media"].endswith("AA") else "BB")
    assert client.get(tampered).status_code == 403
    kid = KeyRing.load(served["keys"].path).match(served["keys"].search).kid
    expired = served["service"].signer.sign(MEDIA, hit["video_id"], kid, now=time.time() - 7200)
    reply = client.get(f"/v1/videos/{hit['video_id']}/media", params=expired)
    assert reply.status_code == 403 and "expired" in reply.json()["error"]


def test_metrics_expose_requests_latency_batches_queue_and_gallery(served):
    _search_ok(served)
    text = served["client"].get("/metrics").text
    assert 'ucofia_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'ucofia_http_request_duration_seconds_bucket{le="0.005",route="/v1/search"}' in text
    assert "ucofia_batch_queries_bucket" in text and "ucofia_queue_wait_seconds_count" in text
    assert f"ucofia_gallery_videos {float(CLIPS + 3)}" in text
    assert 'route="/v1/videos/{video_id:path}/media"' in text  # route templates, never raw ids
    assert "no-such-video" not in text


def test_page_security_headers_and_no_inline_script(served):
    reply = served["client"].get("/")
    csp = reply.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert reply.headers["x-content-type-options"] == "nosniff"
    html = reply.text
    assert html.count("<script") == html.count('<script src="static/')  # relative: works under a proxy's prefix
    assert "style=" not in html and re.search(r"\son[a-z]+\s*=", html) is None  # no inline styles or handlers
    other_origin = served["client"].get("/v1/info", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other_origin.headers


def test_cors_only_for_the_configured_origin(served):
    from fastapi.testclient import TestClient

    _, app = open_app(served["index"], cors_origins=("https://app.example.org",))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        allowed = client.options("/v1/search", headers={"Origin": "https://app.example.org",
                                                        "Access-Control-Request-Method": "POST"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.org"
        other = client.get("/v1/info", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def gated(served):
    """A server without auth whose batches wait for a gate: a queue of one, timeout 1.5 s."""
    service, app = open_app(served["index"], max_queue=1, request_timeout_s=1.5, max_wait_ms=0)
    gate = threading.Event()
    real = service.batcher.process

    def held(jobs):
        gate.wait(CLIENT_TIMEOUT_S)
        return real(jobs)

    service.batcher.process = held
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client, gate
        gate.set()


def test_full_queue_answers_503_with_retry_after_then_recovers(gated):
    client, gate = gated
    replies: dict[str, httpx.Response] = {}

    def ask(name):
        replies[name] = client.post("/v1/search", json=QUERY)

    first = threading.Thread(target=ask, args=("running",))
    first.start()
    deadline = time.monotonic() + 10
    while "ucofia_batch_queries_count 1.0" not in client.get("/metrics").text and time.monotonic() < deadline:
        time.sleep(0.02)  # the first request is in a batch (held at the gate)
    second = threading.Thread(target=ask, args=("queued",))
    second.start()
    while "ucofia_queue_depth 1.0" not in client.get("/metrics").text and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = client.post("/v1/search", json=QUERY)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "busy" in refused.json()["error"]
    gate.set()
    first.join(CLIENT_TIMEOUT_S), second.join(CLIENT_TIMEOUT_S)
    assert replies["running"].status_code == 200 and replies["queued"].status_code == 200
    assert 'ucofia_errors_total{kind="rejected"} 1.0' in client.get("/metrics").text


def test_request_timeout_answers_504_and_the_server_recovers(gated):
    client, gate = gated
    start = time.monotonic()
    reply = client.post("/v1/search", json=QUERY)
    assert reply.status_code == 504 and "did not finish within 1.5 s" in reply.json()["error"]
    assert time.monotonic() - start < 10
    gate.set()
    assert client.post("/v1/search", json=QUERY).status_code == 200


@pytest.fixture(scope="module")
def windowed_index(fake_bundle, tmp_path_factory):
    """An index of 1 s windows of two 3 s clips."""
    from serve_helpers import make_clips

    root = tmp_path_factory.mktemp("windowed")
    bundle = fake_bundle
    make_clips(root / "clips", 2, seconds=3.0)
    index = root / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(root / "clips"), "-o", str(index), "-q",
                     "--workers", "1", "--window", "1")
    assert result.returncode == 0, result.stderr
    return index


def test_windowed_index_answers_with_spans(windowed_index):
    from fastapi.testclient import TestClient

    _, app = open_app(windowed_index)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = client.post("/v1/search", json={"queries": ["a red car"], "top_k": 4, "group_by": "window"}).json()
        assert body["group_by"] == "window"
        hits = body["results"][0]["results"]
        assert len(hits) == 4
        for hit in hits:
            assert hit["file_id"] in ("clip0", "clip1") and hit["video_id"].startswith(hit["file_id"] + "@")
            assert 0 <= hit["start"] < hit["end"] and hit["entry"]["start"] == hit["start"]
            assert hit["links"]["media"].endswith(f"#t={hit['start']:g},{hit['end']:g}")
            thumb = client.get(hit["links"]["thumbnail"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        grouped = client.post("/v1/search", json={"queries": ["a red car"], "top_k": 4}).json()
        assert grouped["group_by"] == "file"  # the CLI's default on windows
        files = grouped["results"][0]["results"]
        assert sorted(f["file_id"] for f in files) == ["clip0", "clip1"]
        for record in files:
            assert 1 <= len(record["windows"]) <= 3 and record["video_id"] == record["windows"][0]["video_id"]
            assert all(w["video_id"].startswith(record["file_id"] + "@") for w in record["windows"])
            assert all(w["links"]["media"].endswith(f"#t={w['start']:g},{w['end']:g}") for w in record["windows"])


def _without_links(record: dict) -> dict:
    """A service result record as the CLI writes it (the service adds entry and links)."""
    out = {k: v for k, v in record.items() if k not in ("entry", "links")}
    if out.get("windows") is None:
        out.pop("windows", None)
    else:
        out["windows"] = [{k: v for k, v in w.items() if k != "links"} for w in out["windows"]]
    return out


def _same_records(got: list[dict], want: list[dict]) -> None:
    """Equal records: same keys, ids, ranks and spans; scores equal to float32 precision."""
    assert len(got) == len(want)
    for hit, ref in zip(got, want):
        assert set(hit) == set(ref)
        for key, value in ref.items():
            if key == "windows":
                _same_records(hit[key], value)
            elif key == "levels" or key == "score":
                assert hit[key] == pytest.approx(value, rel=1e-6, abs=1e-6)
            else:
                assert hit[key] == value, key


@pytest.mark.parametrize("request_options", [{}, {"group_by": "window"}, {"group_by": "file", "windows_per_file": 1},
                                             {"two_stage": True, "windows_per_file": 2}])
def test_windowed_search_records_equal_the_cli(windowed_index, tmp_path, request_options):
    from fastapi.testclient import TestClient

    queries = ["a red car", "someone cooking"]
    flags = {"group_by": "--group-by", "windows_per_file": "--windows-per-file"}
    args = [a for key, value in request_options.items() if key in flags for a in (flags[key], str(value))]
    if request_options.get("two_stage"):
        args.append("--two-stage")
    out = tmp_path / "cli.jsonl"
    cli = run_cli("search", "--index", str(windowed_index), *[a for q in queries for a in ("--query", q)], "--top-k",
                  "3", *args, "-o", str(out))
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    _, app = open_app(windowed_index)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = client.post("/v1/search", json={"queries": queries, "top_k": 3, **request_options}).json()
    assert body["group_by"] == request_options.get("group_by", "file")
    assert len(body["results"]) == len(expected) == len(queries)
    for got, want in zip(body["results"], expected):
        assert got["query"] == want["query"]
        _same_records([_without_links(r) for r in got["results"]], want["results"])
