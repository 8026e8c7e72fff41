"""ucofia-run evaluate: metrics equal a direct computation (t2v with video biases, v2t with SK
text biases as eval_v2t), multi-caption annotations, missing videos."""
from __future__ import annotations

import json

import pytest
from runtime_helpers import make_clip, run_cli

from evaluation.metrics import retrieval_metrics
from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.index import GalleryIndex
from runtime.scoring import LEVELS, Scorer, fuse, score_matrix
from runtime.sinkhorn import text_bias
from runtime.text import TextEncoder

CAPTIONS = ["a red car", "a dog runs on grass", "people talk in a room", "a man plays guitar"]


@pytest.fixture(scope="module")
def setup(fake_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    bundle = fake_bundle
    videos = root / "videos"
    videos.mkdir()
    for i in range(len(CAPTIONS)):
        make_clip(videos / f"video{i}.mp4", seconds=1 + i, seed=10 + i)
    bank = root / "bank.txt"
    bank.write_text("a cat sleeps\na car drives fast\nsomeone cooks\n")
    index = root / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "--bank", str(bank), "-o",
                     str(index), "-q", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return root, index


def _write_csv(path, rows):
    path.write_text("key,vid_key,video_id,sentence\n" +
                    "".join(f"ret{i},msr{i},{vid},{cap}\n" for i, (vid, cap) in enumerate(rows)))
    return path


def _direct(index, captions, video_of_text):
    gallery = GalleryIndex(index)
    bundle = load_bundle(gallery.bundle_path)
    text = TextEncoder(bundle, "cpu").encode(captions)
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    sims = score_matrix(scorer, text, gallery)
    t2v = fuse(sims, gallery.biases())
    tb = {lv: text_bias(sims[lv], bundle.config.sk_iterations) for lv in LEVELS}
    v2t = fuse({lv: sims[lv] + tb[lv][:, None] for lv in LEVELS}, None)
    return retrieval_metrics(t2v, video_of_text, "t2v"), retrieval_metrics(v2t, video_of_text, "v2t")


def test_one_caption_per_video_matches_direct_metrics(setup):
    root, index = setup
    ann = _write_csv(root / "test.csv", [(f"video{i}", c) for i, c in enumerate(CAPTIONS)])
    out = root / "m.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    t2v, v2t = _direct(index, CAPTIONS, None)
    assert report["metrics"]["t2v"] == pytest.approx(t2v)
    assert report["metrics"]["v2t"] == pytest.approx(v2t)
    assert report["protocol"].startswith("one caption") and report["t2v_video_bias"]["bank"]["captions"] == 3
    assert "R@1" in result.stdout and "t2v" in result.stdout


def test_multi_caption_and_missing_videos(setup):
    root, index = setup
    rows = [("video0", "a red car"), ("video1", "a dog"), ("video0", "a car on a road"), ("video2", "people"),
            ("video3", "guitar music"), ("video9", "not indexed")]
    ann = _write_csv(root / "multi.csv", rows)
    missing = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "-q")
    assert missing.returncode == 1 and "video9" in missing.stderr and "--allow-missing" in missing.stderr
    out = root / "multi.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "--allow-missing", "-q",
                     "-o", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["captions"] == 5 and report["videos"] == 4 and report["protocol"] == "multi-caption"
    # gallery order is video0..3 and the evaluated videos appear in that order too
    t2v, v2t = _direct(index, [c for _, c in rows[:5]], [0, 1, 0, 2, 3])
    assert report["metrics"]["t2v"] == pytest.approx(t2v)
    assert report["metrics"]["v2t"] == pytest.approx(v2t)


def test_bad_annotation_file(setup, tmp_path):
    _, index = setup
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,a car\n")
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(bad), "-q")
    assert result.returncode == 1 and "video id column" in result.stderr
