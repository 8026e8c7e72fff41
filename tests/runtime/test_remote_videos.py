"""Videos at URLs (runtime.remote): http(s) from a loopback server, s3:// from moto's S3 server.

A URL indexes to the same stored arrays as the same local file; a 404, a timeout or an oversized
URL is recorded in failed.jsonl while the run goes on, and a rerun retries it; a resumed run skips
unchanged URLs without downloading them and re-indexes a changed one."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile

import numpy as np
import pytest
from runtime_helpers import copy_clips, run_cli
from url_server import FileServer, moto_s3

from runtime import remote
from runtime.bundle import load_bundle
from runtime.index import GalleryIndex, IndexWriter
from runtime.index.failures import read_failures
from runtime.ingest import IndexRequest, IngestReport, build_index
from runtime.ingest.local import encode_videos
from runtime.remote import read_range, stat, url_changed
from runtime.thumbnails import ThumbnailError, make_thumbnail, thumbnail_file

pytest.importorskip("aiohttp", reason="http(s) URLs need aiohttp (pip install 'ucofia[http]')")

ROLES = ("video", "frame_features", "patches", "video_mask")


@pytest.fixture(autouse=True)
def quick_urls(monkeypatch):
    """Short timeouts and one retry, so failure tests take seconds."""
    monkeypatch.setenv("UCOFIA_URL_TIMEOUT_S", "1")
    monkeypatch.setenv("UCOFIA_URL_RETRIES", "1")
    monkeypatch.delenv("UCOFIA_URL_MAX_BYTES", raising=False)


def write_list(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def stored(index) -> dict[str, dict[str, np.ndarray]]:
    """id -> role -> the row's stored array."""
    gallery = GalleryIndex(index)
    out = {}
    for vid in gallery.ids:
        row = gallery.row_of(vid)
        out[vid] = {role: value[0] for role, value in gallery.features(row, row + 1, roles=ROLES).items()}
    return out


def index_of(bundle, videos, out, *extra, batch: int = 2):
    """``ucofia-run index`` (a video's features depend on its batch's shape only through float
    rounding: compare indexes whose batches hold the same videos, or ``batch=1``)."""
    return run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(out), "--workers", "2",
                   "--batch-size", str(batch), *extra)


def index_outcome(bundle, videos, out) -> dict:
    """``build_index`` in this process: its outcome as data (counts of skipped, indexed, replaced)."""
    return build_index(IndexRequest(bundle=bundle, videos=videos, out=out, workers=2, batch_size=2)).to_dict()


def assert_same_features(url_index, local_index, ids) -> None:
    remote, local = stored(url_index), stored(local_index)
    assert sorted(remote) == sorted(ids)
    for vid in ids:
        for role in ROLES:
            np.testing.assert_array_equal(remote[vid][role], local[vid][role], err_msg=f"{vid} {role}")


def test_http_urls_index_bit_identical_to_local_files(fake_bundle, clips, tmp_path, monkeypatch):
    videos = copy_clips(clips, tmp_path / "videos", range(4))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the downloaded copies go
    with FileServer(videos) as server:
        write_list(tmp_path / "urls.jsonl", [{"id": f"clip{i}", "path": f"{server.url}/clip{i}.mp4", "n": i}
                                             for i in range(4)])
        remote = index_of(fake_bundle, tmp_path / "urls.jsonl", tmp_path / "url_index")
        assert remote.returncode == 0, remote.stderr
    local = index_of(fake_bundle, videos, tmp_path / "local_index")
    assert local.returncode == 0, local.stderr
    assert_same_features(tmp_path / "url_index", tmp_path / "local_index", [f"clip{i}" for i in range(4)])
    gallery, files = GalleryIndex(tmp_path / "url_index"), GalleryIndex(tmp_path / "local_index")
    for i in range(4):
        entry, on_disk = gallery.entry(f"clip{i}"), files.entry(f"clip{i}")
        assert entry["path"] == f"{server.url}/clip{i}.mp4"          # the URL is the recorded source
        assert entry["sha256"] == on_disk["sha256"] and entry["bytes"] == on_disk["bytes"]
        assert entry["etag"] and entry["last_modified"] and "mtime" not in entry
        assert entry["metadata"] == {"n": i}
        assert entry["duration_s"] == on_disk["duration_s"] and entry["frames"] == on_disk["frames"]
        assert thumbnail_file(tmp_path / "url_index", entry).is_file()  # thumbnails of URL sources
    assert not list(scratch.iterdir())  # every downloaded copy deleted


