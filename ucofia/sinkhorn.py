"""Sinkhorn-Knopp (SK) biases and level fusion, as the reference evaluation applies them."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ucofia.config import LEVELS


def _column_log_bias(log_sim: torch.Tensor, n_iters: int) -> torch.Tensor:
    m = log_sim.max()
    s = torch.exp(log_sim - m)
    b = 1.0 / s.sum(dim=0)
    for _ in range(n_iters):
        a = 1.0 / (s @ b)
        b = 1.0 / (a @ s)
    return torch.log_softmax(torch.log(b) - m, dim=-1)


def sinkhorn_video_bias(bank_sims: torch.Tensor, n_iters: int = 4) -> torch.Tensor:
    """Per-video bias [V] for text-to-video from a bank of query similarities [B, V]."""
    if bank_sims.dim() != 2:
        raise ValueError(f"bank similarities must be a 2-D [bank, videos] matrix, got {tuple(bank_sims.shape)}")
    if not torch.isfinite(bank_sims).all():
        raise ValueError("bank similarities contain NaN or inf; check the features that produced them")
    return _column_log_bias(bank_sims, n_iters)


def sinkhorn_text_bias(bank_sims: torch.Tensor, n_iters: int = 4) -> torch.Tensor:
    """Per-text bias [T] for video-to-text from text x bank-video similarities [T, B]."""
    return sinkhorn_video_bias(bank_sims.t(), n_iters)


def fuse(sims: Mapping[str, torch.Tensor], biases: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean of the three level matrices [T,V], each plus its per-video bias when given."""
    missing = [k for k in LEVELS if k not in sims]
    if missing:
        raise KeyError(f"missing similarity levels: {missing}")
    total = None
    for level in LEVELS:
        value = sims[level]
        if biases is not None:
            value = value + biases[level].unsqueeze(0)
        total = value if total is None else total + value
    return total / len(LEVELS)
