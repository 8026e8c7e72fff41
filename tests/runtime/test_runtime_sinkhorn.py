"""runtime.sinkhorn: numpy SK biases against the direct formula and the torch model's functions."""
from __future__ import annotations

import numpy as np
import pytest

from runtime import sinkhorn


def _direct(log_sim: np.ndarray, n_iters: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference formula written out plainly (float64, no blocking)."""
    m = log_sim.max()
    s = np.exp(log_sim - m)
    b = 1 / s.sum(0)
    for _ in range(n_iters):
        a = 1 / (s @ b)
        b = 1 / (a @ s)

    def log_softmax(x):
        return x - np.log(np.exp(x - x.max()).sum()) - x.max()

    return log_softmax(np.log(a)), log_softmax(np.log(b) - m)


@pytest.mark.parametrize("shape", [(7, 5), (40, 13), (3, 30)])
@pytest.mark.parametrize("n_iters", [1, 4])
def test_matches_direct_formula(shape, n_iters):
    rng = np.random.default_rng(sum(shape) + n_iters)
    log_sim = (rng.standard_normal(shape) * 20).astype(np.float32)
    row, col = sinkhorn.sinkhorn_knopp(log_sim, n_iters)
    want_row, want_col = _direct(log_sim.astype(np.float64), n_iters)
    assert row.dtype == np.float32 and col.dtype == np.float32
    np.testing.assert_allclose(row, want_row, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(col, want_col, rtol=1e-5, atol=1e-5)
    # biases are log-probabilities
    assert abs(np.exp(col.astype(np.float64)).sum() - 1) < 1e-5


def test_blocked_streaming_equals_resident(tmp_path):
    rng = np.random.default_rng(1)
    log_sim = (rng.standard_normal((103, 17)) * 10).astype(np.float32)
    path = tmp_path / "bank.npy"
    np.save(path, log_sim)
    memmap = np.load(path, mmap_mode="r")
    resident = sinkhorn.video_bias(log_sim, 4)
    streamed = sinkhorn.video_bias(memmap, 4, block_rows=10)
    np.testing.assert_allclose(streamed, resident, rtol=1e-6, atol=1e-6)


def test_text_bias_is_column_bias_of_transpose():
    rng = np.random.default_rng(2)
    bank = (rng.standard_normal((9, 21)) * 5).astype(np.float32)  # [texts, bank videos]
    np.testing.assert_allclose(sinkhorn.text_bias(bank, 4), _direct(bank.T.astype(np.float64), 4)[1],
                               rtol=1e-5, atol=1e-5)


def test_wide_score_range_stays_finite():
    """Scores ~100 apart underflow float32 exp in the reference; float64 keeps every bias finite."""
    log_sim = np.array([[100.0, -20.0, 5.0], [90.0, -30.0, 0.0]], dtype=np.float32)
    assert np.isfinite(sinkhorn.video_bias(log_sim, 4)).all()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="2-D"):
        sinkhorn.video_bias(np.zeros(3), 4)
    with pytest.raises(ValueError, match="empty"):
        sinkhorn.video_bias(np.zeros((0, 3)), 4)
    bad = np.zeros((4, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        sinkhorn.video_bias(bad, 4)


def test_agrees_with_torch_model_functions():
    torch = pytest.importorskip("torch")
    from ucofia.sinkhorn import sinkhorn_text_bias, sinkhorn_video_bias

    rng = np.random.default_rng(3)
    bank = (rng.standard_normal((30, 12)) * 3).astype(np.float32)
    np.testing.assert_allclose(sinkhorn.video_bias(bank, 4), sinkhorn_video_bias(torch.from_numpy(bank), 4).numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sinkhorn.text_bias(bank, 4), sinkhorn_text_bias(torch.from_numpy(bank), 4).numpy(),
                               rtol=1e-4, atol=1e-5)
