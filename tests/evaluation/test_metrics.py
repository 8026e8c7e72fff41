"""evaluation.metrics against the reference metrics.py outputs (tests/fixtures/reference/metrics.*)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from data_paths import REPO_ROOT, TEST_FIXTURES

from evaluation import MetricsError, format_metrics_table, retrieval_metrics
from evaluation.metrics import (
    compute_metrics,
    multi_caption_tensor,
    text_to_video_multi_metrics,
    video_to_text_multi_sim,
)

FIXTURES = TEST_FIXTURES / "reference"
REPO = REPO_ROOT
PUBLIC_FROM_REF = {"R1": "R1", "R5": "R5", "R10": "R10", "MdR": "MR", "MnR": "MeanR"}


def _load():
    doc = json.loads((FIXTURES / "metrics.json").read_text())
    arrays = np.load(FIXTURES / "metrics.npz")
    return doc["cases"], arrays


CASES, ARRAYS = _load()
SQUARE = [c for c in CASES if c["kind"] == "compute_metrics"]
MULTI = [c for c in CASES if c["kind"] == "multi_caption"]


def _video_of_text(counts):
    return np.repeat(np.arange(len(counts)), counts)


def _public(ref: dict) -> dict:
    return {k: float(ref[v]) for k, v in PUBLIC_FROM_REF.items()}


# ---- reference parity ------------------------------------------------------------------------
@pytest.mark.parametrize("case", SQUARE, ids=[c["name"] for c in SQUARE])
def test_compute_metrics_matches_reference(case):
    sim = ARRAYS[f"{case['name']}__sim"]
    for direction, matrix in (("t2v", sim), ("v2t", sim.T)):
        ours = compute_metrics(matrix)
        ref = case[direction]
        assert ours["cols"] == ref["cols"]
        for key in ("R1", "R5", "R10", "MR", "MedianR", "MeanR"):
            assert float(ours[key]) == ref[key], (direction, key)
        assert retrieval_metrics(sim, direction=direction) == _public(ref)


@pytest.mark.parametrize("case", MULTI, ids=[c["name"] for c in MULTI])
def test_multi_caption_matches_reference(case):
    name = case["name"]
    sim = ARRAYS[f"{name}__sim"]
    counts = ARRAYS[f"{name}__counts"].tolist()
    assert counts == case["captions_per_video"]
    vot = _video_of_text(counts)
    tensor = multi_caption_tensor(sim, vot)

    t2v = text_to_video_multi_metrics(tensor)
    for key in ("R1", "R5", "R10", "MR", "MedianR", "MeanR"):
        assert t2v[key] == case["t2v"][key], key
    assert t2v["Std_Rank"] == pytest.approx(case["t2v"]["Std_Rank"], rel=1e-12)

    v2t_sim = video_to_text_multi_sim(tensor)
    np.testing.assert_array_equal(v2t_sim, ARRAYS[f"{name}__v2t_sim"])
    v2t = compute_metrics(v2t_sim)
    assert v2t["cols"] == case["v2t"]["cols"]

    assert retrieval_metrics(sim, vot, "t2v") == _public(case["t2v"])
    assert retrieval_metrics(sim, vot, "v2t") == _public(case["v2t"])


@pytest.mark.parametrize("case", MULTI, ids=[c["name"] for c in MULTI])
def test_multi_caption_row_order_does_not_matter(case):
    sim = ARRAYS[f"{case['name']}__sim"]
    vot = _video_of_text(case["captions_per_video"])
    perm = np.random.default_rng(0).permutation(len(vot))
    for direction in ("t2v", "v2t"):
        assert retrieval_metrics(sim[perm], vot[perm], direction) == _public(case[direction])


# ---- conventions ------------------------------------------------------------------------------
def test_square_ties_count_every_tied_position():
    sim = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 3.0]])
    m = compute_metrics(sim)
    # row 0: gt ties with column 1 -> ranks 0 and 1; row 1: ranks 0,1; row 2: rank 0
    assert m["cols"] == [0, 1, 0, 1, 0]
    assert m["R1"] == pytest.approx(60.0)
    assert retrieval_metrics(sim)["MdR"] == 1.0


def test_square_median_is_numpy_median_multi_caption_is_lower_median():
    # every row scores video 0 best, so caption i's ground truth (video i) ranks i + 1: ranks 1..4
    sim = np.array([[4.0, 3, 2, 1], [4, 3, 2, 1], [4, 3, 2, 1], [4, 3, 2, 1]])
    assert retrieval_metrics(sim)["MdR"] == 2.5  # np.median
    assert retrieval_metrics(sim, [0, 1, 2, 3])["MdR"] == 2.0  # torch.median (lower)


def test_multi_caption_recall_is_float32():
    sim = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    r = retrieval_metrics(sim, [0, 0, 1])  # ranks 1, 2, 2
    assert r["R1"] == float(np.float32(100) / np.float32(3))
    assert r["R1"] != 100 / 3
    assert r["R5"] == 100.0 and r["MdR"] == 2.0 and r["MnR"] == pytest.approx(5 / 3)


def test_multi_caption_ties_broken_by_video_index():
    # every caption ties with every video: the lower video index ranks first (torch's argsort
    # order), so captions of video 0 rank 1 and the caption of video 2 ranks 3; the other
    # direction would give ranks 3, 3, 2, 1
    sim = np.array([[1.0, 1.0, 1.0]] * 4)
    r = retrieval_metrics(sim, [0, 0, 1, 2])  # ranks 1, 1, 2, 3
    assert r["R1"] == 50.0
    assert r["MdR"] == 1.0 and r["MnR"] == 1.75


def test_captions_with_non_finite_ground_truth_score_are_dropped():
    # caption 1's ground truth (video 0) scores -inf and caption 3's +inf: neither counts (the
    # reference ranks only captions with a finite ground-truth score); the others rank 1 and 2
    sim = np.array([[2.0, 1.0, 0.0], [-np.inf, 3.0, 0.0], [0.0, 1.0, 5.0], [np.inf, 0.0, 0.0]])
    r = retrieval_metrics(sim, [0, 0, 1, 0])
    assert r == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.5}
    with pytest.raises(MetricsError, match="no caption has a finite ground-truth score"):
        retrieval_metrics(np.array([[-np.inf, 0.0], [0.0, np.inf]]), [0, 1])


def test_v2t_uses_best_caption_of_each_video():
    sim = np.array([[0.1, 0.9], [0.8, 0.0], [0.0, 0.7]])  # video 0: captions 0, 1
    r = retrieval_metrics(sim, [0, 0, 1], "v2t")
    # group scores (max over captions): group0 = [0.8, 0.9], group1 = [0.0, 0.7] (per video).
    # video 0: own group 0.8 > 0.0 -> rank 1; video 1: own group 0.7 < 0.9 -> rank 2
    assert r == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.5, "MnR": 1.5}
    # a case where the max wins but the mean over captions would not ((0.9 - 5) / 2 < 0)
    sim2 = np.array([[0.9, 0.0], [-5.0, 0.0], [0.0, 0.5]])
    assert retrieval_metrics(sim2, [0, 0, 1], "v2t")["R1"] == 100.0


def test_identity_and_perfect_scores():
    sim = np.eye(6, dtype=np.float32)
    for direction in ("t2v", "v2t"):
        assert retrieval_metrics(sim, direction=direction) == {
            "R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0}
    assert retrieval_metrics(np.ones((1, 1))) == {"R1": 100.0, "R5": 100.0, "R10": 100.0,
                                                  "MdR": 1.0, "MnR": 1.0}


def test_t2v_allows_videos_without_captions_and_infinite_scores():
    sim = np.array([[2.0, -np.inf, 1.0], [-np.inf, 3.0, 5.0]])
    r = retrieval_metrics(sim, [0, 1], "t2v")  # ranks 1, 2; video 2 has no caption
    assert r == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.5}


def test_returned_values_are_plain_floats():
    r = retrieval_metrics(np.eye(3))
    assert list(r) == ["R1", "R5", "R10", "MdR", "MnR"]
    assert all(type(v) is float for v in r.values())


# ---- errors -----------------------------------------------------------------------------------
def test_non_square_without_video_of_text_is_a_clear_error():
    with pytest.raises(ValueError, match="video_of_text"):
        retrieval_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="square"):
        compute_metrics(np.zeros((4, 3)))


@pytest.mark.parametrize("bad, match", [
    ([0, 1], "one video index per caption"),
    ([0, 1, 5], "not a column"),
    ([0, -1, 1], "not a column"),
    ([0.0, 1.0, 1.0], "integers"),
])
def test_bad_video_of_text(bad, match):
    with pytest.raises(MetricsError, match=match):
        retrieval_metrics(np.zeros((3, 2)), bad)


def test_other_errors():
    with pytest.raises(ValueError, match="direction"):
        retrieval_metrics(np.eye(2), direction="x2y")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 0)))
    with pytest.raises(ValueError, match="at least one caption per video"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1], "v2t")


def test_format_metrics_table():
    table = format_metrics_table({"t2v": retrieval_metrics(np.eye(3)),
                                  "v2t": {"R1": 12.345, "R5": 50, "R10": 70, "MdR": 3, "MnR": 7.25}},
                                 title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo"
    assert lines[1].split() == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    assert lines[3].split() == ["t2v", "100.0", "100.0", "100.0", "1.0", "1.0"]
    assert lines[4].split() == ["v2t", "12.3", "50.0", "70.0", "3.0", "7.2"]


def test_evaluation_import_is_torch_free():
    code = ("import sys; from evaluation import retrieval_metrics; "
            "assert 'torch' not in sys.modules, 'evaluation imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
