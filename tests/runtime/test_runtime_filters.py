"""Search filters and pages: a filtered search equals the same search on an index built from the
matching videos alone (exhaustive and two-stage, whole files and windows); the filter language
agrees with a plain-Python evaluator on random metadata; pages are slices of one longer ranking
with absolute ranks, ties broken by gallery row; bad filters and pages are usage errors."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from runtime_helpers import copy_clips, run_cli

from runtime.bundle import load_bundle
from runtime.index import IndexWriter
from runtime.search.filters import FilterError, MetadataTable, parse_filter

META = {
    "clip0": {"channel": "news", "year": 2019, "tags": ["city", "night"]},
    "clip1": {"channel": "sport", "year": 2021, "live": True},
    "clip2": {"channel": "news", "year": 2022, "tags": ["beach"]},
    "clip3": {"channel": "music", "year": 2020, "live": False, "tags": ["city"]},
    "clip4": {"channel": "news", "year": 2024},
    "clip5": {"year": 2018, "tags": []},
}
QUERIES = ("--query", "a red car on the road", "--query", "someone cooking")
FILTERS = [
    ({"channel": "news"}, {"clip0", "clip2", "clip4"}),
    ({"year": {"$gte": 2020, "$lt": 2024}}, {"clip1", "clip2", "clip3"}),
    ({"$or": [{"tags": "city"}, {"live": True}]}, {"clip0", "clip1", "clip3"}),
    ({"$and": [{"channel": {"$ne": "news"}}, {"year": {"$not": {"$gt": 2020}}}]}, {"clip3", "clip5"}),
    ({"channel": {"$exists": False}}, {"clip5"}),
    ({"duration_s": {"$gt": 3.5}}, {"clip3", "clip4", "clip5"}),  # a recorded field (clip i lasts 1 + i s)
]


def _jsonl(path, folder, ids):
    path.write_text("".join(json.dumps({"id": vid, "path": str(folder / f"{vid}.mp4"), **META[vid]}) + "\n"
                            for vid in ids))
    return path


def _index(bundle, listing, out, *extra):
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(listing), "-o", str(out), "--workers", "1",
                     "-q", "--no-thumbnails", *extra)
    assert result.returncode == 0, result.stderr
    return out


def _search(index, *args):
    result = run_cli("search", "--index", str(index), *QUERIES, *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["results"] for line in result.stdout.splitlines()]


def _same(got: list[list[dict]], want: list[list[dict]]) -> None:
    """The same records; scores equal to float32 precision (a tile of other rows may round differently)."""
    def exact(records):
        return [[{k: v for k, v in r.items() if k not in ("score", "levels")} for r in q] for q in records]

    def scores(records):
        return [[[r["score"], *r["levels"].values()] for r in q] for q in records]

    assert exact(got) == exact(want)
    for a, b in zip(scores(got), scores(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def folder(clips, tmp_path_factory):
    return copy_clips(clips, tmp_path_factory.mktemp("videos"), range(6))


@pytest.fixture(scope="module")
def full(fake_bundle, folder, tmp_path_factory):
    """All six clips with metadata, no caption bank (SK biases would depend on the gallery)."""
    root = tmp_path_factory.mktemp("full")
    return _index(fake_bundle, _jsonl(root / "all.jsonl", folder, META), root / "index")


@pytest.mark.parametrize("mode", [("--top-k", "6"),
                                  ("--top-k", "1", "--two-stage", "--stage1", "flat", "--shortlist", "1")],
                         ids=["exhaustive", "two-stage"])
@pytest.mark.parametrize("where, matching", FILTERS, ids=[json.dumps(f) for f, _ in FILTERS])
def test_filtered_search_equals_an_index_of_the_matching_videos(fake_bundle, folder, full, tmp_path, mode, where,
                                                                matching):
    """Two-stage with a shortlist of 1: FAISS must pick the best matching row, not filter its pick."""
    subset = _index(fake_bundle, _jsonl(tmp_path / "subset.jsonl", folder, [v for v in META if v in matching]),
                    tmp_path / "subset")
    got = _search(full, "--filter", json.dumps(where), *mode)
    want = _search(subset, *mode)
    _same(got, want)
    if "--two-stage" in mode:
        assert [len(r) for r in got] == [1, 1]
    else:
        assert {r["video_id"] for r in got[0]} == matching


def test_a_filter_matching_nothing_gives_empty_results(full):
    assert _search(full, "--filter", '{"channel": "weather"}') == [[], []]
    assert _search(full, "--filter", '{"nosuchfield": 1}', "--two-stage") == [[], []]


@pytest.mark.parametrize("where, message", [
    ('{"year": {"$foo": 1}}', "--filter.year.$foo: unknown operator '$foo'"),
    ('{"$nand": []}', "--filter.$nand: unknown operator"),
    ('{"year": {"$gte": "2020"}}', "--filter.year.$gte: field 'year' holds numbers; $gte compares it with a string"),
    ('{"channel": {"$in": ["news", 3]}}', "field 'channel' holds strings; $in compares it with a number"),
    ('{"year": [2020]}', "--filter.year: expects a string, a number or a boolean, got a list"),
    ('{"$and": {}}', "--filter.$and: expects a non-empty list of filters"),
    ('{"year": {"$gt": true}}', "booleans are not ordered"),
    ('{"year": ', "--filter: not valid JSON"),
    ('[1]', "--filter: a filter is a JSON object, got a list"),
])
def test_bad_filters_are_usage_errors_naming_the_problem(full, where, message):
    result = run_cli("search", "--index", str(full), *QUERIES, "--filter", where)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ---- the filter language against a plain-Python evaluator --------------------------------------------
def _reference(where: dict, row: dict) -> bool:
    """MongoDB's semantics, written out row by row (the test's own evaluator)."""
    out = True
    for key, cond in where.items():
        if key == "$and":
            out &= all(_reference(c, row) for c in cond)
        elif key == "$or":
            out &= any(_reference(c, row) for c in cond)
        elif key == "$not":
            out &= not _reference(cond, row)
        else:
            out &= _field_ok(row.get(key), cond if isinstance(cond, dict) else {"$eq": cond})
    return out


def _field_ok(value, ops: dict) -> bool:
    def eq(v):
        if isinstance(value, list):
            return isinstance(v, str) and v in value
        return type(value) is type(v) or (isinstance(value, int | float) and not isinstance(value, bool)
                                          and isinstance(v, int | float) and not isinstance(v, bool)) \
            if value is not None and value == v else False

    def order(v, test):
        same = (isinstance(value, str) and isinstance(v, str)) or (
            isinstance(value, int | float) and not isinstance(value, bool) and isinstance(v, int | float))
        return same and test(value, v)

    checks = {"$eq": eq, "$ne": lambda v: not eq(v), "$in": lambda vs: any(map(eq, vs)),
              "$nin": lambda vs: not any(map(eq, vs)), "$exists": lambda b: (value is not None) == b,
              "$gt": lambda v: order(v, lambda a, b: a > b), "$gte": lambda v: order(v, lambda a, b: a >= b),
              "$lt": lambda v: order(v, lambda a, b: a < b), "$lte": lambda v: order(v, lambda a, b: a <= b),
              "$not": lambda inner: not _field_ok(value, inner)}
    return all(checks[op](arg) for op, arg in ops.items())


def _random_filter(rng: random.Random, depth: int = 0) -> dict:
    if depth < 2 and rng.random() < 0.35:
        logic = rng.choice(["$and", "$or", "$not"])
        if logic == "$not":
            return {"$not": _random_filter(rng, depth + 1)}
        return {logic: [_random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    field = rng.choice(["n", "s", "b", "tags", "absent"])
    values = {"n": [0, 1, 2.5, 3, -1], "s": ["a", "b", "c"], "b": [True, False], "tags": ["x", "y", "z"],
              "absent": [1]}[field]
    op = rng.choice(["$eq", "$ne", "$in", "$nin", "$exists", "$not", "$gt", "$lte"] if field in ("n", "s")
                    else ["$eq", "$ne", "$in", "$nin", "$exists", "$not"])
    if op in ("$in", "$nin"):
        return {field: {op: rng.sample(values, rng.randint(0, len(values)))}}
    if op == "$exists":
        return {field: {op: rng.random() < 0.5}}
    if op == "$not":
        return {field: {"$not": {"$eq": rng.choice(values)}}}
    return {field: {op: rng.choice(values)}} if rng.random() < 0.7 or op != "$eq" else {field: rng.choice(values)}


def test_filter_masks_agree_with_a_row_by_row_evaluator():
    rng = random.Random(7)
    rows = []
    for i in range(300):
        meta = {}
        if rng.random() < 0.8:
            meta["n"] = rng.choice([0, 1, 2.5, 3, -1, 7])
        if rng.random() < 0.8:
            meta["s"] = rng.choice(["a", "b", "c", "d"])
        if rng.random() < 0.5:
            meta["b"] = rng.random() < 0.5
        if rng.random() < 0.6:
            meta["tags"] = rng.sample(["x", "y", "z", "w"], rng.randint(0, 3))
        rows.append({"id": f"v{i}", "metadata": meta})
    table = MetadataTable(rows)
    for _ in range(400):
        where = _random_filter(rng)
        want = np.array([_reference(where, r["metadata"]) for r in rows])
        assert (table.mask(parse_filter(where)) == want).all(), where


def test_recorded_fields_and_ids_are_filterable():
    rows = [{"id": "a", "duration_s": 2.0, "fps": 3.0, "metadata": {"k": "x"}}, {"id": "b", "duration_s": 5.0},
            {"id": "c@0-5", "file_id": "c", "start": 0.0, "end": 5.0}]
    table = MetadataTable(rows)
    assert table.mask(parse_filter({"duration_s": {"$lt": 3}})).tolist() == [True, False, False]
    assert table.mask(parse_filter({"id": {"$in": ["b", "c@0-5"]}})).tolist() == [False, True, True]
    assert table.mask(parse_filter({"file_id": "c", "start": {"$gte": 0}})).tolist() == [False, False, True]
    with pytest.raises(FilterError, match="field 'fps' holds numbers"):
        table.mask(parse_filter({"fps": "3"}))
    assert table.mask(parse_filter({})).all() and not table.mask(parse_filter({"$not": {}})).any()
    assert table.mask(parse_filter({"$or": [{}, {"id": "zz"}], "$and": [{}]})).all()


# ---- pages ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tied(fake_bundle, tmp_path_factory):
    """40 rows in 20 identical pairs: every score is tied with another row's."""
    bundle = load_bundle(fake_bundle)
    cfg, rng = bundle.config, np.random.default_rng(3)
    half = {"video": rng.standard_normal((20, cfg.embed_dim), dtype=np.float32),
            "frame_features": rng.standard_normal((20, cfg.max_frames, cfg.embed_dim), dtype=np.float32),
            "patches": rng.standard_normal((20, cfg.num_pixels, cfg.embed_dim), dtype=np.float32),
            "video_mask": np.ones((20, cfg.max_frames), np.float32)}
    root = tmp_path_factory.mktemp("tied") / "index"
    with IndexWriter(root, bundle) as writer:
        writer.add_batch([f"v{i}" for i in range(40)], {k: np.concatenate([v, v]) for k, v in half.items()},
                         [{"id": f"v{i}", "metadata": {"even": i % 2 == 0}} for i in range(40)])
    return root