@pytest.mark.slow  # waits for timeouts by design
def test_failed_urls_are_recorded_the_run_goes_on_and_a_rerun_retries_them(fake_bundle, clips, tmp_path,
                                                                            monkeypatch):
    videos = copy_clips(clips, tmp_path / "videos", range(6))
    limit = (videos / "clip4.mp4").stat().st_size - 1   # clip5 (longer) is over it, clip0..3 are under
    assert (videos / "clip5.mp4").stat().st_size > limit > (videos / "clip3.mp4").stat().st_size
    monkeypatch.setenv("UCOFIA_URL_MAX_BYTES", str(limit))
    (videos / "clip4.mp4").rename(videos / "later.mp4")  # 404 until the rerun
    with FileServer(videos) as server:
        server.slow = {"/clip3.mp4"}
        server.slow_s = 3.0
        urls = {f"clip{i}": f"{server.url}/clip{i}.mp4" for i in range(6)}
        write_list(tmp_path / "urls.jsonl", [{"id": vid, "path": url} for vid, url in urls.items()])
        first = index_of(fake_bundle, tmp_path / "urls.jsonl", tmp_path / "index", batch=1)
        assert first.returncode == 3, first.stderr   # index written, some videos failed
        failures = read_failures(tmp_path / "index")
        assert sorted(failures) == ["clip3", "clip4", "clip5"]
        assert all(failures[vid]["path"] == urls[vid] for vid in failures)
        assert "not found" in failures["clip4"]["error"]
        assert "over the size limit" in failures["clip5"]["error"]
        assert "after 2 attempts" in failures["clip3"]["error"] and "Timeout" in failures["clip3"]["error"]
        assert server.count("HEAD", "/clip3.mp4") == 2            # tried once, retried once
        assert server.count("GET", "/clip5.mp4") == 0             # refused on its announced size
        assert sorted(GalleryIndex(tmp_path / "index").ids) == ["clip0", "clip1", "clip2"]

        (videos / "later.mp4").rename(videos / "clip4.mp4")
        server.slow = set()
        monkeypatch.delenv("UCOFIA_URL_MAX_BYTES")
        again = index_of(fake_bundle, tmp_path / "urls.jsonl", tmp_path / "index", batch=1)
        assert again.returncode == 0, again.stderr
        assert read_failures(tmp_path / "index") == {}
        for i in range(3):  # unchanged URLs: one HEAD each on resume, no download
            assert server.count("GET", f"/clip{i}.mp4") == 1
    local = index_of(fake_bundle, videos, tmp_path / "local_index", batch=1)
    assert local.returncode == 0, local.stderr
    assert_same_features(tmp_path / "index", tmp_path / "local_index", list(urls))


