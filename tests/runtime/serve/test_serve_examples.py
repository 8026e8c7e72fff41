"""Queries by example and captions over HTTP (issue 24 items 3 and 4): ``like`` in POST
/v1/search, POST /v1/search/by-video (multipart upload) and POST /v1/describe answer what
``ucofia-run search --like / --query-video`` and ``ucofia-run describe`` write for the same
index, with links, limits and auth as the rest of the API.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the service tests use httpx")
pytest.importorskip("multipart", reason="uploads need python-multipart (the 'serve' extra)")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServerThread, build_index, make_keys, open_app  # noqa: E402

CLIPS = 5
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def built(fake_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_examples")
    _, clips, index = build_index(root, clips=CLIPS, bundle=fake_bundle)
    captions = root / "captions.txt"
    captions.write_text("a red car\na dog runs on grass\npeople talk\na man cooks\n")
    return {"root": root, "clips": clips, "index": index, "captions": captions}


@pytest.fixture(scope="module")
def client(built):
    _service, app = open_app(built["index"], max_upload_mb=0.05)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        yield http


def _cli(*args: str) -> list[dict]:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _pairs(records: list[dict]) -> list[tuple[int, str, float]]:
    return [(r["rank"], r["video_id"], round(r["score"], 5)) for r in records]


def test_like_answers_what_the_command_line_writes(built, client):
    for extra_cli, extra_http in (((), {}), (("--offset", "1", "--top-k", "2"), {"offset": 1, "top_k": 2}),
                                  (("--include-self",), {"include_self": True})):
        expected = _cli("search", "--index", str(built["index"]), "--like", "clip2", *extra_cli)[0]["results"]
        reply = client.post("/v1/search", json={"like": "clip2", **extra_http})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        answer = body["results"][0]
        assert answer["like"] == "clip2" and answer["query"] is None and body["mode"] == "exhaustive"
        assert _pairs(answer["results"]) == _pairs(expected) and answer["results"]
        assert all(r["levels"] == {} and r["links"]["media"].endswith("/media") for r in answer["results"])
    assert client.post("/v1/search", json={"like": "nope"}).status_code == 404
    both = client.post("/v1/search", json={"like": "clip2", "queries": ["a car"]})
    assert both.status_code == 422 and "one of them" in both.json()["error"]
    assert client.post("/v1/search", json={"top_k": 3}).status_code == 422


def test_an_upload_answers_what_query_video_writes(built, client):
    clip = built["clips"] / "clip3.mp4"
    expected = _cli("search", "--index", str(built["index"]), "--query-video", str(clip), "--top-k", "4")[0]
    with clip.open("rb") as fh:
        reply = client.post("/v1/search/by-video", files={"file": ("my clip.mp4", fh, "video/mp4")},
                            data={"top_k": "4"})
    assert reply.status_code == 200, reply.text
    answer = reply.json()["results"][0]
    assert answer["query_video"] == "my clip.mp4"
    assert _pairs(answer["results"]) == _pairs(expected["results"])
    assert "clip3" not in [r["video_id"] for r in answer["results"]]  # the same content: left out
    with clip.open("rb") as fh:
        paged = client.post("/v1/search/by-video", files={"file": ("c.mp4", fh, "video/mp4")},
                            data={"top_k": "2", "offset": "2", "include_self": "true",
                                  "filter": json.dumps({"id": {"$ne": "clip0"}})}).json()["results"][0]["results"]
    assert [r["rank"] for r in paged] == [3, 4] and all(r["video_id"] != "clip0" for r in paged)


def test_uploads_over_the_limits_or_not_videos_are_refused_with_the_reason(built, client, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes((built["clips"] / "clip4.mp4").read_bytes() * 40)  # over --max-upload-mb 0.05
    with big.open("rb") as fh:
        reply = client.post("/v1/search/by-video", files={"file": ("big.mp4", fh, "video/mp4")})
    assert reply.status_code == 413 and "over the limit of 52428 bytes" in reply.json()["error"]
    text = client.post("/v1/search/by-video", files={"file": ("notes.mp4", b"just text\n", "video/mp4")})
    assert text.status_code == 422 and "'notes.mp4' cannot be decoded" in text.json()["error"]
    assert "/tmp" not in text.json()["error"]
    as_json = client.post("/v1/search/by-video", json={"file": "x"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]
    bad_filter = client.post("/v1/search/by-video", files={"file": ("c.mp4", b"x", "video/mp4")},
                             data={"filter": '{"a": {"$near": 1}}'})
    assert bad_filter.status_code == 422 and "$near" in bad_filter.json()["error"]


def test_describe_answers_what_the_command_line_writes(built, client):
    captions = built["captions"].read_text().splitlines()
    expected = _cli("describe", "--index", str(built["index"]), "--captions", str(built["captions"]),
                    "--id", "clip1", "--id", "clip4", "--top-k", "3")
    reply = client.post("/v1/describe", json={"video_ids": ["clip1", "clip4"], "captions": captions, "top_k": 3})
    assert reply.status_code == 200, reply.text
    got = reply.json()["results"]
    assert [a["video_id"] for a in got] == ["clip1", "clip4"]
    for answer, cli in zip(got, expected, strict=True):
        assert [(r["rank"], r["caption"], round(r["score"], 5)) for r in answer["results"]] == \
            [(r["rank"], r["caption"], round(r["score"], 5)) for r in cli["results"]]
    missing = client.post("/v1/describe", json={"video_ids": ["nope"], "captions": ["a car"]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    blank = client.post("/v1/describe", json={"video_ids": ["clip1"], "captions": ["&nbsp;"]})
    assert blank.status_code == 422


def test_the_new_routes_need_a_key_when_keys_are_on(built, tmp_path):
    keys = make_keys(tmp_path / "keys.json")
    _service, app = open_app(built["index"], api_keys=keys.path)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        clip = (built["clips"] / "clip1.mp4").read_bytes()
        calls = [("/v1/search", {"json": {"like": "clip1"}}),
                 ("/v1/search/by-video", {"files": {"file": ("c.mp4", clip, "video/mp4")}}),
                 ("/v1/describe", {"json": {"video_ids": ["clip1"], "captions": ["a car"]}})]
        for path, kwargs in calls:
            assert http.post(path, **kwargs).status_code == 401, path
            assert http.post(path, headers={"Authorization": f"Bearer {keys.admin}"}, **kwargs).status_code == 403
            reply = http.post(path, headers={"Authorization": f"Bearer {keys.search}"}, **kwargs)
            assert reply.status_code == 200, (path, reply.text)
        like = http.post("/v1/search", json={"like": "clip1"}, headers={"Authorization": f"Bearer {keys.search}"})
        media = like.json()["results"][0]["results"][0]["links"]["media"]
        assert "sig=" in media and http.get(media, headers={"Range": "bytes=0-3"}).status_code == 206
