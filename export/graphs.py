"""Thin torch modules wrapping the model's three exported computations (tuple in, tuple out)."""
from __future__ import annotations

import torch
from torch import nn

from export.specs import LEVEL_OUTPUTS, SCORER, SPLIT_SCORER, SPLIT_TEXT, SPLIT_VIDEO, TEXT_ENCODER, VIDEO_ENCODER
from ucofia import split_int8
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
        return tuple(sims[name] for name in LEVEL_OUTPUTS)  # type: ignore[return-value]


class SplitTextGraph(nn.Module):
    """words [T,L,D] -> the patch-word text side split into int8 rows (ucofia.split_int8)."""

    def __init__(self, model: UCoFiA) -> None:
        super().__init__()
        self.model = model

    def forward(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return split_int8.split_right(self.model.patch_word_queries(words))


class SplitVideoGraph(nn.Module):
    """patches [V,P,D] -> the patch tokens split into uint8 rows (ucofia.split_int8)."""

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return split_int8.split_left(patches)


class SplitScorerGraph(nn.Module):
    """The scorer with the patch-word product on split int8 operands (split text and patches in)."""

    def __init__(self, model: UCoFiA) -> None:
        super().__init__()
        self.model = model

    def forward(self, sentence: torch.Tensor, words_hi: torch.Tensor, words_lohi: torch.Tensor,
                words_scale: torch.Tensor, video: torch.Tensor, frame_features: torch.Tensor,
                patches_hi: torch.Tensor, patches_hilo: torch.Tensor, patches_scale: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, l = words_scale.shape
        v, p = patches_scale.shape
        fine = split_int8.split_product(
            patches_hi.reshape(v * p, -1), patches_hilo.reshape(v * p, -1), patches_scale.reshape(-1),
            words_hi.reshape(t * l, -1), words_lohi.reshape(t * l, -1), words_scale.reshape(-1))
        sims = self.model.sentence_levels(sentence, video, frame_features)
        sims["patch_word"] = self.model.patch_word_from_scores(fine.reshape(v, p, t, l))
        return tuple(sims[name] for name in LEVEL_OUTPUTS)  # type: ignore[return-value]


def split_graph_modules(model: UCoFiA) -> dict[str, nn.Module]:
    """The wrapper modules of the split-int8 scorer graphs, in eval mode."""
    return {SPLIT_TEXT: SplitTextGraph(model).eval(), SPLIT_VIDEO: SplitVideoGraph().eval(),
            SPLIT_SCORER: SplitScorerGraph(model).eval()}


def graph_modules(model: UCoFiA) -> dict[str, nn.Module]:
    """The wrapper module of each graph key, in eval mode.

    Eval mode matters beyond tracing: torch.onnx.export restores the wrapper's mode afterwards,
    and a wrapper left in training mode would switch the shared model to the perturbed top-k.
    """
    return {TEXT_ENCODER: TextEncoderGraph(model).eval(), VIDEO_ENCODER: VideoEncoderGraph(model).eval(),
            SCORER: ScorerGraph(model).eval()}
