"""``ucofia-run describe``: captions ranked for indexed videos (video-to-text, issue 24 item 4).

Checked against other paths: without a bank a video's caption scores are its column of the
captions' text-to-video search scores (``ucofia-run search`` over the whole gallery, on an index
with SK video biases); with ``--bank`` they are ``mean_k(level_k + text_bias_k)`` computed here
from the bank's search scores; on an index of windows a file's score is its best window's.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import run_cli, synthetic_index

from runtime.bundle import load_bundle
from runtime.describe import rank_captions
from runtime.index import GalleryIndex, IndexWriter
from runtime.scoring import LEVELS
from runtime.sinkhorn import text_bias

CAPTIONS = ["a red car drives", "a dog runs on grass", "people talk in a room", "a man cooks", "waves on a beach",
            "a child plays football"]
BANK_CAPTIONS = ["a cat sleeps", "snow falls", "a band plays", "someone reads a book"]


@pytest.fixture(scope="module")
def data(fake_bundle, clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("describe")
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    (root / "bank.txt").write_text("\n".join(BANK_CAPTIONS) + "\n")
    index = root / "index"
    made = run_cli("index", "--bundle", str(fake_bundle), "--videos", str(clips), "--bank", str(root / "bank.txt"),
                   "-o", str(index), "-q", "--workers", "1")
    assert made.returncode == 0, made.stderr
    video_bank = synthetic_index(root / "video_bank", load_bundle(fake_bundle), videos=7, seed=3)
    return {"root": root, "index": index, "captions": root / "captions.txt", "video_bank": video_bank,
            "bundle": fake_bundle}


def _describe(data, *args: str) -> list[dict]:
    result = run_cli("describe", "--index", str(data["index"]), "--captions", str(data["captions"]), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _search_scores(index, captions, *args: str) -> list[dict[str, dict]]:
    """Per caption: {video_id: record} of a search over the whole gallery."""
    n = len(GalleryIndex(index))
    result = run_cli("search", "--index", str(index), "--queries", str(captions), "--top-k", str(n), *args)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(CAPTIONS) and all(len(a["results"]) == n for a in answers)
    return [{r["video_id"]: r for r in a["results"]} for a in answers]


def test_a_videos_ranking_is_its_column_of_the_search_scores(data):
    assert GalleryIndex(data["index"]).biases() is not None  # the fused score includes the video biases
    search = _search_scores(data["index"], data["captions"])
    answers = _describe(data, "--id", "clip2", "--id", "clip0", "--top-k", str(len(CAPTIONS)))
    assert [a["video_id"] for a in answers] == ["clip2", "clip0"]
    for answer in answers:
        video = answer["video_id"]
        expected = sorted(range(len(CAPTIONS)), key=lambda c: (-search[c][video]["score"], c))
        assert len(answer["results"]) == len(CAPTIONS)
        assert [r["caption"] for r in answer["results"]] == [CAPTIONS[c] for c in expected]
        assert [r["rank"] for r in answer["results"]] == list(range(1, len(CAPTIONS) + 1))
        for record, c in zip(answer["results"], expected, strict=True):
            assert record["score"] == pytest.approx(search[c][video]["score"], abs=1e-5)
            for level in LEVELS:
                assert record["levels"][level] == pytest.approx(search[c][video]["levels"][level], abs=1e-5)


def test_top_k_keeps_the_best_captions(data):
    full = _describe(data, "--id", "clip1", "--top-k", str(len(CAPTIONS)))[0]["results"]
    cut = _describe(data, "--id", "clip1", "--top-k", "2")[0]["results"]
    assert cut == full[:2]


def test_with_a_video_bank_the_caption_side_sk_bias_is_used(data):
    index, bank = data["index"], data["video_bank"]
    levels_here = _search_scores(index, data["captions"])
    on_bank = _search_scores(bank, data["captions"])
    bank_ids = GalleryIndex(bank).ids
    n_iters = load_bundle(data["bundle"]).config.sk_iterations
    bias = {lv: text_bias(np.array([[on_bank[c][v]["levels"][lv] for v in bank_ids] for c in range(len(CAPTIONS))],
                                   dtype=np.float32), n_iters) for lv in LEVELS}
    expected = [np.mean([levels_here[c]["clip3"]["levels"][lv] + bias[lv][c] for lv in LEVELS])
                for c in range(len(CAPTIONS))]
    plain = _describe(data, "--id", "clip3", "--top-k", str(len(CAPTIONS)))[0]["results"]
    biased = _describe(data, "--id", "clip3", "--top-k", str(len(CAPTIONS)), "--bank", str(bank))[0]["results"]
    order = sorted(range(len(CAPTIONS)), key=lambda c: (-expected[c], c))
    assert [r["caption"] for r in biased] == [CAPTIONS[c] for c in order]
    np.testing.assert_allclose([r["score"] for r in biased], [expected[c] for c in order], atol=1e-5)
    # the bias is per caption: it must change the scores here for this test to mean anything
    plain_score = {r["caption"]: r["score"] for r in plain}
    assert max(abs(r["score"] - plain_score[r["caption"]]) for r in biased) > 1e-3


def test_ties_keep_the_caption_order_and_a_file_takes_its_best_window():
    fused = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [2.0, 0.5]], np.float32)
    levels = {lv: fused * (i + 1) for i, lv in enumerate(LEVELS)}
    windows = [{"id": "f@0", "file_id": "f", "start": 0.0, "end": 10.0},
               {"id": "f@5", "file_id": "f", "start": 5.0, "end": 15.0}]
    records = rank_captions(["a", "b", "c", "d"], fused, levels, top_k=4, window_entries=windows)
    assert [(r["caption"], r["score"], r["window"]["video_id"]) for r in records] == \
        [("a", 3.0, "f@5"), ("c", 3.0, "f@0"), ("b", 2.0, "f@0"), ("d", 2.0, "f@0")]
    assert records[0]["levels"] == {lv: 3.0 * (i + 1) for i, lv in enumerate(LEVELS)}
    assert records[0]["window"] == {"video_id": "f@5", "start": 5.0, "end": 15.0}


def test_a_file_of_a_windowed_index_is_scored_by_its_best_window(fake_bundle, tmp_path):
    bundle = load_bundle(fake_bundle)
    # seed 1: the captions' best windows differ (asserted below)
    source = GalleryIndex(synthetic_index(tmp_path / "rows", bundle, videos=5, seed=1))
    rows = source.features(0, 5, roles=("video", "frame_features", "patches", "video_mask"))
    spans = [("talk", 0.0, 10.0), ("talk", 5.0, 15.0), ("talk", 10.0, 20.0), ("match", 0.0, 10.0), ("match", 5.0, 8.0)]
    ids = [f"{f}@{s:g}" for f, s, _ in spans]
    index = tmp_path / "windows"
    with IndexWriter(index, bundle) as writer:
        writer.add_batch(ids, rows, [{"id": i, "file_id": f, "start": s, "end": e, "window": 10.0, "stride": 5.0}
                                     for i, (f, s, e) in zip(ids, spans, strict=True)])
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n")
    search = run_cli("search", "--index", str(index), "--queries", str(captions), "--top-k", "5",
                     "--group-by", "window")
    assert search.returncode == 0, search.stderr
    per_caption = [{r["video_id"]: r["score"] for r in json.loads(line)["results"]}
                   for line in search.stdout.splitlines()]
    result = run_cli("describe", "--index", str(index), "--captions", str(captions), "--id", "talk", "--id", "match@5",
                     "--top-k", str(len(CAPTIONS)))
    assert result.returncode == 0, result.stderr
    talk, window = [json.loads(line) for line in result.stdout.splitlines()]
    best = {c: max(ids[:3], key=lambda i: (per_caption[c][i], -ids.index(i))) for c in range(len(CAPTIONS))}
    expected = sorted(range(len(CAPTIONS)), key=lambda c: (-per_caption[c][best[c]], c))
    assert [r["caption"] for r in talk["results"]] == [CAPTIONS[c] for c in expected]
    assert [r["window"]["video_id"] for r in talk["results"]] == [best[c] for c in expected]
    np.testing.assert_allclose([r["score"] for r in talk["results"]], [per_caption[c][best[c]] for c in expected],
                               atol=1e-5)
    assert len({best[c] for c in range(len(CAPTIONS))}) > 1  # the best window differs between captions
    # a window named by its own id is that row alone, with its span
    assert window["video_id"] == "match@5" and all(r["window"]["video_id"] == "match@5" for r in window["results"])


@pytest.mark.parametrize("args, message", [
    (("--id", "nope"), "no video or file 'nope'"),
    (("--id", "clip0", "--captions-empty"), "empty"),
])
def test_unknown_ids_and_empty_captions_are_clear_errors(data, tmp_path, args, message):
    captions = data["captions"]
    if "--captions-empty" in args:
        captions = tmp_path / "empty.txt"
        captions.write_text("a red car\n\nsomeone cooks\n")
        args = args[:2]
    result = run_cli("describe", "--index", str(data["index"]), "--captions", str(captions), *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_defaults_text_and_a_bank_of_another_bundle(data, tmp_path):
    many = tmp_path / "many.txt"
    many.write_text("\n".join([*CAPTIONS, *BANK_CAPTIONS, "un café près du lac", "a boat"]) + "\n")  # 12
    result = run_cli("describe", "--index", str(data["index"]), "--captions", str(many), "--id", "clip0")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert len(answer["results"]) == 10  # --top-k defaults to 10
    full = run_cli("describe", "--index", str(data["index"]), "--captions", str(many), "--id", "clip0",
                   "--top-k", "12").stdout
    assert "un café près du lac" in full  # written as UTF-8, not escaped
    from runtime_helpers import build_fake_bundle

    other = synthetic_index(tmp_path / "other_bank", load_bundle(build_fake_bundle(tmp_path / "other", seed=5)),
                            videos=3)
    refused = run_cli("describe", "--index", str(data["index"]), "--captions", str(many), "--id", "clip0",
                      "--bank", str(other))
    assert refused.returncode == 1 and "bundle" in refused.stderr and refused.stdout == ""


def test_captions_and_their_features_must_agree(data):
    from runtime.describe import describe_videos
    from runtime.scoring import TextFeatures

    gallery = GalleryIndex(data["index"])
    text = TextFeatures(sentence=np.zeros((2, 4), np.float32), words=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="3 captions but 2 encoded"):
        describe_videos(gallery, None, text, ["a", "b", "c"], ["clip0"], 1)
