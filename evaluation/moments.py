"""Moment retrieval metrics: does the right moment of the right file come back? numpy only.

A gallery of moments (time windows of files; a whole file is the moment ``[0, duration]``) is
ranked per caption by score, ties broken by the lower row. A caption is a hit at K with
threshold ``thr`` when one of its K best moments is in the caption's file AND overlaps the
caption's true span with temporal IoU >= ``thr`` (the corpus-level protocol of video corpus
moment retrieval: moments of all files compete). ``moment_recall`` reports R@K in percent for
K in ``MOMENT_RECALL_AT`` and every threshold in ``IOU_THRESHOLDS``, keyed ``R1@0.5`` etc.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.metrics import MetricsError

MOMENT_RECALL_AT: tuple[int, ...] = (1, 5)
IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.3)


def temporal_iou(spans: Any, target: Any) -> np.ndarray:
    """IoU in time of ``spans`` [..., 2] (start, end) with ``target`` [..., 2] (broadcast); 0 when
    the union is empty."""
    a, b = np.asarray(spans, dtype=np.float64), np.asarray(target, dtype=np.float64)
    inter = np.clip(np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def moment_key(k: int, threshold: float) -> str:
    """The metric name of R@k at IoU >= threshold, e.g. ``R1@0.5``."""
    return f"R{k}@{threshold:g}"


def moment_recall(scores: Any, row_files: Sequence[Any], row_spans: Any, true_files: Sequence[Any], true_spans: Any,
                  ks: Sequence[int] = MOMENT_RECALL_AT,
                  thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, float]:
    """Moment R@K (percent) of captions x moments ``scores`` [T, R].

    ``row_files`` [R] / ``row_spans`` [R, 2]: each moment's file and (start, end) seconds;
    ``true_files`` [T] / ``true_spans`` [T, 2]: each caption's file and true span.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise MetricsError(f"moment scores must be [captions, moments], got shape {x.shape}")
    n_text, n_rows = x.shape
    row_spans, true_spans = np.asarray(row_spans, dtype=np.float64), np.asarray(true_spans, dtype=np.float64)
    if len(row_files) != n_rows or row_spans.shape != (n_rows, 2):
        raise MetricsError(f"need a file and a (start, end) span for each of the {n_rows} moments")
    if len(true_files) != n_text or true_spans.shape != (n_text, 2):
        raise MetricsError(f"need a file and a (start, end) span for each of the {n_text} captions")
    if not np.isfinite(x).all():
        raise MetricsError("moment scores hold NaN or infinite values")
    if n_text == 0 or n_rows == 0:
        raise MetricsError("moment retrieval needs at least one caption and one moment")
    bad = np.flatnonzero(~(true_spans[:, 1] > true_spans[:, 0]))
    if len(bad):
        raise MetricsError(f"caption {int(bad[0]) + 1}: its true span needs start < end, "
                           f"got {true_spans[bad[0]].tolist()}")
    files = np.asarray([str(f) for f in row_files])
    depth = min(max(ks), n_rows)
    rows = np.arange(n_rows)
    out: dict[str, float] = {}
    hits = {thr: np.zeros((n_text, depth), dtype=bool) for thr in thresholds}
    for t in range(n_text):
        top = np.lexsort((rows, -x[t]))[:depth]
        right_file = files[top] == str(true_files[t])
        iou = temporal_iou(row_spans[top], true_spans[t])
        for thr in thresholds:
            hits[thr][t] = right_file & (iou >= thr)
    for thr in thresholds:
        for k in ks:
            out[moment_key(k, thr)] = float(hits[thr][:, :k].any(axis=1).mean() * 100)
    return out