@pytest.mark.parametrize("mode", [(), ("--two-stage", "--stage1", "flat", "--shortlist", "25")],
                         ids=["exhaustive", "two-stage"])
@pytest.mark.parametrize("where", [None, '{"even": false}'])
def test_page_two_is_ranks_11_to_20_of_a_top_20(tied, mode, where):
    extra = (*mode, *(() if where is None else ("--filter", where)))
    top20 = _search(tied, "--top-k", "20", *extra)
    pages = [_search(tied, "--top-k", "10", "--offset", offset, *extra) for offset in ("0", "10")]
    for q in range(2):
        assert pages[0][q] + pages[1][q] == top20[q]
        assert [r["rank"] for r in pages[1][q]] == list(range(11, 21))
        for a, b in zip(top20[q], top20[q][1:]):  # ties: lower gallery row first
            assert a["score"] > b["score"] or (a["score"] == b["score"]
                                               and int(a["video_id"][1:]) < int(b["video_id"][1:]))
    split = _search(tied, "--top-k", "10", "--offset", "9", *extra)  # the page starts inside a tied pair
    assert split == [top20[q][9:19] for q in range(2)]
    assert _search(tied, "--top-k", "10", "--offset", "40", *extra) == [[], []]


def test_a_negative_offset_is_a_usage_error(tied):
    result = run_cli("search", "--index", str(tied), *QUERIES, "--offset", "-1")
    assert result.returncode == 2 and "--offset" in result.stderr


