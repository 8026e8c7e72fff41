"""ucofia-run evaluate: metrics equal a direct computation (t2v with video biases, v2t with SK
text biases as eval_v2t), multi-caption annotations, missing videos, and an index of time windows
where each file is scored by its best window (t2v, v2t and moments)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import build_fake_bundle, make_clip, run_cli, synthetic_index, synthetic_windows

from evaluation.metrics import retrieval_metrics
from evaluation.moments import moment_recall
from runtime import evaluate as evaluate_module
from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.errors import RuntimeUserError
from runtime.evaluate import EvaluateRequest, evaluate_index, load_annotations
from runtime.index import GalleryIndex, IndexWriter
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


def test_the_report_says_what_it_was_computed_on_and_the_bar_counts_pairs(setup, monkeypatch):
    root, index = setup
    ann = _write_csv(root / "test.csv", [(f"video{i}", c) for i, c in enumerate(CAPTIONS)])
    bars = []
    real = evaluate_module.progress_bar

    def counted(total, *args, **kwargs):
        bars.append([total, 0])
        manager = real(total, *args, **kwargs)
        bar = manager.__enter__()

        class Counting:
            def __enter__(self):
                def update(steps=1):
                    bars[-1][1] += steps
                    bar(steps)
                return update

            def __exit__(self, *exc):
                return manager.__exit__(*exc)

        return Counting()

    monkeypatch.setattr(evaluate_module, "progress_bar", counted)
    report = evaluate_index(EvaluateRequest(index=index, annotations=ann))  # the library's defaults
    assert bars == [[len(CAPTIONS) * 4, len(CAPTIONS) * 4]]  # captions x videos scored, all of them
    assert report["t2v_video_bias"] is not None and report["dataset"] == "msrvtt"  # biases used by default
    assert report["index"] == str(index) and report["annotations"] == str(ann)
    assert report["bundle_fingerprint"] == GalleryIndex(index).fingerprint and report["backend"] == "cpu"
    assert 0 <= report["seconds"] < 600 and report["seconds"] == round(report["seconds"], 3)
    direct = _direct(index, CAPTIONS, None)
    assert report["metrics"]["t2v"] == pytest.approx(direct[0]) and report["metrics"]["v2t"] == pytest.approx(direct[1])
    gallery = GalleryIndex(index)  # the function under it, with its own defaults: biases used too
    bundle = load_bundle(gallery.bundle_path)
    ann_rows = load_annotations(ann, "msrvtt")
    plain = evaluate_module.evaluate(gallery, Scorer(open_session(bundle, "scorer", "cpu"), bundle.config),
                                     TextEncoder(bundle, "cpu").encode(CAPTIONS), ann_rows, ann_rows.video_ids,
                                     np.arange(4), 64)
    assert plain["t2v_video_bias"] is not None
    for direction in ("t2v", "v2t"):
        assert plain["metrics"][direction] == pytest.approx(report["metrics"][direction])
    missing = _write_csv(root / "missing.csv", [("video0", "a red car"), ("video7", "not indexed")])
    with pytest.raises(RuntimeUserError, match="video7"):  # missing videos are refused by default
        evaluate_index(EvaluateRequest(index=index, annotations=missing))
    nothing = _write_csv(root / "nothing.csv", [("video8", "a"), ("video9", "b")])
    with pytest.raises(RuntimeUserError, match="no annotated video is in the index"):
        evaluate_index(EvaluateRequest(index=index, annotations=nothing, allow_missing=True))


def test_v2t_text_biases_come_from_the_video_bank(setup, fake_bundle, tmp_path):
    """--video-bank: each caption's SK text bias is computed over the bank's videos (as eval_v2t
    over the training videos) instead of the evaluated ones; t2v does not change."""
    root, index = setup
    ann = _write_csv(root / "test.csv", [(f"video{i}", c) for i, c in enumerate(CAPTIONS)])
    bundle = load_bundle(fake_bundle)
    bank = synthetic_index(tmp_path / "bank", bundle, 30, shard=30, seed=43)
    out = tmp_path / "m.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "--video-bank", str(bank),
                     "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    gallery = GalleryIndex(index)
    text = TextEncoder(bundle, "cpu").encode(CAPTIONS)
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    sims = score_matrix(scorer, text, gallery)
    bank_sims = score_matrix(scorer, text, GalleryIndex(bank))
    tb = {lv: text_bias(bank_sims[lv], bundle.config.sk_iterations) for lv in LEVELS}
    v2t = fuse({lv: sims[lv] + tb[lv][:, None] for lv in LEVELS}, None)
    assert report["metrics"]["v2t"] == pytest.approx(retrieval_metrics(v2t, None, "v2t"))
    assert report["metrics"]["t2v"] == pytest.approx(_direct(index, CAPTIONS, None)[0])
    assert report["v2t_text_bias"] == f"SK over 30 videos of {bank}"
    assert report["metrics"]["v2t"] != pytest.approx(_direct(index, CAPTIONS, None)[1])  # the bank mattered
    other = synthetic_index(tmp_path / "other", load_bundle(build_fake_bundle(tmp_path / "b2", seed=5)), 3)
    refused = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "--video-bank", str(other), "-q")
    assert refused.returncode == 1 and "fingerprint" in refused.stderr


def test_moments_of_a_single_whole_file(setup, tmp_path):
    _, index = setup
    ann = tmp_path / "one.csv"
    ann.write_text("video_id,sentence,start_time,end_time\nvideo2,people talk in a room,0,2\n")
    out = tmp_path / "one.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "--dataset", "generic",
                     "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    moments = json.loads(out.read_text())["moments"]
    duration = GalleryIndex(index).entry("video2")["duration_s"]  # 3 s: IoU 2/3 with the whole file
    assert moments["moments"] == 1 and moments["moment_of_row"].startswith("the whole file")
    assert moments["t2v"] == {"R1@0.5": 100.0, "R5@0.5": 100.0, "R1@0.3": 100.0, "R5@0.3": 100.0}, duration


def test_annotation_files_are_read_or_refused_naming_the_row(tmp_path):
    json_list = tmp_path / "a.json"
    json_list.write_text(json.dumps([{"vid": "v1", "text": "a car", "start_time": 1, "end_time": 2.5},
                                     {"vid": "v2", "text": "a dog", "start_time": "0", "end_time": "4"}]))
    ann = load_annotations(json_list, "generic")
    assert (ann.video_ids, ann.captions, ann.spans) == (["v1", "v2"], ["a car", "a dog"], [(1.0, 2.5), (0.0, 4.0)])
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"sentences": [{"video_id": "v3", "caption": "a cat"}]}))
    inner = load_annotations(wrapped, "generic")
    assert (inner.video_ids, inner.captions, inner.spans) == (["v3"], ["a cat"], None)
    lines = tmp_path / "c.jsonl"
    lines.write_text('{"video": "v4", "sentence": "x"}\n\n{"video": "v5", "sentence": "y"}\n')
    assert load_annotations(lines, "generic").video_ids == ["v4", "v5"]

    def refused(text, message, suffix=".csv", dataset="generic"):
        path = tmp_path / f"bad{suffix}"
        path.write_text(text)
        with pytest.raises(RuntimeUserError, match=message):
            load_annotations(path, dataset)

    refused("video_id,sentence\nv1,a\n", "unknown --dataset 'yt'; choose one of msrvtt, generic", dataset="yt")
    with pytest.raises(RuntimeUserError, match="annotations file not found"):
        load_annotations(tmp_path / "none.csv", "generic")
    refused("video_id,sentence\n", "holds no annotations")
    refused("[]", "holds no annotations", suffix=".json")
    refused("video_id,sentence\nv1,a\n,b\n", "row 2: empty video_id")
    refused("video_id,sentence\nv1,a\nv2, \n", "row 2: empty sentence for video v2")
    refused(json.dumps([{"video_id": "v1", "caption": None}]), "row 1: empty caption for video v1", suffix=".json")
    refused("video_id,sentence,start,end\nv1,a,0,1\nv2,b,x,3\n", "row 2: start/end must be numbers of seconds")
    refused("video_id,sentence,start,end\nv1,a,2,2\n", r"row 1: need 0 <= start < end, got 2.0, 2.0")
    refused("video_id,sentence,start,end\nv1,a,-1,2\n", r"row 1: need 0 <= start < end")


def test_bad_annotation_file(setup, tmp_path):
    _, index = setup
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,a car\n")
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(bad), "-q")
    assert result.returncode == 1 and "video id column" in result.stderr


# ---- time windows --------------------------------------------------------------------------------
# 12 files of 2 to 5 windows of 10 s, one caption each: R@5 and R@10 are not a given, and a file's
# best window is mostly not its last.
WINDOWS = {f"file{k:02d}": 2 + k % 4 for k in range(12)}
WINDOW_CAPTIONS = ["a red car", "a dog runs on grass", "people talk in a room", "a man plays guitar",
                   "a cat sleeps", "someone cooks pasta", "the crowd cheers", "a boat on a lake", "kids play football",
                   "a woman sings", "rain on a window", "a train leaves the station"]


@pytest.fixture(scope="module")
def windowed(fake_bundle, tmp_path_factory):
    """A synthetic index of time windows (random features) with random SK video biases."""
    bundle = load_bundle(fake_bundle)
    index = synthetic_windows(tmp_path_factory.mktemp("eval_windows") / "index", bundle, WINDOWS, seed=3)
    rows = sum(WINDOWS.values())
    biases = np.random.default_rng(4).normal(0, 0.3, (len(LEVELS), rows)).astype(np.float32)
    with IndexWriter(index, bundle) as writer:
        writer.set_biases(biases, {"bank": {"path": "synthetic"}})
    return index


def test_windowed_evaluate_scores_each_file_by_its_best_window_both_ways(windowed, tmp_path):
    assert len(WINDOW_CAPTIONS) == len(WINDOWS)
    truth = [(10.0, 20.0 if n > 2 else 15.0) for n in WINDOWS.values()]  # in the 2nd window
    ann = tmp_path / "ann.csv"
    ann.write_text("video_id,sentence,start,end\n" + "".join(
        f"{f},{c},{a},{b}\n" for f, c, (a, b) in zip(WINDOWS, WINDOW_CAPTIONS, truth)))
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--index", str(windowed), "--annotations", str(ann), "--dataset", "generic",
                     "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())

    gallery = GalleryIndex(windowed)
    bundle = load_bundle(gallery.bundle_path)
    text = TextEncoder(bundle, "cpu").encode(WINDOW_CAPTIONS)
    sims = score_matrix(Scorer(open_session(bundle, "scorer", "cpu"), bundle.config), text, gallery)
    t2v_rows = fuse(sims, gallery.biases())
    text_biases = {lv: text_bias(sims[lv], bundle.config.sk_iterations) for lv in LEVELS}
    v2t_rows = fuse({lv: sims[lv] + text_biases[lv][:, None] for lv in LEVELS}, None)
    files = np.array([e["file_id"] for e in gallery.entries])
    assert list(dict.fromkeys(files)) == list(WINDOWS)  # the gallery's file order is the captions'

    def per_file(scores, pick):
        return np.stack([pick(scores[:, files == f]) for f in WINDOWS], axis=1)

    def best(x):
        return x.max(axis=1)

    def last(x):
        return x[:, -1]

    want = {"t2v": retrieval_metrics(per_file(t2v_rows, best), None, "t2v"),
            "v2t": retrieval_metrics(per_file(v2t_rows, best), None, "v2t")}
    # the test tells best from last: most files' best window is another one, and the metrics differ
    assert (per_file(t2v_rows, lambda x: x.argmax(axis=1) != x.shape[1] - 1)).mean() > 0.5
    assert retrieval_metrics(per_file(t2v_rows, last), None, "t2v") != want["t2v"]
    assert retrieval_metrics(per_file(v2t_rows, last), None, "v2t") != want["v2t"]
    assert 0 < want["t2v"]["R5"] < 100 and want["t2v"]["R10"] < 100
    assert report["metrics"]["t2v"] == pytest.approx(want["t2v"])
    assert report["metrics"]["v2t"] == pytest.approx(want["v2t"])
    assert report["videos"] == len(WINDOWS) and report["protocol"].startswith("one caption")
    assert report["windows"] == {"window": 10.0, "stride": 10.0, "rows_scored": len(files), "file_score": "best window"}
    assert report["v2t_text_bias"] == f"SK over the {len(files)} evaluated windows"
    spans = [(e["start"], e["end"]) for e in gallery.entries]
    assert report["moments"]["t2v"] == pytest.approx(moment_recall(t2v_rows, files, spans, list(WINDOWS), truth))
    assert report["moments"]["moment_of_row"] == "its window"
