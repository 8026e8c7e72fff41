"""Per-video metadata from a .jsonl / .csv ``--videos`` list: parsed with errors naming the file and
line, stored in the entries, kept through remove / compact / merge / replace, and shown in the
search records (whole files and windows)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from runtime_helpers import copy_clips, run_cli

from runtime.errors import RuntimeUserError
from runtime.index import GalleryIndex
from runtime.video_list import read_video_list

META = {
    "clip0": {"channel": "news", "year": 2019, "live": True, "tags": ["a", "b"]},
    "clip1": {"channel": "sport", "year": 2021, "score": 0.5},
    "clip2": {},
    "clip3": {"channel": "news", "year": 2023, "tags": []},
}


def _jsonl(path, folder, meta=META):
    path.write_text("".join(json.dumps({"id": vid, "path": str(folder / f"{vid}.mp4"), **m}) + "\n"
                            for vid, m in meta.items()))
    return path


def _index(bundle, videos, out, *extra):
    return run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(out), "--batch-size", "2",
                   "--workers", "1", "-q", "--no-thumbnails", *extra)


def _search(index, *extra):
    result = run_cli("search", "--index", str(index), "--query", "a red car", "--top-k", "10", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[0])["results"]


@pytest.fixture(scope="module")
def folder(clips, tmp_path_factory):
    return copy_clips(clips, tmp_path_factory.mktemp("videos"), range(4))


@pytest.fixture(scope="module")
def built(fake_bundle, folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    assert _index(fake_bundle, _jsonl(root / "videos.jsonl", folder), root / "index").returncode == 0
    return root / "index"


def test_jsonl_metadata_is_stored_and_in_every_search_record(built):
    gallery = GalleryIndex(built)
    assert {e["id"]: e.get("metadata", {}) for e in gallery.entries} == META
    records = _search(built)
    assert len(records) == len(META)
    assert {r["video_id"]: r["metadata"] for r in records} == META


def test_csv_list_types_its_columns(fake_bundle, folder, tmp_path):
    listing = tmp_path / "videos.csv"
    listing.write_text("id,path,channel,year,ratio,live,code\n"
                       f"a,{folder / 'clip0.mp4'},news,2019,0.5,true,007\n"
                       f"b,{folder / 'clip1.mp4'},,2021,1e3,false,12x\n")
    want = {"a": {"channel": "news", "year": 2019, "ratio": 0.5, "live": True, "code": "007"},
            "b": {"year": 2021, "ratio": 1000.0, "live": False, "code": "12x"}}
    assert json.dumps(read_video_list(listing).metadata) == json.dumps(want)  # 2019, not 2019.0 or "2019"
    assert _index(fake_bundle, listing, tmp_path / "index").returncode == 0
    assert {r["video_id"]: r["metadata"]["year"] for r in _search(tmp_path / "index")} == {"a": 2019, "b": 2021}


def test_plain_lists_and_old_rows_have_empty_metadata(fake_bundle, folder, tmp_path):
    assert _index(fake_bundle, folder, tmp_path / "index").returncode == 0
    records = _search(tmp_path / "index")
    assert len(records) == 4 and all(r["metadata"] == {} for r in records)


def test_metadata_survives_remove_compact_merge_and_replace(fake_bundle, folder, built, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(built, index)
    ids = tmp_path / "ids.txt"
    ids.write_text("clip1\n")
    assert run_cli("remove", "--index", str(index), "--ids", str(ids), "-q").returncode == 0
    assert run_cli("compact", "--index", str(index), "-q").returncode == 0
    want = {vid: m for vid, m in META.items() if vid != "clip1"}
    assert {r["video_id"]: r["metadata"] for r in _search(index)} == want
    merged = tmp_path / "merged"
    other = tmp_path / "other"
    one = _jsonl(tmp_path / "one.jsonl", folder, {"clip1": {"channel": "x"}})
    assert _index(fake_bundle, one, other).returncode == 0
    assert run_cli("merge", str(index), str(other), "-o", str(merged), "-q").returncode == 0
    assert {r["video_id"]: r["metadata"] for r in _search(merged)} == {**want, "clip1": {"channel": "x"}}
    # a changed file is re-indexed and its new row carries the list's (new) metadata
    videos = copy_clips(folder.parent / folder.name, tmp_path / "videos", ())
    for vid in META:
        shutil.copy(folder / f"{vid}.mp4", videos / f"{vid}.mp4")
    replaced = tmp_path / "replaced"
    assert _index(fake_bundle, _jsonl(tmp_path / "a.jsonl", videos), replaced).returncode == 0
    shutil.copy(folder / "clip3.mp4", videos / "clip0.mp4")
    assert _index(fake_bundle, _jsonl(tmp_path / "b.jsonl", videos, {**META, "clip0": {"channel": "new"}}),
                  replaced).returncode == 0
    gallery = GalleryIndex(replaced)
    assert gallery.removed_rows == 1
    assert {r["video_id"]: r["metadata"] for r in _search(replaced)} == {**META, "clip0": {"channel": "new"}}


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "path": "x.mp4"}', '{"path": "y.mp4"}'], "line 2: no 'id'"),
    (['{"id": "a"}'], "line 1: no 'path'"),
    (['{"id": "a", "path": "x.mp4", "owner": {"name": "n"}}'], "line 1: field 'owner' is a nested object"),
    (['{"id": "a", "path": "x.mp4", "tags": ["a", 1]}'], "line 1: field 'tags': a list must hold strings only"),
    (['{"id": "a", "path": "x.mp4"}', '', '{"id": "a", "path": "y.mp4"}'], "line 3: video id 'a' is already used on "
                                                                             "line 1"),
    (['{"id": "a", "path": "x.mp4", "fps": 3}'], "line 1: field 'fps' is one the index records itself"),
    (['{"id": "a", "path": "x.mp4", "$gt": 3}'], "line 1: field name '$gt' is not allowed"),
    (['{"id": "a", "path": "x.mp4", "v": null}'], "line 1: field 'v' is null"),
    (['{"id": "a", "path": "x.mp4"', ], "line 1: not valid JSON"),
])
def test_bad_jsonl_rows_name_the_file_and_line(tmp_path, lines, message):
    listing = tmp_path / "videos.jsonl"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(RuntimeUserError) as caught:
        read_video_list(listing)
    assert str(caught.value).startswith(str(listing)) and message in str(caught.value), caught.value


@pytest.mark.parametrize("text, message", [
    ("id,path,x\na,a.mp4,1\n,b.mp4,2\n", "line 3: no 'id'"),
    ("id,path\na,a.mp4\na,b.mp4\n", "line 3: video id 'a' is already used on line 2"),
    ("id,path\na,a.mp4,extra\n", "line 2: more cells than the header has columns"),
])
def test_bad_csv_rows_name_the_file_and_line(tmp_path, text, message):
    listing = tmp_path / "videos.csv"
    listing.write_text(text)
    with pytest.raises(RuntimeUserError, match=message):
        read_video_list(listing)


def test_index_cli_reports_a_bad_list_before_any_work(fake_bundle, tmp_path):
    listing = tmp_path / "videos.jsonl"
    listing.write_text('{"id": "a", "path": "a.mp4", "meta": {"x": 1}}\n')
    result = _index(fake_bundle, listing, tmp_path / "index")
    assert result.returncode == 1 and f"{listing} line 1: field 'meta' is a nested object" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "index").exists()


def test_ray_decode_stage_puts_the_metadata_in_the_entry(fake_bundle, folder):
    """The Ray path's decode tasks (Ray-free code, run directly) write the same entries."""
    from runtime.bundle import load_bundle
    from runtime.distributed.stages import decode_batch, decode_items
    from ucofia.data.video import VideoSpec

    items = decode_items([(vid, folder / f"{vid}.mp4") for vid in META], META)
    batch = {column: np.asarray([item[column] for item in items], dtype=object) for column in items[0]}
    out = decode_batch(batch, VideoSpec.from_config(load_bundle(fake_bundle).config))
    assert {json.loads(e)["id"]: json.loads(e).get("metadata", {}) for e in out["entry"]} == META
