"""Moment retrieval metrics (evaluation.moments): temporal IoU and R@K at IoU thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import MetricsError
from evaluation.moments import moment_key, moment_recall, temporal_iou


def test_temporal_iou():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 10), (10, 20)) == 0.0  # touching spans do not overlap
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)
    assert temporal_iou((0, 5), (0, 10)) == 0.5  # exactly the 0.5 threshold
    np.testing.assert_allclose(temporal_iou([[0, 10], [20, 30], [3, 3]], (0, 10)), [1.0, 0.0, 0.0])
    assert temporal_iou((0, 0.5), (0.25, 0.75)) == pytest.approx(1 / 3)  # sub-second spans (union 0.75)
    with np.errstate(all="raise"):  # an empty union is 0, without dividing by it
        assert temporal_iou((3, 3), (3, 3)) == 0.0


def test_moment_recall_needs_the_right_file_and_enough_overlap():
    # moments: (file, span); captions: (file, true span)
    row_files = ["a", "a", "b", "b"]
    row_spans = [(0, 10), (10, 20), (0, 10), (10, 20)]
    scores = np.array([
        [0.9, 0.1, 0.8, 0.2],   # a [1, 9]: a@0-10 first, IoU 0.8: hit at 1
        [0.1, 0.2, 0.9, 0.3],   # a [12, 18]: b ranks first (wrong file), a@10-20 is 3rd: hit at 5 only
        [0.5, 0.4, 0.3, 0.6],   # b [10, 14]: b@10-20 first but IoU 0.4: hit only at 0.3
        [0.2, 0.2, 0.2, 0.1],   # b [0, 10]: ties -> lower row first: a@0-10, a@10-20, b@0-10: hit at 5
    ])
    truth_files = ["a", "a", "b", "b"]
    truth = [(1, 9), (12, 18), (10, 14), (0, 10)]
    got = moment_recall(scores, row_files, row_spans, truth_files, truth)
    assert got == {"R1@0.5": 25.0, "R5@0.5": 75.0, "R1@0.3": 50.0, "R5@0.3": 100.0}
    assert moment_key(5, 0.3) == "R5@0.3"


def test_moment_recall_k_beyond_the_gallery_and_bad_input():
    got = moment_recall(np.array([[0.1, 0.2]]), ["a", "b"], [(0, 1), (0, 1)], ["a"], [(0, 1)], ks=(1, 10))
    assert got["R1@0.5"] == 0.0 and got["R10@0.5"] == 100.0
    with pytest.raises(MetricsError, match="NaN"):
        moment_recall(np.array([[np.nan]]), ["a"], [(0, 1)], ["a"], [(0, 1)])
    with pytest.raises(MetricsError, match="span for each of the 2 moments"):
        moment_recall(np.zeros((1, 2)), ["a"], [(0, 1)], ["a"], [(0, 1)])
    with pytest.raises(MetricsError, match="caption 1: its true span needs start < end"):
        moment_recall(np.zeros((1, 1)), ["a"], [(0, 1)], ["a"], [(3, 3)])


def test_a_moment_at_exactly_the_iou_threshold_is_a_hit():
    """IoU >= threshold: spans whose IoU with the top moment [0, 10) is exactly 0.5 or 0.3 (5/10,
    3/10 and 10/20 are exact in binary) are hits at that threshold; 2.9/10 is not."""
    assert temporal_iou((0, 10), (0, 3)) == 0.3 and temporal_iou((0, 10), (0, 20)) == 0.5
    row_files, row_spans = ["a", "a", "b"], [(0, 10), (10, 20), (0, 10)]
    scores = np.tile([1.0, 0.5, 0.0], (4, 1))  # every caption ranks a@0-10, a@10-20, b@0-10
    truth = [(0, 5), (0, 3), (0, 2.9), (0, 20)]  # IoU with a@0-10: 0.5, 0.3, 0.29, 0.5; with a@10-20: 0, 0, 0, 0.5
    got = moment_recall(scores, row_files, row_spans, ["a"] * 4, truth)
    assert got == {"R1@0.5": 50.0, "R5@0.5": 50.0, "R1@0.3": 75.0, "R5@0.3": 75.0}
    at_a_quarter = moment_recall(scores, row_files, row_spans, ["a"] * 4, [(0, 2.5)] * 4, ks=(1,), thresholds=(0.25,))
    assert at_a_quarter == {"R1@0.25": 100.0}


def test_moment_recall_refuses_inputs_of_the_wrong_shape():
    files, spans = ["a", "b"], [(0, 1), (1, 2)]
    with pytest.raises(MetricsError, match=r"must be \[captions, moments\], got shape \(2,\)"):
        moment_recall(np.zeros(2), files, spans, ["a"], [(0, 1)])
    with pytest.raises(MetricsError, match="each of the 2 moments"):  # a file missing, the spans right
        moment_recall(np.zeros((1, 2)), ["a"], spans, ["a"], [(0, 1)])
    with pytest.raises(MetricsError, match="each of the 2 moments"):  # the files right, a span missing
        moment_recall(np.zeros((1, 2)), files, [(0, 1)], ["a"], [(0, 1)])
    with pytest.raises(MetricsError, match="each of the 1 captions"):
        moment_recall(np.zeros((1, 2)), files, spans, ["a", "b"], [(0, 1)])
    with pytest.raises(MetricsError, match="each of the 1 captions"):
        moment_recall(np.zeros((1, 2)), files, spans, ["a"], [(0, 1), (1, 2)])
    with pytest.raises(MetricsError, match="at least one caption and one moment"):
        moment_recall(np.zeros((0, 2)), files, spans, [], np.zeros((0, 2)))
    with pytest.raises(MetricsError, match="at least one caption and one moment"):
        moment_recall(np.zeros((1, 0)), [], np.zeros((0, 2)), ["a"], [(0, 1)])
