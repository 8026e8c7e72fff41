"""The training objective as a module, so that DDP can wrap it.

``ContrastiveObjective(model)(input_ids, attention_mask, frames, video_mask)`` encodes the local
batch, gathers the features of every rank (all-gather with the local slice keeping its gradient),
scores the full batch on the three levels and returns the symmetric cross-entropy on their mean.
On one process it is exactly ``model(...)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ucofia.model import UCoFiA
from ucofia.training.distributed import all_gather_with_grad


class ContrastiveObjective(nn.Module):
    """Wraps a UCoFiA model; forward returns the (cross-rank) contrastive loss."""

    def __init__(self, model: UCoFiA) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, frames: torch.Tensor,
                video_mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        text = m.encode_text(input_ids, attention_mask)
        video = m.encode_video(frames, video_mask)
        sims = m.score(all_gather_with_grad(text.sentence), all_gather_with_grad(text.words),
                       all_gather_with_grad(video.video), all_gather_with_grad(video.frames),
                       all_gather_with_grad(video.patches))
        return m.contrastive_loss({k: v.float() for k, v in sims.items()})
