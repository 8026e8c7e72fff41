"""The media and thumbnail routes of videos indexed from URLs (runtime.serve.remote_media): proxied
from a loopback HTTP server, whole or by byte range; 404 when the URL cannot be reached, 409 when
it serves other content than was indexed."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
pytest.importorskip("aiohttp", reason="http(s) URLs need aiohttp (pip install 'ucofia[http]')")
httpx = pytest.importorskip("httpx", reason="the API tests use httpx")

from runtime_helpers import copy_clips, run_cli  # noqa: E402
from serve_helpers import ServerThread, open_app  # noqa: E402
from url_server import FileServer  # noqa: E402

from runtime import remote  # noqa: E402

CLIENT_TIMEOUT_S = 30


@pytest.fixture
def served(fake_bundle, clips, tmp_path, monkeypatch):
    """Clips 0..2 at URLs of a loopback server, indexed without thumbnails, and served."""
    monkeypatch.setenv("UCOFIA_URL_TIMEOUT_S", "2")
    monkeypatch.setenv("UCOFIA_URL_RETRIES", "0")
    videos = copy_clips(clips, tmp_path / "videos", range(3))
    with FileServer(videos) as files:
        (tmp_path / "urls.txt").write_text("".join(f"{files.url}/clip{i}.mp4\n" for i in range(3)))
        result = run_cli("index", "--bundle", str(fake_bundle), "--videos", str(tmp_path / "urls.txt"),
                         "-o", str(tmp_path / "index"), "--no-thumbnails", "--workers", "1", "-q")
        assert result.returncode == 0, result.stderr
        _, app = open_app(tmp_path / "index")
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
            yield {"client": client, "files": files, "videos": videos, "clips": clips}


def test_media_of_a_url_source_is_proxied_whole_and_by_range(served, monkeypatch):
    monkeypatch.setattr(remote, "CHUNK", 256)  # several reads per clip
    client, files = served["client"], served["files"]
    source = (served["videos"] / "clip1.mp4").read_bytes()
    meta = client.get("/v1/videos/clip1").json()
    assert meta["has_media"] is True and "path" not in meta["entry"]
    whole = client.get("/v1/videos/clip1/media")
    assert whole.status_code == 200 and whole.content == source
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get("/v1/videos/clip1/media", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == source[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(source)}"
    tail = client.get("/v1/videos/clip1/media", headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == source[-7:]
    assert any(method == "GET" and path == "/clip1.mp4" for method, path in files.requests)
    past = client.get("/v1/videos/clip1/media", headers={"Range": f"bytes={len(source)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(source)}"
    again = client.get("/v1/videos/clip1/media", headers={"If-None-Match": whole.headers["etag"]})
    assert again.status_code == 304
    head = client.head("/v1/videos/clip1/media")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(source)) and not head.content
    files.no_ranges = True  # a server without Range support: the whole file still streams, in one GET
    assert client.get("/v1/videos/clip1/media").content == source


def test_thumbnail_of_a_url_source_is_made_on_demand(served):
    thumb = served["client"].get("/v1/videos/clip2/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"


def test_unreachable_or_changed_url_sources_are_refused(served):
    client, videos = served["client"], served["videos"]
    (videos / "clip0.mp4").unlink()
    reply = client.get("/v1/videos/clip0/media")
    assert reply.status_code == 404 and "cannot be reached" in reply.json()["error"]
    assert served["files"].url not in reply.text  # the source URL stays private
    reply = client.get("/v1/videos/clip0/thumbnail")
    assert reply.status_code == 404
    shutil.copyfile(served["clips"] / "clip5.mp4", videos / "clip1.mp4")
    reply = client.get("/v1/videos/clip1/media")
    assert reply.status_code == 409 and "re-index" in reply.json()["error"]