@pytest.mark.parametrize("validators", [True, False], ids=["etag", "sha256"])
def test_resume_skips_unchanged_urls_and_replaces_changed_ones(fake_bundle, clips, tmp_path, validators):
    videos = copy_clips(clips, tmp_path / "videos", range(3))
    with FileServer(videos) as server:
        server.no_validators = not validators
        write_list(tmp_path / "urls.jsonl", [{"id": f"v{i}", "path": f"{server.url}/clip{i}.mp4"} for i in range(3)])
        assert index_of(fake_bundle, tmp_path / "urls.jsonl", tmp_path / "index").returncode == 0
        before = stored(tmp_path / "index")
        shutil.copyfile(clips / "clip5.mp4", videos / "clip1.mp4")   # v1's URL now serves other content
        outcome = index_outcome(fake_bundle, tmp_path / "urls.jsonl", tmp_path / "index")
        assert outcome["failed"] == []
        assert (outcome["skipped"], outcome["indexed"], outcome["replaced"]) == (2, 1, 1)
        gets = {i: server.count("GET", f"/clip{i}.mp4") for i in range(3)}
    # with validators an unchanged URL is not downloaded again; without, it is (to hash it); v1 is
    # downloaded twice either way (its new size tells it changed)
    assert gets == ({0: 1, 1: 2, 2: 1} if validators else {0: 2, 1: 2, 2: 2})
    after = stored(tmp_path / "index")
    np.testing.assert_array_equal(after["v0"]["video"], before["v0"]["video"])
    assert not np.array_equal(after["v1"]["video"], before["v1"]["video"])
    assert GalleryIndex(tmp_path / "index").entry("v1")["bytes"] == (clips / "clip5.mp4").stat().st_size


def test_s3_urls_index_bit_identical_and_resume(fake_bundle, clips, tmp_path, monkeypatch):
    videos = copy_clips(clips, tmp_path / "videos", range(3))
    with moto_s3(monkeypatch) as endpoint:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="clips")
        for i in range(3):
            s3.upload_file(str(videos / f"clip{i}.mp4"), "clips", f"a/clip{i}.mp4")
        (tmp_path / "urls.txt").write_text("".join(f"s3://clips/a/clip{i}.mp4\n" for i in range(3))
                                           + "s3://clips/a/missing.mp4\n")
        first = index_of(fake_bundle, tmp_path / "urls.txt", tmp_path / "index")
        assert first.returncode == 3, first.stderr
        failures = read_failures(tmp_path / "index")
        assert list(failures) == ["missing"] and "not found" in failures["missing"]["error"]
        entry = GalleryIndex(tmp_path / "index").entry("clip0")
        assert entry["path"] == "s3://clips/a/clip0.mp4" and entry["etag"]
        outcome = index_outcome(fake_bundle, tmp_path / "urls.txt", tmp_path / "index")
        assert (outcome["skipped"], outcome["indexed"], len(outcome["failed"])) == (3, 0, 1)
        data = (videos / "clip2.mp4").read_bytes()  # what the media route streams: ranged reads
        assert b"".join(read_range("s3://clips/a/clip2.mp4", 10, 20)) == data[10:20]
        assert b"".join(read_range("s3://clips/a/clip2.mp4", 0, len(data))) == data
    assert index_of(fake_bundle, videos, tmp_path / "local_index").returncode == 0
    assert_same_features(tmp_path / "index", tmp_path / "local_index", ["clip0", "clip1", "clip2"])


def test_urls_are_refused_with_window(fake_bundle, tmp_path):
    (tmp_path / "urls.txt").write_text("https://example.invalid/a.mp4\n")
    result = index_of(fake_bundle, tmp_path / "urls.txt", tmp_path / "index", "--window", "2")
    assert result.returncode != 0 and "--window does not take URL sources" in result.stderr
    assert not (tmp_path / "index").exists()


def test_url_changed_decides_by_validators_else_by_sha256(clips, tmp_path):
    videos = copy_clips(clips, tmp_path / "videos", [0])
    data = (videos / "clip0.mp4").read_bytes()
    with FileServer(videos) as server:
        url = f"{server.url}/clip0.mp4"
        now = stat(url)
        entry = {"path": url, "sha256": hashlib.sha256(data).hexdigest(), **now}
        assert not url_changed(entry, url)
        assert url_changed({**entry, "etag": '"other"'}, url)                  # the ETag decides
        assert not url_changed({**entry, "sha256": "0" * 64}, url)           # without reading the bytes
        assert server.count("GET", "/clip0.mp4") == 0
        server.no_validators = True                                          # only the size: hash the bytes
        assert not url_changed(entry, url)
        assert url_changed({**entry, "sha256": "0" * 64}, url)
        assert url_changed({**entry, "bytes": len(data) + 1}, url)
        assert server.count("GET", "/clip0.mp4") == 2
        assert not url_changed(entry, f"{server.url}/gone.mp4")            # unreachable: rows kept


