"""Thin torch modules wrapping the model's three exported computations (tuple in, tuple out)."""
from __future__ import annotations

import torch
from torch import nn

from runtime.bundle.contract import SCORER, TEXT_ENCODER, VIDEO_ENCODER
from ucofia.config import LEVELS
from ucofia.model import UCoFiA


class TextEncoderGraph(nn.Module):
    """input_ids [T,L] -> (sentence [T,D], words [T,L,D])."""

    def __init__(self, model: UCoFiA) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.model.encode_text(input_ids)
        return text.sentence, text.words


class VideoEncoderGraph(nn.Module):
    """frames [V,F,3,H,W], video_mask [V,F] -> (video [V,D], frame features [V,F,D], patches [V,P,D]).

    Patch shift, the patch scorer and the hard top-k selection run inside (the model must be in
    eval mode).
    """

    def __init__(self, model: UCoFiA) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        video = self.model.encode_video(frames, video_mask)
        return video.video, video.frames, video.patches


class ScorerGraph(nn.Module):
    """Features of T texts and V videos -> the three level similarities [T,V] (ISA inside)."""

    def __init__(self, model: UCoFiA) -> None:
        super().__init__()
        self.model = model

    def forward(self, sentence: torch.Tensor, words: torch.Tensor, video: torch.Tensor,
                frame_features: torch.Tensor, patches: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sims = self.model.score(sentence, words, video, frame_features, patches)
        return tuple(sims[name] for name in LEVELS)  # type: ignore[return-value]


def graph_modules(model: UCoFiA) -> dict[str, nn.Module]:
    """The wrapper module of each graph key, in eval mode.

    Eval mode matters beyond tracing: torch.onnx.export restores the wrapper's mode afterwards,
    and a wrapper left in training mode would switch the shared model to the perturbed top-k.
    """
    return {TEXT_ENCODER: TextEncoderGraph(model).eval(), VIDEO_ENCODER: VideoEncoderGraph(model).eval(),
            SCORER: ScorerGraph(model).eval()}
