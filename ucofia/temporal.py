"""seqTransf temporal encoder over frame features (CLIP4Clip / reference ``transformerClip``)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# The reference's TF-style LayerNorm epsilon and the additive key-mask value for padded frames.
TEMPORAL_LN_EPS = 1e-12
PADDED_FRAME_LOGIT = -1e6


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TemporalBlock(nn.Module):
    """Pre-LN transformer block; parameter names match the reference checkpoints."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=TEMPORAL_LN_EPS)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=TEMPORAL_LN_EPS)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class TemporalTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.resblocks = nn.ModuleList([TemporalBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """x [V, F, D], video_mask [V, F] (1 = real frame) -> [V, F, D]."""
        frames = x.shape[1]
        key_mask = (1.0 - video_mask.to(x.dtype)).unsqueeze(1) * PADDED_FRAME_LOGIT  # [V,1,F]
        mask = key_mask.expand(-1, frames, -1).repeat_interleave(self.heads, dim=0)
        for block in self.resblocks:
            x = block(x, mask)
        return x


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over axis 1 of x [V,F,D] using mask [V,F]; an all-padded video divides by 1."""
    m = mask.to(x.dtype).unsqueeze(-1)
    count = m.sum(dim=1)
    count = torch.where(count == 0, torch.ones_like(count), count)
    return (x * m).sum(dim=1) / count
