"""ucofia-run on time windows (index --window/--stride): features equal cut-out clips, resume,
settings, grouped search (exhaustive and two-stage), SK biases and evaluate with moments."""
from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from runtime_helpers import run_cli
from window_helpers import cut_span, write_lossless

from evaluation.metrics import retrieval_metrics
from evaluation.moments import moment_recall
from runtime import search
from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.errors import GalleryIndexError
from runtime.index import GalleryIndex
from runtime.scoring import Scorer, fuse, score_matrix
from runtime.search import grouping
from runtime.text import TextEncoder
from runtime.windows import WindowSetting, check_setting, setting_of, window_id
from ucofia.data.windows import Span

FPS = 3
SECONDS = {"talk": 41, "match": 26, "clip": 7}  # clip: shorter than one window
WINDOW, STRIDE = "10", "5"
QUERIES = ["a red car", "a dog runs on grass", "people talk in a room"]


def _flat_colour_frames(n: int, seed: int) -> np.ndarray:
    colours = np.random.default_rng(seed).integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(colours, (n, 24, 32, 3)))


@pytest.fixture(scope="module")
def setup(fake_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    bundle = fake_bundle
    videos = root / "videos"
    videos.mkdir()
    for k, (name, seconds) in enumerate(SECONDS.items()):
        write_lossless(videos / f"{name}.mp4", _flat_colour_frames(FPS * seconds, seed=k), FPS)
    bank = root / "bank.txt"
    bank.write_text("a cat sleeps\na car drives fast\nsomeone cooks\nthe crowd cheers\n")
    index = root / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "--bank", str(bank), "-o", str(index),
                     "--window", WINDOW, "--stride", STRIDE, "--batch-size", "4", "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    return root, bundle, videos, bank, index


def _expected_ids():
    spans = {"talk": [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30), (25, 35), (30, 40), (35, 41)],
             "match": [(0, 10), (5, 15), (10, 20), (15, 25), (20, 26)], "clip": [(0, 7)]}
    return {f"{name}@{a}-{b}" for name, pairs in spans.items() for a, b in pairs}


def test_windowed_index_rows_and_entries(setup):
    _root, _, videos, _, index = setup
    gallery = GalleryIndex(index)
    assert set(gallery.ids) == _expected_ids()
    talk = [e for e in gallery.entries if e["file_id"] == "talk"]
    assert [(e["start"], e["end"]) for e in talk][-1] == (35.0, 41.0)
    assert {e["path"] for e in talk} == {str((videos / "talk.mp4").resolve())}
    assert len({e["sha256"] for e in talk}) == 1 and talk[0]["duration_s"] == pytest.approx(41, abs=0.05)
    assert {(e["window"], e["stride"]) for e in gallery.entries} == {(10.0, 5.0)}
    assert talk[0]["frames"] == 10 and talk[-1]["frames"] == 6  # 1 fps sampling, short tail
    assert gallery.entry("clip@0-7")["frames"] == 7
    assert gallery.biases()["video_sentence"].shape == (len(gallery),)


def test_window_features_equal_cut_out_clips(setup, tmp_path):
    """A windowed row holds exactly the features of its span indexed as a file of its own."""
    _root, bundle, videos, _, index = setup
    cuts = tmp_path / "cuts"
    cuts.mkdir()
    gallery = GalleryIndex(index)
    names = {}
    for entry in gallery.entries:
        name = entry["id"].replace("@", "_").replace(".", "p")
        cut_span(videos / f"{entry['file_id']}.mp4", cuts / f"{name}.mp4",
                 Span(int(entry["start"] * 1000), int(round(entry["end"] * 1000))))
        names[name] = entry["id"]
    whole = tmp_path / "cuts_index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(cuts), "-o", str(whole), "-q")
    assert result.returncode == 0, result.stderr
    clips = GalleryIndex(whole)
    assert len(clips) == len(gallery)
    for name, row_id in names.items():
        got = gallery.gather(np.array([gallery.row_of(row_id)]), ("video", "frame_features", "patches", "video_mask"))
        want = clips.gather(np.array([clips.row_of(name)]), ("video", "frame_features", "patches", "video_mask"))
        for role in got:
            np.testing.assert_allclose(got[role], want[role], rtol=0, atol=1e-5, err_msg=f"{row_id} {role}")
        assert gallery.entry(row_id)["frames"] == clips.entry(name)["frames"]