def test_a_missing_extra_is_named_before_any_work(fake_bundle, clips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if 'ucofia[s3]' were not installed
    (tmp_path / "urls.txt").write_text(f"{clips / 'clip0.mp4'}\ns3://bucket/clip1.mp4\n")
    result = index_of(fake_bundle, tmp_path / "urls.txt", tmp_path / "index")
    assert result.returncode not in (0, 3) and "pip install 'ucofia[s3]'" in result.stderr
    assert not (tmp_path / "index").exists()  # nothing encoded, not even the local file


@pytest.mark.slow
def test_an_interrupted_run_drops_the_downloads_queued_ahead(fake_bundle, clips, tmp_path, monkeypatch):
    monkeypatch.setenv("UCOFIA_URL_TIMEOUT_S", "10")  # slow, not failing
    videos = copy_clips(clips, tmp_path / "videos", range(4))
    with FileServer(videos) as server:
        server.slow, server.slow_s = {"/clip1.mp4", "/clip2.mp4", "/clip3.mp4"}, 2.0
        todo = [(f"clip{i}", f"{server.url}/clip{i}.mp4") for i in range(4)]

        def stop(_: int) -> None:
            raise KeyboardInterrupt

        with IndexWriter(tmp_path / "index", load_bundle(fake_bundle)) as writer, pytest.raises(KeyboardInterrupt):
            # one fetch thread, 2 ahead: clip0 is decoded while clip1 downloads and clip2 waits
            encode_videos(writer, load_bundle(fake_bundle), todo, backend="cpu", batch_size=1, workers=1,
                          processes=False, threads=1, report=IngestReport(), progress=stop)
        assert server.count("HEAD", "/clip1.mp4") == 1 and server.count("HEAD", "/clip2.mp4") == 0


def test_thumbnails_backfills_url_sources(fake_bundle, clips, tmp_path):
    videos = copy_clips(clips, tmp_path / "videos", range(2))
    (videos / "broken.mp4").write_bytes(b"not a video")
    with FileServer(videos) as server:
        (tmp_path / "urls.txt").write_text(f"{server.url}/clip0.mp4\n{server.url}/clip1.mp4\n")
        assert index_of(fake_bundle, tmp_path / "urls.txt", tmp_path / "index", "--no-thumbnails").returncode == 0
        entries = GalleryIndex(tmp_path / "index").entries
        assert not any(thumbnail_file(tmp_path / "index", e).is_file() for e in entries)
        result = run_cli("thumbnails", "--index", str(tmp_path / "index"))
        assert result.returncode == 0, result.stderr
        assert all(thumbnail_file(tmp_path / "index", e).is_file() for e in entries)
        with pytest.raises(ThumbnailError) as caught:  # a URL that does not decode: the message names it
            make_thumbnail(tmp_path / "index", {"id": "b", "sha256": "0", "path": f"{server.url}/broken.mp4"})
        assert f"{server.url}/broken.mp4" in str(caught.value) and "ucofia-url-" not in str(caught.value)


def test_which_failures_are_retried(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    videos = copy_clips(clips, tmp_path / "videos", [0])
    with FileServer(videos) as server:
        server.status = {"/denied.mp4": 403, "/busy.mp4": 503, "/gone.mp4": 410}
        for path, message, requests in (("/denied.mp4", "access denied (HTTP 403)", 1),
                                        ("/missing.mp4", "not found", 1), ("/gone.mp4", "not found", 1),
                                        ("/busy.mp4", "after 2 attempts", 2)):
            with pytest.raises(remote.RemoteError) as caught:
                remote.download(server.url + path, tmp_path / "copy.mp4")
            assert message in str(caught.value), str(caught.value)
            # fsspec's info tries HEAD then GET once per attempt
            assert sum(p == path for _, p in server.requests) == 2 * requests, (path, server.requests)
