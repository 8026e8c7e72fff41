"""Salient patch selection: the patch scorer (both reference variants) and top-k selection.

Inference uses a deterministic hard top-k (indices sorted by patch position); training may use
the perturbed top-k estimator (Berthet et al.), whose forward averages one-hot top-k samples of
noisy scores and whose backward is the perturbation gradient estimate.
"""
from __future__ import annotations

import torch
from torch import nn

from ucofia.config import ScorerVariant

PERTURBED_SAMPLES = 500
PERTURBED_SIGMA = 0.05
# Patch scores are rounded to this grid before the hard top-k, so that ties (a trained scorer's
# tanh saturates at 1.0) are the same ties in every backend: PyTorch may give exactly 1.0 where
# onnxruntime gives 0.99999994, which would otherwise select different patches. The reference
# fixtures' smallest 3rd-vs-4th score margin is 1.2e-3, five grid steps.
TOPK_SCORE_QUANTUM = 2.0 ** -12


class PatchScorer(nn.Module):
    """Scores every token of every frame with tanh(MLP(...)).

    eval variant: LN over [token; frame CLS] (2E), context = sum of the video's CLS codes.
    train variant: LN over the token (E), context = the frame's own CLS code.
    Sub-module names follow the reference so its checkpoints load unchanged.
    """

    def __init__(self, embed_dim: int, variant: ScorerVariant) -> None:
        super().__init__()
        self.variant = variant
        if variant == "eval":
            in_dim, hidden = 2 * embed_dim, embed_dim
        else:
            in_dim, hidden = embed_dim, embed_dim // 2
        self.in_conv = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden, bias=False), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(2 * hidden, hidden, bias=False), nn.GELU(), nn.Linear(hidden, 1, bias=False), nn.Tanh()
        )

    def forward(self, tokens: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        """tokens [N, L, E] (N = videos * frames) -> scores [N, L]."""
        if self.variant == "eval":
            cls = tokens[:, :1].expand_as(tokens)
            z = self.in_conv(torch.cat([tokens, cls], dim=-1))
            n, length, hidden = z.shape
            video_ctx = z[:, 0].reshape(n // frames_per_video, frames_per_video, hidden).sum(dim=1)
            ctx = video_ctx.repeat_interleave(frames_per_video, dim=0).unsqueeze(1).expand(n, length, hidden)
        else:
            z = self.in_conv(tokens)
            ctx = z[:, :1].expand_as(z)
        return self.out_conv(torch.cat([z, ctx], dim=-1)).squeeze(-1)


def hard_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, k] of the k highest scores, sorted ascending by position.

    Scores are first rounded to ``TOPK_SCORE_QUANTUM``. Ties go to the lower position, in eager
    PyTorch and in the exported graph alike: ONNX TopK specifies lower-index-first for equal
    values, while ``torch.topk`` leaves tie order unspecified, so eager mode uses a stable sort.
    """
    keys = torch.round(scores / TOPK_SCORE_QUANTUM)
    if torch.onnx.is_in_onnx_export():
        top = torch.topk(keys, k, dim=-1).indices
    else:
        top = torch.sort(keys, dim=-1, descending=True, stable=True).indices[..., :k]
    # Ascending sort of the k distinct indices as a second top-k with a constant k: a plain sort
    # exports to ONNX as TopK with a shape-derived K, and TensorRT's ONNX parser wants K constant.
    return torch.topk(top, k, dim=-1, largest=False, sorted=True).values


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, samples: int, sigma: float) -> torch.Tensor:  # type: ignore[override]
        n, d = scores.shape
        noise = torch.randn(n, samples, d, dtype=scores.dtype, device=scores.device)
        idx = torch.topk(scores.unsqueeze(1) + sigma * noise, k, dim=-1).indices
        idx = torch.sort(idx, dim=-1).values
        one_hot = torch.nn.functional.one_hot(idx, d).to(scores.dtype)  # [n, S, k, d]
        ctx.save_for_backward(one_hot, noise)
        ctx.sigma = sigma
        return one_hot.mean(dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        one_hot, noise = ctx.saved_tensors
        jac = torch.einsum("nskd,nsd->nkd", one_hot, noise) / (one_hot.shape[1] * ctx.sigma)
        return torch.einsum("nkd,nkd->nd", grad, jac), None, None, None


def perturbed_topk_indicators(scores: torch.Tensor, k: int, samples: int = PERTURBED_SAMPLES,
                              sigma: float = PERTURBED_SIGMA) -> torch.Tensor:
    """Soft one-hot indicators [N, k, L] of a perturbed top-k (differentiable estimator)."""
    return _PerturbedTopK.apply(scores, k, samples, sigma)


class VisualTokenSelector(nn.Module):
    """Keeps, per frame, the CLS token and the top-k patch tokens by scorer score."""

    def __init__(self, embed_dim: int, top_k: int, variant: ScorerVariant) -> None:
        super().__init__()
        self.top_k = top_k
        self.score_predictor = PatchScorer(embed_dim, variant)

    def forward(self, tokens: torch.Tensor, frames_per_video: int,
                perturbed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [N, L, E] -> (selected [N, k+1, E], patch indices [N, k] among patches, CLS excluded)."""
        scores = self.score_predictor(tokens, frames_per_video)[:, 1:]
        patches = tokens[:, 1:]
        indices = hard_topk_indices(scores, self.top_k)
        if perturbed:
            indicators = perturbed_topk_indicators(scores, self.top_k)
            chosen = torch.einsum("nkl,nld->nkd", indicators, patches)
        else:
            gather = indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
            chosen = torch.gather(patches, 1, gather)
        return torch.cat([tokens[:, :1], chosen], dim=1), indices