def test_resume_encodes_only_missing_windows(setup, tmp_path):
    _root, bundle, videos, _, index = setup
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    state = json.loads((copy / "index.json").read_text())
    lost = state["shards"].pop()  # as if the run was killed before its last shard was recorded
    (copy / "index.json").write_text(json.dumps(state))
    lost_ids = json.loads((copy / "shards" / lost["name"] / "ids.json").read_text())
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(copy),
                     "--window", WINDOW, "--stride", STRIDE, "-q")
    assert result.returncode == 0, result.stderr
    assert f"indexed {len(lost_ids)} new windows" in result.stdout
    assert f"{len(_expected_ids()) - len(lost_ids)} already present" in result.stdout
    again, before = GalleryIndex(copy), GalleryIndex(index)
    assert sorted(again.ids) == sorted(before.ids)
    rows = np.array([again.row_of(i) for i in before.ids])
    np.testing.assert_allclose(again.gather(rows)["video"], before.features(0, len(before))["video"], atol=1e-6)


@pytest.mark.parametrize("args, message", [
    ((), "holds --window 10 --stride 5; this run asks for whole files"),
    (("--window", "5"), "holds --window 10 --stride 5; this run asks for --window 5 --stride 5"),
    (("--stride", "5"), "--stride needs --window"),
    (("--window", "0"), "--window must be a positive number of seconds"),
])
def test_window_settings_are_checked(setup, args, message):
    _root, bundle, videos, _, index = setup
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(index), "-q", *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_unreadable_file_is_reported_then_forgotten_once_fixed(setup, tmp_path):
    _root, bundle, videos, _, _ = setup
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(videos / "clip.mp4", folder / "clip.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "index"
    first = run_cli("index", "--bundle", str(bundle), "--videos", str(folder), "-o", str(out), "--window", "3", "-q")
    assert first.returncode == 3 and "broken" in first.stderr
    assert [json.loads(l)["id"] for l in (out / "failed.jsonl").read_text().splitlines()] == ["broken"]
    shutil.copy(videos / "clip.mp4", folder / "broken.mp4")
    second = run_cli("index", "--bundle", str(bundle), "--videos", str(folder), "-o", str(out), "--window", "3", "-q")
    assert second.returncode == 0, second.stderr
    assert (out / "failed.jsonl").read_text() == ""
    assert sorted(GalleryIndex(out).ids) == ["broken@0-3", "broken@3-6", "broken@6-7", "clip@0-3", "clip@3-6",
                                             "clip@6-7"]


def test_a_stream_without_frame_count_or_duration_is_failed_with_the_fix(setup, tmp_path):
    """A raw H.264 stream has neither a frame count nor a duration: its windows cannot be planned,
    so the file is listed as failed (with the re-encode fix) and the others are indexed."""
    import av

    _root, bundle, videos, _, _ = setup
    raw = tmp_path / "raw.h264"
    with av.open(str(raw), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for frame in _flat_colour_frames(9, seed=5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    listing = tmp_path / "videos.txt"
    listing.write_text(f"raw\t{raw}\nclip\t{videos / 'clip.mp4'}\n")
    out = tmp_path / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(listing), "-o", str(out), "--window", "3", "-q")
    assert result.returncode == 3, result.stderr
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["raw"]
    assert "neither a frame count nor a duration" in failed[0]["error"] and "ffmpeg" in failed[0]["error"]
    assert sorted(GalleryIndex(out).ids) == ["clip@0-3", "clip@3-6", "clip@6-7"]


def test_the_window_setting_of_an_index_is_one_setting(tmp_path):
    def window(file_id, window, stride):
        return {"id": f"{file_id}@0-{window:g}", "file_id": file_id, "start": 0.0, "end": window, "window": window,
                "stride": stride}

    whole = {"id": "a", "path": "a.mp4"}
    assert setting_of([]) is None and setting_of([whole, {"id": "b"}]) is None
    assert setting_of([window("a", 10, 5), window("b", 10, 5)]) == WindowSetting(10_000, 5_000)
    for mixed in ([whole, window("b", 10, 5)], [window("a", 10, 5), whole], [window("a", 10, 5), window("b", 10, 4)]):
        with pytest.raises(GalleryIndexError, match="mixes whole-file rows and windows of different"):
            setting_of(mixed)
    check_setting(tmp_path, [], WindowSetting(3000, 3000))  # an empty index takes any setting
    check_setting(tmp_path, [window("a", 10, 5)], WindowSetting(10_000, 5_000))
    with pytest.raises(GalleryIndexError, match="holds whole files \\(no --window\\); this run asks for --window 10"):
        check_setting(tmp_path, [whole], WindowSetting(10_000, 5_000))
    with pytest.raises(GalleryIndexError, match="holds --window 10 --stride 5; this run asks for whole files"):
        check_setting(tmp_path, [window("a", 10, 5)], None)


# ---- search ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scoring(setup):
    _, bundle_dir, _, _, index = setup
    bundle = load_bundle(bundle_dir)
    gallery = GalleryIndex(index)
    text = TextEncoder(bundle, "cpu", None).encode(QUERIES)
    scorer = Scorer(open_session(bundle, "scorer", "cpu", None), bundle.config)
    sims = score_matrix(scorer, text, gallery)
    return gallery, scorer, text, fuse(sims, gallery.biases()), sims


def test_grouped_search_is_each_file_once_with_its_best_windows(scoring):
    gallery, scorer, text, fused, _ = scoring
    files = np.array([e["file_id"] for e in gallery.entries])
    groups = grouping.grouped_exhaustive(scorer, gallery, text, k=2, per_file=3)
    for q, hits in enumerate(groups):
        best = {f: fused[q, files == f].max() for f in SECONDS}
        ranked = sorted(best, key=lambda f: -best[f])[:2]
        assert [h.file_id for h in hits] == ranked
        for hit in hits:
            rows = np.flatnonzero(files == hit.file_id)
            order = rows[np.argsort(-fused[q, rows], kind="stable")][:3]
            assert [w.row for w in hit.windows] == list(order)
            np.testing.assert_allclose([w.score for w in hit.windows], fused[q, order], rtol=1e-5)


def test_grouped_search_of_a_batch_equals_each_query_alone(scoring):
    """The queries of a batch share the per-file pass over the windows (one score_matrix for all
    of them); each query's files, windows and scores are those it gets searched alone."""
    gallery, scorer, text, _, _ = scoring
    batch = grouping.grouped_exhaustive(scorer, gallery, text, k=2, per_file=2)
    for q in range(len(text)):
        (alone,) = grouping.grouped_exhaustive(scorer, gallery, text.rows(q, q + 1), k=2, per_file=2)
        assert [(h.file_id, [w.row for w in h.windows]) for h in batch[q]] == \
            [(h.file_id, [w.row for w in h.windows]) for h in alone]
        np.testing.assert_allclose([w.score for h in batch[q] for w in h.windows],
                                   [w.score for h in alone for w in h.windows], rtol=1e-6)


def test_two_stage_grouped_with_full_shortlist_equals_exhaustive(scoring):
    gallery, scorer, text, _, _ = scoring
    exact = grouping.grouped_exhaustive(scorer, gallery, text, k=3, per_file=2)
    wide = search.two_stage(scorer, gallery, text, len(gallery), len(gallery))
    approx = grouping.group_rows(wide, gallery, k=3, per_file=2)
    assert len(exact) == len(approx) == len(QUERIES)
    for a, b in zip(exact, approx):
        assert len(a) == len(b) == 3
        assert [(h.file_id, [w.row for w in h.windows]) for h in a] == [(h.file_id, [w.row for w in h.windows])
                                                                       for h in b]
        np.testing.assert_allclose([w.score for h in a for w in h.windows], [w.score for h in b for w in h.windows],
                                   rtol=1e-5)


def test_searcher_grouped_two_stage_with_full_shortlist_equals_exhaustive(scoring):
    from runtime.search import Searcher, SearchOptions

    gallery, scorer, text, _, _ = scoring
    searcher = Searcher(scorer, gallery)
    exact = searcher.search(text, SearchOptions(top_k=3, windows_per_file=2))
    staged = searcher.search(text, SearchOptions(top_k=3, windows_per_file=2, two_stage=True, shortlist=len(gallery)))
    assert exact.group_by == staged.group_by == "file" and staged.two_stage and not exact.two_stage
    assert len(exact.results) == len(staged.results) == len(QUERIES)
    for a, b in zip(exact.results, staged.results):
        assert len(a) == len(b) == 3
        assert [(r["file_id"], [w["video_id"] for w in r["windows"]]) for r in a] == \
            [(r["file_id"], [w["video_id"] for w in r["windows"]]) for r in b]
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-5)


def test_grouped_memory_budget_does_not_change_the_result(scoring):
    gallery, scorer, text, _, _ = scoring
    small = grouping.best_per_file(scorer, gallery, grouping.RowFiles.of(gallery), text, memory_mb=1e-4)
    large = grouping.best_per_file(scorer, gallery, grouping.RowFiles.of(gallery), text)
    np.testing.assert_allclose(small, large, rtol=1e-5)


def test_search_cli_on_windows(setup, tmp_path):
    _, _, _, _, index = setup
    grouped = run_cli("search", "--index", str(index), "--query", QUERIES[0], "--top-k", "2", "--windows-per-file", "2")
    assert grouped.returncode == 0, grouped.stderr
    hits = json.loads(grouped.stdout)["results"]
    assert len(hits) == 2 and len({h["file_id"] for h in hits}) == 2
    for h in hits:
        assert h["video_id"] == h["windows"][0]["video_id"] and h["score"] == h["windows"][0]["score"]
        assert h["video_id"] == window_id(h["file_id"], Span(int(h["start"] * 1000), int(h["end"] * 1000)))
        assert 1 <= len(h["windows"]) <= 2
    flat = run_cli("search", "--index", str(index), "--query", QUERIES[0], "--top-k", "4", "--group-by", "window")
    rows = json.loads(flat.stdout)["results"]
    assert rows[0]["video_id"] == hits[0]["video_id"] and rows[0]["score"] == pytest.approx(hits[0]["score"], rel=1e-5)
    assert all({"file_id", "start", "end"} <= set(r) for r in rows)
    table = run_cli("search", "--index", str(index), "--query", QUERIES[0], "--top-k", "2", "--format", "csv",
                    "--two-stage", "--shortlist", "100")
    lines = list(csv.DictReader(io.StringIO(table.stdout)))
    assert lines[0]["file_id"] == hits[0]["file_id"] and lines[0]["window_rank"] == "1"
    assert float(lines[0]["score"]) == pytest.approx(hits[0]["score"], rel=1e-4)


# ---- evaluate -----------------------------------------------------------------------------------
def test_evaluate_on_windows_scores_files_by_their_best_window_and_moments(setup, scoring, tmp_path):
    _, _, _, _, index = setup
    gallery, _, _, _fused, sims = scoring
    truth = [("talk", 12.0, 18.0), ("match", 0.0, 9.0), ("talk", 30.0, 41.0)]
    ann = tmp_path / "moments.csv"
    assert len(truth) == len(QUERIES)
    ann.write_text("video_id,sentence,start,end\n"
                   + "".join(f"{v},{q},{a},{b}\n" for (v, a, b), q in zip(truth, QUERIES)))
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "--dataset", "generic", "-o",
                     str(out), "-q", "--no-bias")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    entries = gallery.entries
    files = ["talk", "match"]  # first-appearance order of the annotations
    rows = [r for f in files for r, e in enumerate(entries) if e["file_id"] == f]
    plain = fuse(sims, None)[:, rows]
    row_file = np.array([files.index(entries[r]["file_id"]) for r in rows])
    per_file = np.stack([plain[:, row_file == j].max(axis=1) for j in range(len(files))], axis=1)
    gt = np.array([files.index(v) for v, _, _ in truth])
    assert report["metrics"]["t2v"] == pytest.approx(retrieval_metrics(per_file, gt, "t2v"))
    assert report["metrics"]["v2t"] == pytest.approx(retrieval_metrics(per_file, gt, "v2t"))  # --no-bias: same scores
    want = moment_recall(plain, [entries[r]["file_id"] for r in rows], [(entries[r]["start"], entries[r]["end"])
                         for r in rows], [v for v, _, _ in truth], [(a, b) for _, a, b in truth])
    assert report["moments"]["t2v"] == pytest.approx(want)
    assert report["windows"] == {"window": 10.0, "stride": 5.0, "rows_scored": len(rows), "file_score": "best window"}
    assert "R1@0.5" in result.stdout and report["extra_gallery_videos"] == 1


