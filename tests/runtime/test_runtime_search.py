"""runtime.search: Searcher answers (exhaustive, two-stage, grouped by file or by window) equal a
plain numpy ranking of the scorer's level matrices; search options; the records written as JSONL
and CSV; the two-stage caches (kernel, stage-1 index). Synthetic indexes, no video decoded."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from runtime_helpers import random_biases, random_queries, synthetic_index, synthetic_windows

from runtime.errors import GalleryIndexError
from runtime.index import GalleryIndex, IndexWriter
from runtime.scoring import LEVELS, ArrayVideos, RowRange, TopK, fuse, score_matrix
from runtime.search import (
    DEFAULT_SHORTLIST,
    DEFAULT_TOP_K,
    DEFAULT_WINDOWS_PER_FILE,
    KERNEL_FILE,
    Searcher,
    SearchOptions,
    TwoStage,
    cached_kernel,
    check_level1_kernel,
    grouping,
    records,
    two_stage,
)
from runtime.search.stage1 import Stage1Params
from runtime.search.two_stage import _faiss_rows

# files of 1 to 5 windows, not in order of size
WINDOWS = {"a": 3, "b": 1, "c": 4, "d": 2, "e": 5, "f": 2}
N_QUERIES = 4


def _queries(cfg, n=N_QUERIES, seed=9):
    return random_queries(cfg, n, seed)


@pytest.fixture(scope="module")
def windows(bundle, scorer, tmp_path_factory):
    """A windowed index with SK biases, queries, and the numpy truth: level matrices and fused scores."""
    root = synthetic_windows(tmp_path_factory.mktemp("search") / "windows", bundle, WINDOWS, seed=21, shard=5)
    random_biases(root, bundle, sum(WINDOWS.values()), seed=22)
    gallery = GalleryIndex(root)
    queries = _queries(bundle.config)
    levels = score_matrix(scorer, queries, gallery)
    return gallery, queries, levels, fuse(levels, gallery.biases())


def _rank(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by score, best first, ties: lower row first."""
    return rows[np.lexsort((rows, -scores[rows]))]


def _grouped_truth(gallery, levels, fused, q, k, per_file, rows=None):
    """What a search grouped by file must answer for query ``q`` over ``rows`` (default: all)."""
    entries = gallery.entries
    rows = np.arange(len(entries)) if rows is None else np.asarray(rows)
    out = []
    for row in _rank(fused[q], rows):
        file_id = entries[row]["file_id"]
        if file_id in [r["file_id"] for r in out]:
            continue
        if len(out) == k:
            break
        mine = _rank(fused[q], np.array([r for r in rows if entries[r]["file_id"] == file_id]))[:per_file]
        windows = [{"video_id": entries[r]["id"], "start": entries[r]["start"], "end": entries[r]["end"],
                    "score": fused[q, r], "levels": {lv: levels[lv][q, r] for lv in LEVELS}} for r in mine]
        out.append({"rank": len(out) + 1, "file_id": file_id, "score": windows[0]["score"],
                    "video_id": windows[0]["video_id"], "start": windows[0]["start"], "end": windows[0]["end"],
                    "levels": windows[0]["levels"], "metadata": {}, "windows": windows})
    return out


