"""Sinkhorn-Knopp (SK) normalisation biases in numpy, as the reference evaluation computes them.

For a log-similarity matrix ``L`` [rows, cols] the reference does::

    m = max(L); S = exp(L - m); b = 1 / S.sum(0)
    n times: a = 1 / (S b); b = 1 / (a S)
    row_bias = log_softmax(log a); col_bias = log_softmax(log b - m)

Text-to-video uses the column bias of a [bank captions, gallery videos] matrix (eval_t2v);
video-to-text uses the column bias of the transposed [texts, bank videos] matrix (eval_v2t).

Work is done in float64 (the reference's float32 underflows ``exp`` for scores far below the
maximum, which turns whole columns into inf) and streamed over row blocks, so a bank matrix may be
a ``np.memmap`` larger than memory. Results are float32.
"""
from __future__ import annotations

import numpy as np

# Rows per block when streaming S; bounds the float64 temporary to block_rows * cols * 8 bytes.
DEFAULT_BLOCK_ROWS = 4096


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def _check(log_sim: np.ndarray, what: str) -> None:
    if log_sim.ndim != 2:
        raise ValueError(f"{what} must be a 2-D matrix, got shape {tuple(log_sim.shape)}")
    if 0 in log_sim.shape:
        raise ValueError(f"{what} is empty (shape {tuple(log_sim.shape)}); the bank needs at least one row")


def sinkhorn_knopp(log_sim: np.ndarray, n_iters: int,
                   block_rows: int = DEFAULT_BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(row_bias [R], col_bias [C]) of ``log_sim`` [R, C] after ``n_iters`` SK iterations.

    ``log_sim`` may be any array-like sliceable by rows (a memmap streams block by block).
    Raises ValueError on non-finite input, naming the first offending row.
    """
    _check(log_sim, "similarity matrix")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    rows, cols = log_sim.shape
    blocks = [(i, min(i + block_rows, rows)) for i in range(0, rows, block_rows)]

    def s_block(lo: int, hi: int) -> np.ndarray:
        return np.exp(np.asarray(log_sim[lo:hi], dtype=np.float64) - m)

    m = -np.inf
    for lo, hi in blocks:
        block = np.asarray(log_sim[lo:hi])
        if not np.isfinite(block).all():
            bad = lo + int(np.argwhere(~np.isfinite(block))[0][0])
            raise ValueError(f"similarity matrix has NaN/inf in row {bad}; check the features that produced it")
        m = max(m, float(block.max()))
    resident = len(blocks) == 1
    s_full = s_block(0, rows) if resident else None

    col_sum = np.zeros(cols)
    for lo, hi in blocks:
        col_sum += (s_full if resident else s_block(lo, hi)).sum(axis=0)
    b = 1.0 / col_sum
    a = np.empty(rows)
    for _ in range(n_iters):
        # a depends only on the previous b, so one pass per iteration computes a and the new b.
        acc = np.zeros(cols)
        for lo, hi in blocks:
            s = s_full if resident else s_block(lo, hi)
            a[lo:hi] = 1.0 / (s @ b)
            acc += a[lo:hi] @ s
        b = 1.0 / acc
    with np.errstate(divide="ignore"):
        row_bias = _log_softmax(np.log(a))
        col_bias = _log_softmax(np.log(b) - m)
    return row_bias.astype(np.float32), col_bias.astype(np.float32)


def video_bias(bank_sims: np.ndarray, n_iters: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Per-video bias [V] for text-to-video from bank-caption similarities [B, V] (eval_t2v)."""
    _check(bank_sims, "bank similarities [bank captions, videos]")
    return sinkhorn_knopp(bank_sims, n_iters, block_rows)[1]


def text_bias(bank_sims: np.ndarray, n_iters: int) -> np.ndarray:
    """Per-text bias [T] for video-to-text from text x bank-video similarities [T, B] (eval_v2t).

    The reference transposes the matrix and takes the column bias; the transposed matrix is
    materialised here (texts x bank videos fits in memory in every evaluation setting).
    """
    _check(bank_sims, "bank similarities [texts, bank videos]")
    return sinkhorn_knopp(np.ascontiguousarray(np.asarray(bank_sims).T), n_iters)[1]