def test_evaluate_whole_file_index_is_the_moment_baseline(setup, tmp_path):
    _, bundle, videos, _, _ = setup
    whole = tmp_path / "whole"
    assert run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(whole), "-q").returncode == 0
    ann = tmp_path / "moments.json"
    ann.write_text(json.dumps([{"video_id": "clip", "caption": "a red car", "start": 0, "end": 5},
                               {"video_id": "talk", "caption": "a dog", "start": 0, "end": 30}]))
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--index", str(whole), "--annotations", str(ann), "--dataset", "generic", "-o",
                     str(out), "-q", "--allow-missing")
    assert result.returncode == 0, result.stderr
    moments = json.loads(out.read_text())["moments"]
    assert moments["moment_of_row"].startswith("the whole file") and moments["moments"] == 2
    # IoU with the whole file: clip 5/7 (>= 0.5), talk 30/41 (>= 0.5): a hit exactly when the file ranks first
    t2v = json.loads(out.read_text())["metrics"]["t2v"]
    assert moments["t2v"]["R1@0.5"] == pytest.approx(t2v["R1"]) and moments["t2v"]["R5@0.5"] == 100.0


def test_changed_file_replaces_all_its_windows(setup, tmp_path):
    """Re-indexing a file whose content changed replaces every window of it (also windows the new,
    shorter content no longer has) and leaves the other files' rows alone."""
    _root, bundle, _, _, _ = setup
    videos = tmp_path / "videos"
    videos.mkdir()
    write_lossless(videos / "match.mp4", _flat_colour_frames(FPS * 26, seed=1), FPS)
    write_lossless(videos / "clip.mp4", _flat_colour_frames(FPS * 7, seed=2), FPS)
    index = tmp_path / "index"

    def run(out):
        return run_cli("index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(out),
                       "--window", WINDOW, "--stride", STRIDE, "--batch-size", "2", "-q")

    assert run(index).returncode == 0
    before = GalleryIndex(index)
    clip_before = before.gather(np.array([before.row_of("clip@0-7")]))
    write_lossless(videos / "match.mp4", _flat_colour_frames(FPS * 17, seed=9), FPS)  # new content, shorter
    result = run(index)
    assert result.returncode == 0, result.stderr
    assert "1 changed files re-indexed" in result.stdout
    gallery = GalleryIndex(index)
    assert sorted(gallery.ids) == sorted(["clip@0-7", "match@0-10", "match@5-15", "match@10-17"])
    fresh = tmp_path / "fresh"
    assert run(fresh).returncode == 0
    scratch = GalleryIndex(fresh)
    for row_id in gallery.ids:  # equal to an index built from scratch (batching changes sums by ~1e-8)
        got = gallery.gather(np.array([gallery.row_of(row_id)]))
        want = scratch.gather(np.array([scratch.row_of(row_id)]))
        for role in got:
            np.testing.assert_allclose(got[role], want[role], rtol=0, atol=1e-6, err_msg=f"{row_id} {role}")
        assert gallery.entry(row_id)["sha256"] == scratch.entry(row_id)["sha256"]
    clip_after = gallery.gather(np.array([gallery.row_of("clip@0-7")]))
    for role in clip_before:  # the unchanged file's row is the very same one
        np.testing.assert_array_equal(clip_after[role], clip_before[role])
