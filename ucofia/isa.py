"""Interactive Similarity Aggregation (ISA) on the three alignment levels.

Pure functions of features and weight matrices, shared by the model, the ONNX scorer graph and
training. Matrices are [text, video]. ``tau`` is the ISA temperature (the reference uses 0.01,
applied by division).
"""
from __future__ import annotations

import torch

from ucofia.temporal import l2_normalize


def _isa_pool(scores: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """sum_last(scores * softmax(softmax(scores / tau) @ weight / tau)) over the last axis."""
    attn = torch.softmax(torch.softmax(scores / tau, dim=-1) @ weight / tau, dim=-1)
    return (scores * attn).sum(dim=-1)


def video_sentence(sentence: torch.Tensor, video: torch.Tensor, g: torch.Tensor, g1: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor:
    """Level 1: e^ls * (s G)(v G1)^T with s the normalised sentence feature, v the video feature."""
    s = l2_normalize(sentence)
    return logit_scale.exp() * (s @ g) @ (video @ g1).t()


def frame_sentence(sentence: torch.Tensor, frames: torch.Tensor, frame_weight: torch.Tensor,
                   logit_scale: torch.Tensor, tau: float) -> torch.Tensor:
    """Level 2: ISA over each video's frames of s . f_hat (padded frames included, no mask)."""
    s = l2_normalize(sentence)
    f = l2_normalize(frames)
    a = torch.einsum("td,vfd->tvf", s, f)
    return logit_scale.exp() * _isa_pool(a, frame_weight, tau)


def patch_word(words: torch.Tensor, patches: torch.Tensor, local_weight: torch.Tensor,
               local_weight1: torch.Tensor | None, word_weight: torch.Tensor,
               pixel_weight: torch.Tensor, pixel_weight2: torch.Tensor,
               word_weight2: torch.Tensor, tau: float) -> torch.Tensor:
    """Level 3: bidirectional ISA between word tokens [T,L,D] and selected patch tokens [V,P,D].

    Words are normalised, patches are raw; ``local_weight1`` (train variant) also projects the
    patches. No logit scale.
    """
    w = l2_normalize(words) @ local_weight
    p = patches if local_weight1 is None else patches @ local_weight1
    fine = torch.einsum("tld,vpd->tvlp", w, p)  # [T,V,L,P]
    # word axis first: for every patch, pool over words, then over patches
    word_level = _isa_pool(fine.transpose(-1, -2), word_weight, tau)  # [T,V,P]
    sent_to_patch = _isa_pool(word_level, pixel_weight2, tau)  # [T,V]
    # patch axis first: for every word, pool over patches, then over words
    patch_level = _isa_pool(fine, pixel_weight, tau)  # [T,V,L]
    video_to_word = _isa_pool(patch_level, word_weight2, tau)  # [T,V]
    return (sent_to_patch + video_to_word) / 2
