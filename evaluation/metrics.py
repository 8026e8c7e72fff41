"""Retrieval metrics (R@1/5/10, median and mean rank), numpy only.

Reproduces the metric conventions of the UCoFiA reference evaluation exactly:

* ``compute_metrics`` (square matrix, caption i <-> video i): every position whose value equals
  the ground-truth value counts as a hit, so a row with ties contributes several ranks; the
  median is ``np.median`` (mean of the two middle ranks for an even count).
* Multi-caption text-to-video (``text_to_video_multi_metrics``): one rank per caption (ties are
  broken by video index, the order torch's argsort gives for up to 16 videos); only captions
  whose ground-truth score is finite count; the median is the *lower* median (torch.median);
  R@k is computed in float32.
* Multi-caption video-to-text: each video's score for a caption group is the maximum over that
  group's captions (``video_to_text_multi_sim``), then ``compute_metrics``.

``retrieval_metrics`` is the public entry point. No torch import here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METRIC_KEYS: tuple[str, ...] = ("R1", "R5", "R10", "MdR", "MnR")
RECALL_AT: tuple[int, ...] = (1, 5, 10)
DIRECTIONS: tuple[str, ...] = ("t2v", "v2t")


class MetricsError(ValueError):
    """The similarity matrix or the ground truth cannot be scored as given."""


# ---------------------------------------------------------------------------------------------
# reference-equivalent building blocks
# ---------------------------------------------------------------------------------------------
def compute_metrics(sim: Any) -> dict[str, Any]:
    """Square-matrix metrics exactly as the reference ``compute_metrics``.

    Row i's ground truth is column i. Returns ``R1, R5, R10`` (percent), ``MR``/``MedianR``
    (``np.median`` of the 1-based ranks), ``MeanR`` and ``cols`` (0-based rank of every hit).
    """
    x = _as_2d(sim, "sim")
    if x.shape[0] != x.shape[1]:
        raise MetricsError(
            f"compute_metrics needs a square matrix (caption i <-> video i), got shape {x.shape}; "
            "for several captions per video pass video_of_text to retrieval_metrics")
    neg = -x
    sorted_neg = np.sort(neg, axis=1)
    ranks = np.nonzero((sorted_neg - np.diag(neg)[:, None]) == 0)[1]
    if ranks.size == 0:
        raise MetricsError("no row of the similarity matrix has a comparable ground-truth score "
                           "(all diagonal entries are NaN or infinite)")
    n = len(ranks)
    out: dict[str, Any] = {f"R{k}": float(np.sum(ranks < k)) * 100 / n for k in RECALL_AT}
    out["MR"] = np.median(ranks) + 1
    out["MedianR"] = out["MR"]
    out["MeanR"] = np.mean(ranks) + 1
    out["cols"] = [int(i) for i in ranks]
    return out


def multi_caption_tensor(sim: Any, video_of_text: Sequence[int]) -> np.ndarray:
    """[T,V] similarities -> [V, max_captions, V], caption rows grouped per video, -inf padded.

    This is the layout the reference builds before its multi-caption metrics; captions of a
    video keep their order.
    """
    x = _as_2d(sim, "sim")
    groups = _caption_groups(video_of_text, x.shape[0], x.shape[1])
    width = max((len(g) for g in groups), default=0)
    out = np.full((x.shape[1], max(width, 1), x.shape[1]), -np.inf, dtype=np.result_type(x, np.float32))
    for v, rows in enumerate(groups):
        if rows:
            out[v, : len(rows)] = x[rows]
    return out


def text_to_video_multi_metrics(sim_tensor: Any) -> dict[str, float]:
    """Text-to-video metrics of a [V, C, V] padded tensor, as ``tensor_text_to_video_metrics``.

    Entry [v, c, w] is the score of caption c of video v against video w. Returns ``R1, R5,
    R10`` (float32 arithmetic), ``MedianR``/``MR`` (lower median), ``MeanR`` and ``Std_Rank``.
    """
    t = np.asarray(sim_tensor)
    if t.ndim != 3 or t.shape[0] != t.shape[2]:
        raise MetricsError(f"expected a [V, captions, V] tensor, got shape {t.shape}")
    v_idx = np.arange(t.shape[0])
    gt = t[v_idx, :, v_idx]  # [V, C]: caption c of video v against video v
    valid = np.isfinite(gt)
    rows = t[valid]  # [N, V] score rows of the valid captions
    gt_col = np.broadcast_to(v_idx[:, None], gt.shape)[valid]
    ranks = _stable_descending_rank(rows, gt_col)
    return _rank_summary(ranks)


def video_to_text_multi_sim(sim_tensor: Any) -> np.ndarray:
    """[V, C, V] -> [V, V]: entry [w, v] = max over video v's captions of their score with video w
    (NaN counted as -inf), as ``tensor_video_to_text_sim``."""
    t = np.array(sim_tensor, copy=True)
    if t.ndim != 3 or t.shape[0] != t.shape[2]:
        raise MetricsError(f"expected a [V, captions, V] tensor, got shape {t.shape}")
    t[np.isnan(t)] = -np.inf
    return t.max(axis=1).T


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def retrieval_metrics(sim: np.ndarray, video_of_text: Sequence[int] | None = None,
                      direction: str = "t2v") -> dict[str, float]:
    """R@1, R@5, R@10, median rank and mean rank of a text x video similarity matrix.

    Args:
        sim: [T, V] scores, rows are captions, columns videos (higher = more similar).
        video_of_text: ground-truth video index of every caption row. ``None`` means one
            caption per video with caption i <-> video i (``sim`` must be square; reference
            ``compute_metrics``, ties all counted). Given, the multi-caption protocol applies.
        direction: ``"t2v"`` (rank videos for each caption) or ``"v2t"`` (rank caption groups
            for each video; a group's score is its best caption).

    Returns:
        ``{"R1", "R5", "R10", "MdR", "MnR"}`` as floats (recalls in percent, ranks 1-based).

    Raises:
        MetricsError (a ValueError) on a bad shape, NaN scores, an unknown direction or an
        inconsistent ``video_of_text``.
    """
    if direction not in DIRECTIONS:
        raise MetricsError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    x = _as_2d(sim, "sim")
    if np.isnan(x).any():
        raise MetricsError(f"the similarity matrix contains {int(np.isnan(x).sum())} NaN value(s); "
                           "fix the scores before computing metrics")
    if video_of_text is None:
        if x.shape[0] != x.shape[1]:
            raise MetricsError(
                f"the similarity matrix is {x.shape[0]} x {x.shape[1]} (texts x videos) but no "
                "video_of_text was given: a non-square matrix needs video_of_text, the index of "
                "the ground-truth video of every caption row")
        ref = compute_metrics(x if direction == "t2v" else x.T)
        return _public(ref["R1"], ref["R5"], ref["R10"], ref["MR"], ref["MeanR"])
    groups = _caption_groups(video_of_text, x.shape[0], x.shape[1])
    if direction == "t2v":
        gt = np.asarray(video_of_text, dtype=np.int64)
        gt_scores = x[np.arange(x.shape[0]), gt]
        keep = np.isfinite(gt_scores)  # the reference drops captions with an infinite score
        if not keep.any():
            raise MetricsError("no caption has a finite ground-truth score")
        ref = _rank_summary(_stable_descending_rank(x[keep], gt[keep]))
        return _public(ref["R1"], ref["R5"], ref["R10"], ref["MedianR"], ref["MeanR"])
    empty = [v for v, g in enumerate(groups) if not g]
    if empty:
        raise MetricsError(
            f"video-to-text needs at least one caption per video; video(s) {empty[:10]} have none "
            f"in video_of_text ({len(empty)} in all)")
    group_sim = np.stack([x[rows].max(axis=0) for rows in groups], axis=0)  # [V groups, V]
    ref = compute_metrics(group_sim.T)
    return _public(ref["R1"], ref["R5"], ref["R10"], ref["MR"], ref["MeanR"])


def format_metrics_table(results: Mapping[str, Mapping[str, float]], title: str | None = None,
                         digits: int = 1) -> str:
    """Plain-text table: one row per entry of ``results`` (e.g. ``{"t2v": {...}, "v2t": {...}}``)."""
    headers = ("", "R@1", "R@5", "R@10", "MdR", "MnR")
    rows = [[str(name)] + [f"{float(m[k]):.{digits}f}" for k in METRIC_KEYS] for name, m in results.items()]
    widths = [max(len(r[i]) for r in [list(headers)] + rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _public(r1: float, r5: float, r10: float, mdr: float, mnr: float) -> dict[str, float]:
    return {"R1": float(r1), "R5": float(r5), "R10": float(r10), "MdR": float(mdr), "MnR": float(mnr)}


def _as_2d(sim: Any, name: str) -> np.ndarray:
    x = np.asarray(sim)
    if x.ndim != 2:
        raise MetricsError(f"{name} must be a 2-D [texts, videos] matrix, got shape {x.shape}")
    if x.size == 0:
        raise MetricsError(f"{name} is empty (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise MetricsError(f"{name} must be numeric, got dtype {x.dtype}")
    return x


def _caption_groups(video_of_text: Sequence[int], num_texts: int, num_videos: int) -> list[list[int]]:
    gt = np.asarray(video_of_text)
    if gt.ndim != 1 or len(gt) != num_texts:
        raise MetricsError(
            f"video_of_text must list one video index per caption row: got {gt.shape} for "
            f"{num_texts} rows")
    if len(gt) and not np.issubdtype(gt.dtype, np.integer):
        raise MetricsError(f"video_of_text must hold integers, got dtype {gt.dtype}")
    bad = np.nonzero((gt < 0) | (gt >= num_videos))[0]
    if bad.size:
        raise MetricsError(
            f"video_of_text[{int(bad[0])}] = {int(gt[bad[0]])} is not a column of the "
            f"{num_videos}-video matrix")
    groups: list[list[int]] = [[] for _ in range(num_videos)]
    for row, v in enumerate(gt.tolist()):
        groups[v].append(row)
    return groups


def _stable_descending_rank(rows: np.ndarray, gt_col: np.ndarray) -> np.ndarray:
    """0-based position of column gt_col[i] in row i sorted by descending score, ties broken
    by column index (NaN sorts first, as in torch)."""
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(rows.shape[0])
    g = rows[idx, gt_col][:, None]
    cols = np.arange(rows.shape[1])[None, :]
    ahead = (rows > g) | np.isnan(rows) | ((rows == g) & (cols < gt_col[:, None]))
    return ahead.sum(axis=1).astype(np.int64)


def _rank_summary(ranks: np.ndarray) -> dict[str, float]:
    n = len(ranks)
    if n == 0:
        raise MetricsError("no caption has a finite ground-truth score")
    out = {f"R{k}": float(np.float32(np.sum(ranks < k) * 100) / np.float32(n)) for k in RECALL_AT}
    one_based = ranks + 1
    out["MedianR"] = float(np.sort(one_based)[(n - 1) // 2])  # lower median, as torch.median
    out["MeanR"] = float(np.mean(one_based))
    out["Std_Rank"] = float(np.std(one_based))
    out["MR"] = out["MedianR"]
    return out