def _assert_records(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for key, value in w.items():
            if key == "windows":
                _assert_records(g[key], value)
            elif key == "levels":
                assert set(g[key]) == set(LEVELS)
                assert [g[key][lv] for lv in LEVELS] == pytest.approx([value[lv] for lv in LEVELS], rel=1e-5, abs=1e-5)
            elif key == "score":
                assert g[key] == pytest.approx(float(value), rel=1e-5, abs=1e-5)
            else:
                assert g[key] == value, key


def _assert_answers(got, want) -> None:
    assert len(got.results) == len(want.results)
    for g, w in zip(got.results, want.results):
        _assert_records(g, w)


# ---- search options -------------------------------------------------------------------------------
def test_search_options_defaults_and_limits():
    options = SearchOptions()
    assert (options.top_k, options.shortlist, options.windows_per_file) == (10, 1000, 3)
    assert (DEFAULT_TOP_K, DEFAULT_SHORTLIST, DEFAULT_WINDOWS_PER_FILE) == (10, 1000, 3)
    assert not options.two_stage and options.stage1 == "auto" and options.group_by is None
    SearchOptions(top_k=1, shortlist=1, windows_per_file=1)  # 1 is allowed everywhere
    for bad in ({"top_k": 0}, {"shortlist": 0}, {"windows_per_file": 0}):
        with pytest.raises(ValueError, match="must be at least 1"):
            SearchOptions(**bad)
    with pytest.raises(ValueError, match="group_by must be one of file, window, got 'row'"):
        SearchOptions(group_by="row")
    with pytest.raises(ValueError, match="unknown stage-1 kind 'annoy'"):
        SearchOptions(stage1="annoy")
    SearchOptions(offset=0)
    with pytest.raises(ValueError, match="offset must be at least 0, got -1"):
        SearchOptions(offset=-1)
    assert SearchOptions(top_k=50, shortlist=20).wide == 50 and SearchOptions(top_k=5, shortlist=20).wide == 20
    # the shortlist decides only two-stage results; everything else that changes them is in the key
    assert SearchOptions(shortlist=5).batch_key() == SearchOptions(shortlist=6).batch_key()
    assert SearchOptions(top_k=3).batch_key() == SearchOptions(top_k=7).batch_key()
    staged = SearchOptions(two_stage=True, shortlist=20)
    assert staged.batch_key() != SearchOptions(two_stage=True, shortlist=21).batch_key()
    assert staged.batch_key() == SearchOptions(two_stage=True, shortlist=20, top_k=20).batch_key()
    assert SearchOptions(two_stage=True, shortlist=20, top_k=30).batch_key() != staged.batch_key()  # wide: 30
    for other in ({"stage1": "hnsw"}, {"nprobe": 3}, {"ef_search": 9}, {"group_by": "window"},
                  {"windows_per_file": 1}, {"two_stage": False}):
        assert SearchOptions(**{"two_stage": True, "shortlist": 20, **other}).batch_key() != staged.batch_key(), other


# ---- grouped by file ------------------------------------------------------------------------------
@pytest.mark.parametrize("k, per_file", [(3, 2), (6, 5), (10, 1)])
def test_grouped_by_file_ranks_files_by_their_best_window(windows, scorer, k, per_file):
    gallery, queries, levels, fused = windows
    answer = Searcher(scorer, gallery).search(queries, SearchOptions(top_k=k, windows_per_file=per_file))
    assert answer.group_by == "file" and not answer.two_stage and answer.notes == []
    assert len(answer.results) == N_QUERIES
    for q, got in enumerate(answer.results):
        _assert_records(got, _grouped_truth(gallery, levels, fused, q, k, per_file))


def test_grouped_by_window_ranks_rows(windows, scorer):
    gallery, queries, levels, fused = windows
    answer = Searcher(scorer, gallery).search(queries, SearchOptions(top_k=7, group_by="window"))
    assert answer.group_by == "window" and len(answer.results) == N_QUERIES
    entries = gallery.entries
    for q, got in enumerate(answer.results):
        want = [{"rank": i + 1, "video_id": entries[r]["id"], "file_id": entries[r]["file_id"],
                 "start": entries[r]["start"], "end": entries[r]["end"], "score": fused[q, r],
                 "levels": {lv: levels[lv][q, r] for lv in LEVELS}, "metadata": {}}
                for i, r in enumerate(_rank(fused[q], np.arange(len(entries)))[:7])]
        _assert_records(got, want)


def test_grouped_two_stage_groups_the_reranked_shortlist_and_says_when_it_is_short(windows, scorer):
    """A flat shortlist of 5 windows: the 5 best rows by video_sentence + its bias, re-ranked by the
    fused score, grouped; queries whose 5 windows came from fewer than 4 files get a note."""
    gallery, queries, levels, fused = windows
    answer = Searcher(scorer, gallery).search(
        queries, SearchOptions(top_k=4, windows_per_file=2, two_stage=True, shortlist=5, stage1="flat"))
    assert answer.two_stage and answer.group_by == "file"
    stage1 = levels["video_sentence"] + gallery.biases()["video_sentence"][None, :]
    short = 0
    for q, got in enumerate(answer.results):
        shortlist = np.argsort(-stage1[q], kind="stable")[:5]
        want = _grouped_truth(gallery, levels, fused, q, 4, 2, rows=shortlist)
        _assert_records(got, want)
        short += len(want) < 4
    assert short, "some shortlist must hold fewer than 4 files for this test to mean anything"
    assert answer.notes == [f"for {short} queries the 5 shortlisted windows came from fewer than 4 files; "
                            f"raise --shortlist to see more files"]
    full = Searcher(scorer, gallery).search(
        queries, SearchOptions(top_k=4, windows_per_file=2, two_stage=True, shortlist=len(gallery), stage1="flat"))
    assert full.notes == []
    _assert_answers(full, Searcher(scorer, gallery).search(queries, SearchOptions(top_k=4, windows_per_file=2)))


def test_the_short_shortlist_note_appears_only_when_more_files_could_be_seen(windows, scorer):
    """The note: some query's shortlist came from fewer than k files AND the gallery holds more
    files than the fewest a query got (else a longer shortlist would show nothing more)."""
    gallery, queries, levels, _ = windows
    stage1 = levels["video_sentence"] + gallery.biases()["video_sentence"][None, :]
    n_files, seen_cases = len(WINDOWS), set()
    for shortlist in range(n_files, len(gallery) + 1):  # (a shortlist below top_k is raised to it)
        sizes = []
        for q in range(N_QUERIES):
            rows = np.argsort(-stage1[q], kind="stable")[:shortlist]
            sizes.append(len({gallery.entries[r]["file_id"] for r in rows}))
        answer = Searcher(scorer, gallery).search(
            queries, SearchOptions(top_k=n_files, two_stage=True, shortlist=shortlist, stage1="flat"))
        assert [len(r) for r in answer.results] == sizes
        short = sum(size < n_files for size in sizes)
        noted = bool(short) and n_files > min(sizes)
        assert answer.notes == ([f"for {short} queries the {shortlist} shortlisted windows came from fewer than "
                                 f"{n_files} files; raise --shortlist to see more files"] if noted else []), shortlist
        seen_cases.add((noted, max(sizes) == n_files))
    assert {(True, True), (False, True), (True, False)} <= seen_cases  # every case of the rule was met
    # more files asked for than the gallery has, every file shortlisted: nothing more to see, no note
    every = Searcher(scorer, gallery).search(
        queries, SearchOptions(top_k=n_files + 2, two_stage=True, shortlist=len(gallery), stage1="flat"))
    assert [len(r) for r in every.results] == [n_files] * N_QUERIES and every.notes == []


def test_grouped_pass_one_holds_at_most_the_budget_of_pair_scores(windows, scorer, monkeypatch):
    """Pass 1 scores the gallery in chunks whose pair scores (3 levels + fused, float32: 16 bytes a
    text and row) fit --memory-mb, as large as it allows; pass 2 rescores one query at a time."""
    gallery, queries, _, _ = windows
    calls = []
    real = grouping.score_matrix

    def spy(scorer, text, videos, *args, **kwargs):
        calls.append((len(text), (videos.start, videos.stop) if isinstance(videos, RowRange) else len(videos)))
        return real(scorer, text, videos, *args, **kwargs)

    monkeypatch.setattr(grouping, "score_matrix", spy)
    want = Searcher(scorer, gallery).search(queries, SearchOptions(top_k=3, windows_per_file=2))
    calls.clear()
    budget = 5 * N_QUERIES * 16 / 2**20  # room for 5 rows of pair scores
    got = Searcher(scorer, gallery, memory_mb=budget).search(queries, SearchOptions(top_k=3, windows_per_file=2))
    _assert_answers(got, want)
    pass_one = [rows for texts, rows in calls if isinstance(rows, tuple)]
    assert pass_one == [(0, 5), (5, 10), (10, 15), (15, 17)]
    assert [texts for texts, rows in calls] == [N_QUERIES] * 4 + [1] * N_QUERIES
    for texts, rows, chunks in ((N_QUERIES, 1, [(r, r + 1) for r in range(17)]),  # room for one row
                                (1, 8, [(0, 8), (8, 16), (16, 17)])):  # one query: 8 rows of its scores
        calls.clear()
        grouping.best_per_file(scorer, gallery, grouping.RowFiles.of(gallery), queries.rows(0, texts),
                               memory_mb=rows * texts * 16 / 2**20)
        assert [r for _, r in calls] == chunks


def test_an_index_of_one_window_is_grouped_by_file(bundle, scorer, tmp_path):
    gallery = GalleryIndex(synthetic_windows(tmp_path / "one", bundle, {"only": 1}, seed=33))
    searcher = Searcher(scorer, gallery)
    assert searcher.windowed
    answer = searcher.search(_queries(bundle.config, n=2), SearchOptions(top_k=3))
    assert answer.group_by == "file" and [[r["file_id"] for r in q] for q in answer.results] == [["only"], ["only"]]
    rows = searcher.search(_queries(bundle.config, n=1), SearchOptions(top_k=3, group_by="window")).results[0]
    assert [(r["video_id"], r["file_id"], r["start"], r["end"]) for r in rows] == [("only@0-10", "only", 0.0, 10.0)]
    empty = synthetic_index(tmp_path / "empty", bundle, 0)
    assert len(Searcher(scorer, GalleryIndex(empty))) == 0 and not Searcher(scorer, GalleryIndex(empty)).windowed


def test_an_approximate_stage1_that_finds_fewer_rows_than_asked(windows, whole, scorer):
    """IVF over a small gallery has a cell a row; probing one cell finds fewer rows than top_k: each
    query gets the rows found, ranked by the fused score, with a note (not a crash), and grouped
    search the files of those rows."""
    for gallery, queries, _, fused in (whole, windows):
        searcher = Searcher(scorer, gallery)
        full = searcher.search(queries, SearchOptions(top_k=5, two_stage=True, shortlist=5, stage1="ivf",
                                                      nprobe=len(gallery), group_by="window"))
        assert [len(r) for r in full.results] == [5] * N_QUERIES and full.notes == []
        answer = searcher.search(queries, SearchOptions(top_k=5, two_stage=True, shortlist=5, stage1="ivf", nprobe=1,
                                                        group_by="window"))
        short = sum(len(r) < 5 for r in answer.results)
        assert short and answer.notes == [f"for {short} queries stage 1 (ivf) found fewer than 5 rows; raise "
                                          f"--nprobe or --shortlist"]
        for q, got in enumerate(answer.results):
            rows = [gallery.row_of(r["video_id"]) for r in got]
            assert 1 <= len(rows) == len(set(rows)) and [r["rank"] for r in got] == list(range(1, len(rows) + 1))
            assert [r["score"] for r in got] == pytest.approx([float(fused[q, r]) for r in _rank(fused[q],
                                                                                               np.array(rows))])
    gallery, queries, _, fused = windows
    grouped = Searcher(scorer, gallery).search(queries, SearchOptions(top_k=4, two_stage=True, shortlist=4,
                                                                      stage1="ivf", nprobe=1))
    for q, got in enumerate(grouped.results):
        assert 1 <= len(got) < 4
        for record in got:
            for window in record["windows"]:
                row = gallery.row_of(window["video_id"])
                assert gallery.entries[row]["file_id"] == record["file_id"]
                assert window["score"] == pytest.approx(float(fused[q, row]), rel=1e-5)


def test_features_held_in_memory_answer_as_the_shards_do(windows, scorer):
    gallery, queries, _, _ = windows
    memory = ArrayVideos(gallery.features(0, len(gallery)))
    for options in (SearchOptions(top_k=3), SearchOptions(top_k=5, group_by="window"),
                    SearchOptions(top_k=3, two_stage=True, shortlist=6, stage1="flat")):
        _assert_answers(Searcher(scorer, gallery, source=memory).search(queries, options),
                        Searcher(scorer, gallery).search(queries, options))


# ---- whole files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whole(bundle, scorer, tmp_path_factory):
    root = synthetic_index(tmp_path_factory.mktemp("search") / "whole", bundle, 40, shard=16, seed=23)
    random_biases(root, bundle, 40, seed=24)
    gallery = GalleryIndex(root)
    queries = _queries(bundle.config, seed=25)
    levels = score_matrix(scorer, queries, gallery)
    return gallery, queries, levels, fuse(levels, gallery.biases())


def test_whole_file_search_ranks_rows_and_its_prefixes_are_the_smaller_searches(whole, scorer):
    gallery, queries, levels, fused = whole
    searcher = Searcher(scorer, gallery)
    assert len(searcher) == 40 and not searcher.windowed
    answer = searcher.search(queries, SearchOptions(top_k=8, group_by="file"))  # no files to group on whole files
    assert answer.group_by is None
    for q, got in enumerate(answer.results):
        want = [{"rank": i + 1, "video_id": gallery.ids[r], "score": fused[q, r],
                 "levels": {lv: levels[lv][q, r] for lv in LEVELS}, "metadata": {}}
                for i, r in enumerate(_rank(fused[q], np.arange(40))[:8])]
        _assert_records(got, want)
    assert searcher.search(queries, SearchOptions(top_k=3)).results == answer.first(3).results


def test_two_stage_search_reranks_the_shortlist(whole, scorer):
    """Shortlist of 6 by video_sentence + bias, top 3 by the fused score; progress once a query."""
    gallery, queries, levels, fused = whole
    stage1 = levels["video_sentence"] + gallery.biases()["video_sentence"][None, :]
    ticks = []
    top = TwoStage(scorer, gallery, params=Stage1Params("flat"), check_queries=queries).search(
        queries, 3, 6, progress=ticks.append)
    assert ticks == [1] * N_QUERIES
    for q in range(N_QUERIES):
        want = _rank(fused[q], np.argsort(-stage1[q], kind="stable")[:6])[:3]
        np.testing.assert_array_equal(top.indices[q], want)
        np.testing.assert_allclose(top.fused[q], fused[q, want], rtol=1e-5, atol=1e-5)
        for lv in LEVELS:
            np.testing.assert_allclose(top.levels[lv][q], levels[lv][q, want], rtol=1e-5, atol=1e-5)
    # k and the shortlist beyond the gallery are cut to it; a shortlist below k is refused
    everything = two_stage(scorer, gallery, queries, k=50, shortlist=80, params=Stage1Params("flat"))
    assert everything.indices.shape == (N_QUERIES, 40)
    np.testing.assert_array_equal(everything.indices[:, :5], np.stack([_rank(fused[q], np.arange(40))[:5]
                                                                      for q in range(N_QUERIES)]))
    for call in (lambda: two_stage(scorer, gallery, queries, k=5, shortlist=4),
                 lambda: TwoStage(scorer, gallery).search(queries, 5, 4)):
        with pytest.raises(ValueError, match=r"--shortlist \(4\) must be at least --top-k \(5\)"):
            call()


def test_two_stage_without_biases_and_the_probe_query(bundle, scorer, tmp_path):
    """No SK biases: stage 1 ranks by the video_sentence level alone. ``probe``: the query the
    kernel is checked on, before any search."""
    gallery = GalleryIndex(synthetic_index(tmp_path / "plain", bundle, 30, shard=30, seed=26))
    queries = _queries(bundle.config, seed=27)
    levels = score_matrix(scorer, queries, gallery)
    fused = fuse(levels, None)
    searcher = Searcher(scorer, gallery, probe=queries.rows(0, 1))
    answer = searcher.search(queries, SearchOptions(top_k=2, two_stage=True, shortlist=4, stage1="flat"))
    for q, got in enumerate(answer.results):
        shortlist = np.argsort(-levels["video_sentence"][q], kind="stable")[:4]
        assert [r["video_id"] for r in got] == [gallery.ids[r] for r in _rank(fused[q], shortlist)[:2]]
    assert searcher.two_stage(Stage1Params("flat")) is searcher.two_stage(Stage1Params("flat"))  # built once


# ---- the two-stage caches -------------------------------------------------------------------------
def test_the_level1_kernel_is_cached_per_bundle_and_checked_against_the_graph(bundle, scorer, tmp_path):
    gallery = GalleryIndex(synthetic_index(tmp_path / "index", bundle, 20, shard=20, seed=28))
    queries = _queries(bundle.config, seed=29)
    kernel = cached_kernel(scorer, gallery, 64)
    assert kernel.shape == (bundle.config.embed_dim,) * 2
    np.testing.assert_array_equal(np.load(tmp_path / "index" / KERNEL_FILE), kernel)
    meta = tmp_path / "index" / (KERNEL_FILE + ".json")
    assert json.loads(meta.read_text()) == {"fingerprint": gallery.fingerprint}
    check_level1_kernel(kernel, scorer, gallery, queries)
    with pytest.raises(GalleryIndexError, match="not the bilinear form s_hat K v"):
        check_level1_kernel(kernel * 1.01, scorer, gallery, queries)
    with pytest.raises(GalleryIndexError, match="two-stage search is unavailable"):
        check_level1_kernel(kernel[::-1], scorer, gallery, queries)
    np.save(tmp_path / "index" / KERNEL_FILE, kernel * 2)  # a cached kernel is read back as it is ...
    np.testing.assert_array_equal(cached_kernel(scorer, gallery, 64), kernel * 2)
    meta.write_text(json.dumps({"fingerprint": "another bundle"}))  # ... unless another bundle cached it
    np.testing.assert_allclose(cached_kernel(scorer, gallery, 64), kernel, rtol=1e-6)
    assert json.loads(meta.read_text()) == {"fingerprint": gallery.fingerprint}


def test_a_wrong_kernel_is_refused_before_two_stage_search(bundle, scorer, tmp_path):
    """A cached kernel that does not reproduce the graph (here: scaled by 1.01) makes two-stage
    search refuse, checked on the first search's queries or on the searcher's probe; the check
    holds on scores far below 1 too (its tolerance is relative to them)."""
    root = synthetic_index(tmp_path / "index", bundle, 20, shard=20, seed=34)
    gallery = GalleryIndex(root)
    queries = _queries(bundle.config, seed=35)
    kernel = cached_kernel(scorer, gallery, 64)
    np.save(root / KERNEL_FILE, kernel * 1.01)
    for probe in (None, queries.rows(0, 1)):
        with pytest.raises(GalleryIndexError, match="not the bilinear form"):
            Searcher(scorer, gallery, probe=probe).search(queries, SearchOptions(two_stage=True, top_k=2))
    cfg = bundle.config
    tiny = tmp_path / "tiny"
    rng = np.random.default_rng(36)
    with IndexWriter(tiny, bundle) as writer:  # video vectors of norm 1e-4: video_sentence scores ~1e-3
        writer.add_batch([f"t{i}" for i in range(8)], {
            "video": rng.standard_normal((8, cfg.embed_dim), dtype=np.float32) * 1e-4 / np.sqrt(cfg.embed_dim),
            "frame_features": rng.standard_normal((8, cfg.max_frames, cfg.embed_dim), dtype=np.float32),
            "patches": rng.standard_normal((8, cfg.num_pixels, cfg.embed_dim), dtype=np.float32),
            "video_mask": np.ones((8, cfg.max_frames), np.float32)})
    small = GalleryIndex(tiny)
    assert np.abs(score_matrix(scorer, queries, small)["video_sentence"]).max() < 0.01
    check_level1_kernel(kernel, scorer, small, queries)
    with pytest.raises(GalleryIndexError, match="not the bilinear form"):
        check_level1_kernel(kernel * 1.01, scorer, small, queries)


def test_the_kernel_check_reads_a_few_rows_and_queries(bundle, scorer, tmp_path):
    gallery = GalleryIndex(synthetic_index(tmp_path / "index", bundle, 40, shard=40, seed=37))
    kernel = cached_kernel(scorer, gallery, 64)
    read, scored = [], []

    class Rows:
        def __len__(self):
            return len(gallery)

        def features(self, start, stop):
            read.append((start, stop))
            return gallery.features(start, stop)

    class Tiles:
        def score_tile(self, text, videos):
            scored.append((len(text), len(videos["video"])))
            return scorer.score_tile(text, videos)

    check_level1_kernel(kernel, Tiles(), Rows(), _queries(bundle.config, n=30, seed=38))
    assert read == [(0, 16)] and scored == [(16, 16)]


def test_stage1_rows_are_each_video_vector_and_its_bias_read_in_chunks(windows):
    gallery = windows[0]
    videos = gallery.features(0, len(gallery))["video"]
    bias = gallery.biases()["video_sentence"]
    for chunk in (7, len(gallery), 100):
        for b, column in ((bias, bias), (None, np.zeros(len(gallery), np.float32))):
            parts = list(_faiss_rows(gallery, b, chunk=chunk))
            assert [len(p) for p in parts][:-1] == [chunk] * (len(parts) - 1) and sum(map(len, parts)) == len(gallery)
            np.testing.assert_array_equal(np.concatenate(parts), np.concatenate([videos, column[:, None]], axis=1))


def test_the_stage1_index_is_cached_per_gallery_biases_and_parameters(bundle, scorer, tmp_path):
    root = synthetic_index(tmp_path / "index", bundle, 20, shard=20, seed=30)
    gallery = GalleryIndex(root)
    TwoStage(scorer, gallery, params=Stage1Params("flat"))
    cached = sorted(root.glob("stage1-*.faiss"))
    assert len(cached) == 1
    record = json.loads(cached[0].with_suffix(".json").read_text())
    assert record["rows"] == 20 and record["params"] == {"kind": "flat"} and len(record["key"]) == 64
    stamp = cached[0].stat().st_mtime_ns
    TwoStage(scorer, GalleryIndex(root), params=Stage1Params("flat"))  # read back, not built again
    assert sorted(root.glob("stage1-*.faiss")) == cached and cached[0].stat().st_mtime_ns == stamp
    TwoStage(scorer, GalleryIndex(root), params=Stage1Params("hnsw"))  # other parameters: another file
    assert len(list(root.glob("stage1-*.faiss"))) == 2
    # the cache holds [v, bias_vs] rows: with biases the shortlist follows them (a fresh file)
    random_biases(root, bundle, 20, seed=31, scale=50.0)
    biased = GalleryIndex(root)
    queries = _queries(bundle.config, seed=32)
    top = TwoStage(scorer, biased, params=Stage1Params("flat")).search(queries, 1, 1)
    want = np.argmax(score_matrix(scorer, queries, biased)["video_sentence"] + biased.biases()["video_sentence"], 1)
    np.testing.assert_array_equal(top.indices[:, 0], want)


# ---- records --------------------------------------------------------------------------------------
def test_records_as_jsonl_and_csv():
    hit = {"rank": 1, "video_id": "v1", "score": 0.5, "levels": dict.fromkeys(LEVELS, 0.25)}
    window = {"rank": 1, "video_id": "f@0-10", "file_id": "f", "start": 0.0, "end": 10.0, "score": 0.5,
              "levels": dict.fromkeys(LEVELS, 0.25)}
    assert records.to_jsonl(["ä", "b"], [[hit], []]) == (
        json.dumps({"query": "ä", "results": [hit]}, ensure_ascii=False) + "\n"
        + json.dumps({"query": "b", "results": []}) + "\n")
    rows = list(csv.reader(io.StringIO(records.to_csv(["q1", "q2"], [[hit], [hit, {**hit, "rank": 2}]], False))))
    assert rows[0] == ["query_index", "query", "rank", "video_id", "score", *LEVELS]
    assert rows[1:] == [["0", "q1", "1", "v1", "0.5", "0.25", "0.25", "0.25"],
                        ["1", "q2", "1", "v1", "0.5", "0.25", "0.25", "0.25"],
                        ["1", "q2", "2", "v1", "0.5", "0.25", "0.25", "0.25"]]
    rows = list(csv.reader(io.StringIO(records.to_csv(["q"], [[window]], False))))
    assert rows == [["query_index", "query", "rank", "video_id", "file_id", "start", "end", "score", *LEVELS],
                    ["0", "q", "1", "f@0-10", "f", "0.0", "10.0", "0.5", "0.25", "0.25", "0.25"]]
    grouped = {"rank": 1, "file_id": "f", "windows": [window, {**window, "video_id": "f@10-20", "start": 10.0,
                                                               "end": 20.0, "score": 0.125}]}
    rows = list(csv.reader(io.StringIO(records.format_results(["q"], [[grouped]], "csv", grouped=True))))
    assert rows == [["query_index", "query", "rank", "file_id", "window_rank", "video_id", "start", "end", "score",
                     *LEVELS],
                    ["0", "q", "1", "f", "1", "f@0-10", "0.0", "10.0", "0.5", "0.25", "0.25", "0.25"],
                    ["0", "q", "1", "f", "2", "f@10-20", "10.0", "20.0", "0.125", "0.25", "0.25", "0.25"]]
    assert records.format_results(["q"], [[hit]], "jsonl", grouped=False) == records.to_jsonl(["q"], [[hit]])
    with pytest.raises(ValueError, match="unknown output format 'xml'; choose one of jsonl, csv"):
        records.format_results(["q"], [[hit]], "xml", grouped=False)
    for write in (records.to_jsonl, lambda t, r: records.to_csv(t, r, False)):
        with pytest.raises(ValueError, match="2 queries but 1 result lists"):
            write(["a", "b"], [[hit]])


def test_row_records_name_the_window_of_each_row(windows):
    gallery = windows[0]
    top = TopK(indices=np.array([[4, 0, 9]]), fused=np.array([[3.0, 2.0, 1.0]], np.float32),
               levels={lv: np.array([[0.5, 0.25, 0.125]], np.float32) for lv in LEVELS})
    got = records.row_records(gallery, top, 0)
    entries = gallery.entries
    assert [r["video_id"] for r in got] == [entries[r]["id"] for r in (4, 0, 9)]
    assert [(r["file_id"], r["start"], r["end"]) for r in got] == [(entries[r]["file_id"], entries[r]["start"],
                                                                     entries[r]["end"]) for r in (4, 0, 9)]
    assert [r["rank"] for r in got] == [1, 2, 3] and [r["score"] for r in got] == [3.0, 2.0, 1.0]
    assert [r["levels"]["patch_word"] for r in got] == [0.5, 0.25, 0.125]
    assert len(records.row_records(gallery, top, 0, k=2)) == 2
