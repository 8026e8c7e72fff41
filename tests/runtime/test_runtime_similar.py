"""More like this (issue 24 item 3): ``ucofia-run search --like ID`` and ``--query-video FILE``.

The ranking is checked against a plain numpy cosine ranking of the stored video-level features;
an uploaded copy of an indexed file ranks the gallery as ``--like`` on its id does; an image is a
one-frame video; limits and bad files are clear errors.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from runtime_helpers import copy_clips, run_cli, synthetic_index

from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.index import GalleryIndex, IndexWriter
from runtime.search.similar import (
    QueryVideoError,
    UploadLimits,
    VideoQuery,
    encode_query_video,
    query_by_id,
    rank_similar,
    similar_records,
    unit,
)
from ucofia.data.video import VideoSpec

CLIPS = 6


@pytest.fixture(scope="module")
def data(fake_bundle, clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("similar")
    folder = copy_clips(clips, root / "clips", range(CLIPS))
    index = root / "index"
    made = run_cli("index", "--bundle", str(fake_bundle), "--videos", str(folder), "-o", str(index), "-q",
                   "--workers", "1")
    assert made.returncode == 0, made.stderr
    return {"root": root, "index": index, "clips": folder, "bundle": fake_bundle}


def _numpy_ranking(index, query_row: int, keep_self: bool = False) -> list[tuple[str, float]]:
    gallery = GalleryIndex(index)
    video = gallery.features(0, len(gallery), roles=("video",))["video"].astype(np.float64)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    cosine = video @ video[query_row]
    rows = [r for r in range(len(gallery)) if keep_self or r != query_row]
    rows.sort(key=lambda r: (-cosine[r], r))
    return [(gallery.ids[r], float(cosine[r])) for r in rows]


def _search(index, *args: str) -> list[dict]:
    result = run_cli("search", "--index", str(index), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_like_ranks_by_the_cosine_of_the_video_level_features(data):
    gallery = GalleryIndex(data["index"])
    for video_id in ("clip2", "clip5"):
        expected = _numpy_ranking(data["index"], gallery.row_of(video_id))
        answer = _search(data["index"], "--like", video_id, "--top-k", str(CLIPS))[0]
        assert answer["like"] == video_id and len(answer["results"]) == CLIPS - 1  # itself left out
        assert [r["video_id"] for r in answer["results"]] == [vid for vid, _ in expected]
        np.testing.assert_allclose([r["score"] for r in answer["results"]], [s for _, s in expected], atol=1e-5)
        assert [r["rank"] for r in answer["results"]] == list(range(1, CLIPS))
    kept = _search(data["index"], "--like", "clip2", "--include-self", "--top-k", "2")[0]["results"]
    assert kept[0]["video_id"] == "clip2" and kept[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_an_uploaded_copy_ranks_the_gallery_as_like_does(data, tmp_path):
    copy = tmp_path / "renamed copy.mp4"
    shutil.copyfile(data["clips"] / "clip3.mp4", copy)
    by_file = _search(data["index"], "--query-video", str(copy), "--top-k", str(CLIPS))[0]
    by_id = _search(data["index"], "--like", "clip3", "--top-k", str(CLIPS))[0]
    assert by_file["query_video"] == str(copy)
    assert [r["video_id"] for r in by_file["results"]] == [r["video_id"] for r in by_id["results"]]
    np.testing.assert_allclose([r["score"] for r in by_file["results"]], [r["score"] for r in by_id["results"]],
                               atol=1e-5)
    with_self = _search(data["index"], "--query-video", str(copy), "--include-self", "--top-k", "1")[0]["results"]
    assert with_self[0]["video_id"] == "clip3" and with_self[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_an_image_is_a_one_frame_query(data, tmp_path):
    from PIL import Image

    image = tmp_path / "still.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    answer = _search(data["index"], "--query-video", str(image), "--top-k", "3")[0]
    assert len(answer["results"]) == 3 and answer["results"][0]["score"] >= answer["results"][-1]["score"]
    bundle = load_bundle(data["bundle"])
    encoder = open_session(bundle, "video_encoder", "cpu", None)
    vector, _ = encode_query_video(encoder, VideoSpec.from_config(bundle.config), image, UploadLimits())
    gallery = GalleryIndex(data["index"])
    video = unit(gallery.features(0, len(gallery), roles=("video",))["video"])
    expected = sorted(range(len(gallery)), key=lambda r: (-float(video[r] @ unit(vector)), r))[:3]
    assert [r["video_id"] for r in answer["results"]] == [gallery.ids[r] for r in expected]


def test_paging_and_reading_in_chunks_give_the_same_ranking(fake_bundle, tmp_path):
    bundle = load_bundle(fake_bundle)
    gallery = GalleryIndex(synthetic_index(tmp_path / "index", bundle, videos=40, shard=7, seed=2))
    queries = [query_by_id(gallery, "v3"), query_by_id(gallery, "v17")]
    whole = rank_similar(gallery, queries, top_k=20)
    assert all(len(ranked) == 20 for ranked in whole)
    # the synthetic rows are not of unit length: the score is still their cosine
    for ranked, query in zip(whole, ("v3", "v17"), strict=True):
        expected = _numpy_ranking(gallery.root, gallery.row_of(query))[:20]
        assert [gallery.ids[row] for row, _ in ranked] == [vid for vid, _ in expected]
        np.testing.assert_allclose([score for _, score in ranked], [score for _, score in expected], atol=1e-5)
    def same(a, b) -> None:  # the same rows; scores as BLAS gives them for another matrix size
        assert [[row for row, _ in r] for r in a] == [[row for row, _ in r] for r in b]
        np.testing.assert_allclose([[s for _, s in r] for r in a], [[s for _, s in r] for r in b], atol=1e-6)

    same(rank_similar(gallery, queries, top_k=20, rows_per_read=3), whole)
    same(rank_similar(gallery, queries, top_k=10, offset=10, rows_per_read=5), [r[10:20] for r in whole])
    assert [r["rank"] for r in similar_records(gallery, whole[0][10:], offset=10)] == list(range(11, 21))
    # a tie goes to the lower row
    tied = VideoQuery(np.zeros(bundle.config.embed_dim, np.float32), "zero")
    assert [row for row, _ in rank_similar(gallery, [tied], top_k=5)[0]] == [0, 1, 2, 3, 4]


def test_windows_carry_their_file_and_span(fake_bundle, tmp_path):
    bundle = load_bundle(fake_bundle)
    source = GalleryIndex(synthetic_index(tmp_path / "rows", bundle, videos=3, seed=4))
    rows = source.features(0, 3, roles=("video", "frame_features", "patches", "video_mask"))
    index = tmp_path / "windows"
    spans = [("talk", 0.0, 10.0), ("talk", 5.0, 15.0), ("match", 0.0, 10.0)]
    ids = [f"{f}@{s:g}" for f, s, _ in spans]
    with IndexWriter(index, bundle) as writer:
        writer.add_batch(ids, rows, [{"id": i, "file_id": f, "start": s, "end": e}
                                     for i, (f, s, e) in zip(ids, spans, strict=True)])
    results = _search(index, "--like", "talk@5", "--top-k", "2")[0]["results"]
    assert {(r["video_id"], r["file_id"], r["start"], r["end"]) for r in results} == \
        {("talk@0", "talk", 0.0, 10.0), ("match@0", "match", 0.0, 10.0)}


def test_limits_and_bad_files_are_clear_errors(data, tmp_path):
    bundle = load_bundle(data["bundle"])
    encoder = open_session(bundle, "video_encoder", "cpu", None)
    spec = VideoSpec.from_config(bundle.config)
    clip = data["clips"] / "clip4.mp4"  # 5 s, 48x40
    for limits, message in ((UploadLimits(max_bytes=100), "over the limit of 100"),
                            (UploadLimits(max_seconds=2.0), "over the limit of 2 s"),
                            (UploadLimits(max_pixels=48 * 40 - 1), "over the limit of 1919 pixels")):
        with pytest.raises(QueryVideoError, match=message) as error:
            encode_query_video(encoder, spec, clip, limits)
        assert error.value.too_large and str(clip) in str(error.value)
    at_the_limits = UploadLimits(max_bytes=clip.stat().st_size, max_seconds=5.0, max_pixels=48 * 40)
    assert encode_query_video(encoder, spec, clip, at_the_limits)[0].shape == (bundle.config.embed_dim,)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(QueryVideoError, match="cannot be decoded") as error:
        encode_query_video(encoder, spec, text, UploadLimits())
    assert not error.value.too_large
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    result = run_cli("search", "--index", str(data["index"]), "--query-video", str(empty))
    assert result.returncode == 1 and f"query video {empty} is empty" in result.stderr
    result = run_cli("search", "--index", str(data["index"]), "--like", "nope")
    assert result.returncode == 1 and "no video 'nope'" in result.stderr
    result = run_cli("search", "--index", str(data["index"]), "--like", "clip1", "--query", "a red car")
    assert result.returncode == 2 and "one kind of query" in result.stderr


def test_a_filter_and_a_page_apply_to_search_by_example(fake_bundle, tmp_path):
    bundle = load_bundle(fake_bundle)
    source = GalleryIndex(synthetic_index(tmp_path / "rows", bundle, videos=30, seed=6))
    rows = source.features(0, 30, roles=("video", "frame_features", "patches", "video_mask"))
    index = tmp_path / "tagged"
    channels = ["news" if i % 3 == 0 else "sport" for i in range(30)]
    with IndexWriter(index, bundle) as writer:
        writer.add_batch(source.ids, rows, [{"id": vid, "metadata": {"channel": channel, "n": i}}
                                            for i, (vid, channel) in enumerate(zip(source.ids, channels, strict=True))])
    expected = [(vid, s) for vid, s in _numpy_ranking(index, 4) if channels[int(vid[1:])] == "news"]
    assert len(expected) == 10  # v4 is sport: all ten news videos remain
    first = _search(index, "--like", "v4", "--filter", '{"channel": "news"}', "--top-k", "6")[0]["results"]
    page = _search(index, "--like", "v4", "--filter", '{"channel": "news"}', "--top-k", "6", "--offset", "6")[0]
    assert [r["video_id"] for r in first + page["results"]] == [vid for vid, _ in expected]
    assert [r["rank"] for r in page["results"]] == [7, 8, 9, 10]
    assert all(r["metadata"]["channel"] == "news" for r in first + page["results"])
    assert _search(index, "--like", "v4", "--filter", '{"channel": "weather"}')[0]["results"] == []
    bad = run_cli("search", "--index", str(index), "--like", "v4", "--filter", '{"channel": {"$near": 1}}')
    assert bad.returncode == 2 and "$near" in bad.stderr


def test_unit_vectors_defaults_and_edges(fake_bundle, tmp_path):
    np.testing.assert_array_equal(unit(np.zeros((2, 3))), np.zeros((2, 3)))  # zero rows stay zero, no NaN
    np.testing.assert_allclose(unit(np.array([[0.3, 0.4], [0.0, 0.1]])), [[0.6, 0.8], [0.0, 1.0]])
    # the documented limits (docs/search.md): 200 MiB, 600 s, 4096 x 4096 pixels
    assert UploadLimits() == UploadLimits(max_bytes=200 * 1024 * 1024, max_seconds=600.0, max_pixels=4096 * 4096)
    bundle = load_bundle(fake_bundle)
    gallery = GalleryIndex(synthetic_index(tmp_path / "index", bundle, videos=6, seed=9))
    last = query_by_id(gallery, "v5")  # the last row reads fine
    np.testing.assert_allclose(last.vector, unit(gallery.features(5, 6, roles=("video",))["video"][0]))
    records = similar_records(gallery, [(1, 0.5), (3, 0.25)])
    assert [r["rank"] for r in records] == [1, 2] and [r["video_id"] for r in records] == ["v1", "v3"]


def test_query_by_features_leaves_out_the_same_content_by_default(data):
    from runtime.search.similar import query_by_features

    gallery = GalleryIndex(data["index"])
    row = gallery.row_of("clip1")
    sha = gallery.entries[row]["sha256"]
    vector = gallery.features(row, row + 1, roles=("video",))["video"][0]
    assert query_by_features(gallery, vector, "upload", sha).exclude == frozenset({row})
    assert query_by_features(gallery, vector, "upload", sha, include_self=True).exclude == frozenset()


def test_a_query_file_that_cannot_be_read_is_named(data, tmp_path):
    from runtime.search.similar import check_upload

    with pytest.raises(QueryVideoError, match=f"query video {tmp_path / 'gone.mp4'}: cannot read it"):
        check_upload(tmp_path / "gone.mp4", UploadLimits())


def test_search_like_as_a_library_call_and_non_ascii_names(data, tmp_path):
    from runtime.search.similar import search_like

    answer = json.loads(search_like(data["index"], ["clip1"], [], 3))  # defaults: from rank 1, itself left out
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3] and "clip1" not in [r["video_id"]
                                                                                   for r in answer["results"]]
    named = tmp_path / "café.mp4"
    shutil.copyfile(data["clips"] / "clip2.mp4", named)
    text = search_like(data["index"], [], [named], 1)
    assert "café.mp4" in text and json.loads(text)["query_video"] == str(named)