# ---- time windows --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [(), ("--two-stage", "--stage1", "flat", "--shortlist", "3"),
                                  ("--group-by", "window")],
                         ids=["by-file", "by-file-two-stage", "by-window"])
def test_filtered_windows_equal_an_index_of_the_matching_files(fake_bundle, folder, tmp_path, mode):
    """Windows carry their file's metadata; grouped or not, a filtered search (and a page of it)
    equals the search of an index of the matching files' windows."""
    windows = ("--window", "1")
    full = _index(fake_bundle, _jsonl(tmp_path / "all.jsonl", folder, META), tmp_path / "full", *windows)
    news = [v for v in META if META[v].get("channel") == "news"]
    subset = _index(fake_bundle, _jsonl(tmp_path / "news.jsonl", folder, news), tmp_path / "subset", *windows)
    for page in (("--top-k", "2"), ("--top-k", "2", "--offset", "1")):
        got = _search(full, *page, "--filter", '{"channel": "news"}', *mode)
        _same(got, _search(subset, *page, *mode))
        assert got[0] and all(r["metadata"]["channel"] == "news" for q in got for r in q)
    late = _search(full, "--top-k", "50", "--group-by", "window", "--filter", '{"start": {"$gte": 3}}')
    assert late[0] and all(r["start"] >= 3 for r in late[0])
    assert {r["file_id"] for r in late[0]} == {"clip3", "clip4", "clip5"}  # clip i lasts 1 + i s


def test_search_options_take_a_filter_as_json_data():
    from runtime.search import SearchOptions

    assert SearchOptions(where={"a": {"$in": [1, "x"]}}).where == parse_filter({"a": {"$in": [1, "x"]}})
    assert hash(SearchOptions(where={"a": 1})) == hash(SearchOptions(where=parse_filter({"a": 1})))
    with pytest.raises(FilterError, match=r"filter\.a\.\$x: unknown operator"):
        SearchOptions(where={"a": {"$x": 1}})
