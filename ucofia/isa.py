"""Interactive Similarity Aggregation (ISA) on the three alignment levels.

Pure functions of features and weight matrices, shared by the model, the ONNX scorer graph and
training. Matrices are [text, video]. ``tau`` is the ISA temperature (the reference uses 0.01,
applied by division).

Layout for speed (same maths as the reference, identical within float32 rounding):

* Scores are divided by ``tau`` once, where they are made (on the small text-side tensor before
  the big product), and the pools work in those scaled units: for ``xs = x / tau``,
  ``sum(xs * softmax(softmax(xs) @ (W / tau))) = pool(x) / tau``, so chained pools need no
  division over the large tensors and only the final [T, V] result is multiplied by ``tau``.
* The patch-word scores come out of ONE matrix product [V*P, D] x [D, T*L] in its natural
  [V, P, T, L] layout (no Einsum, whose CPU kernels batch T*V tiny products). The tall side is
  the patches, so the small text side is what a CPU GEMM packs, which keeps few-text tiles (one
  query against a gallery) efficient. The word-axis pool runs on the last axis directly and the
  patch-axis pool on one transposed copy, so every softmax is over the last axis (fused kernels,
  max subtraction built in).
"""
from __future__ import annotations

import torch

from ucofia.temporal import l2_normalize


def _scaled_pool(xs: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """ISA pooling over the last axis of scores already divided by ``tau``.

    Returns ``sum_last(xs * softmax(softmax(xs) @ (weight / tau)))``, i.e. the reference's
    ``sum_last(x * softmax(softmax(x / tau) @ weight / tau))`` divided by ``tau``.
    """
    attn = torch.softmax(torch.softmax(xs, dim=-1) @ (weight / tau), dim=-1)
    return (xs * attn).sum(dim=-1)


def video_sentence(sentence: torch.Tensor, video: torch.Tensor, g: torch.Tensor, g1: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor:
    """Level 1: e^ls * (s G)(v G1)^T with s the normalised sentence feature, v the video feature.

    Computed as e^ls * (s (G G1^T)) v^T: the same bilinear form, with the [D, D] product of the two
    weights made once (a constant in the exported graph) instead of projecting every video tile.
    """
    s = l2_normalize(sentence)
    return logit_scale.exp() * (s @ (g @ g1.t())) @ video.t()


def frame_sentence(sentence: torch.Tensor, frames: torch.Tensor, frame_weight: torch.Tensor,
                   logit_scale: torch.Tensor, tau: float) -> torch.Tensor:
    """Level 2: ISA over each video's frames of s . f_hat (padded frames included, no mask).

    s . f_hat is computed as (s . f) / |f|: the frame features are read by the product and once
    for their norms, never rewritten normalised (per tile of videos this was the level's main
    cost). Small ([T,V,F]) otherwise, and kept in the reference's unscaled form, which this
    level's sharp pools over 12 frames reproduce most closely.
    """
    t = sentence.shape[0]
    v, f, d = frames.shape
    flat = frames.reshape(v * f, d)
    norms = (flat * flat).sum(dim=-1).sqrt()  # [V*F]
    scores = ((l2_normalize(sentence) @ flat.t()) / norms).reshape(t, v, f)
    attn = torch.softmax(torch.softmax(scores / tau, dim=-1) @ frame_weight / tau, dim=-1)
    return logit_scale.exp() * (scores * attn).sum(dim=-1)


def patch_word(words: torch.Tensor, patches: torch.Tensor, local_weight: torch.Tensor,
               local_weight1: torch.Tensor | None, word_weight: torch.Tensor,
               pixel_weight: torch.Tensor, pixel_weight2: torch.Tensor,
               word_weight2: torch.Tensor, tau: float) -> torch.Tensor:
    """Level 3: bidirectional ISA between word tokens [T,L,D] and selected patch tokens [V,P,D].

    Words are normalised, patches are raw; ``local_weight1`` (train variant) also projects the
    patches: (w A)(x B)^T = w (A B^T) x^T, so it is folded into the text-side matrix (a constant
    in the exported graph) rather than applied to every tile of patches. No logit scale.
    """
    t, l, d = words.shape
    v, p = patches.shape[:2]
    text_matrix = local_weight if local_weight1 is None else local_weight @ local_weight1.t()
    w = (l2_normalize(words) @ text_matrix) / tau
    fine = (patches.reshape(v * p, d) @ w.reshape(t * l, d).t()).reshape(v, p, t, l)  # [V,P,T,L] / tau
    # word axis first: for every patch, pool over words, then over patches
    word_level = _scaled_pool(fine, word_weight, tau)  # [V,P,T]
    sent_to_patch = _scaled_pool(word_level.transpose(1, 2), pixel_weight2, tau)  # [V,T]
    # patch axis first: for every word, pool over patches, then over words
    patch_level = _scaled_pool(fine.permute(0, 2, 3, 1), pixel_weight, tau)  # [V,T,L]
    video_to_word = _scaled_pool(patch_level, word_weight2, tau)  # [V,T]
    return ((sent_to_patch + video_to_word) * (tau / 2)).t()
