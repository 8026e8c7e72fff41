"""Sample inputs for export tracing and verification (seeded, tie-safe for the hard top-k).

Random token ids follow the CLIP layout (SOT, tokens, EOT = the row maximum, zero padding).
Random videos may be padded (zero frames with mask 0, as the data loaders pad). The hard top-k
patch selection flips on rounding when two patch scores are nearly tied, so video samples are
re-drawn until every frame's gap between the k-th and (k+1)-th score clears ``min_margin`` (best
effort: padded frames are fixed, so their gaps are whatever the model gives them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ucofia.clip_towers import encode_frame_tokens
from ucofia.model import UCoFiA

# Tries per video to find one without near-tied patch scores.
MAX_TIE_TRIES = 25


@dataclass
class VideoSample:
    frames: torch.Tensor  # [V,F,3,H,W]
    video_mask: torch.Tensor  # [V,F]
    margins: torch.Tensor  # [V,F] top-k score gap per frame


def special_ids(model: UCoFiA) -> tuple[int, int]:
    """(SOT, EOT) ids of the model's vocabulary: CLIP puts them last, EOT being the largest id."""
    vocab = model.config.clip.vocab_size
    return vocab - 2, vocab - 1


def sample_token_ids(model: UCoFiA, texts: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids [texts, max_words]: SOT, random tokens, EOT, zero padding; varied lengths."""
    words = model.config.max_words
    sot, eot = special_ids(model)
    ids = torch.zeros(texts, words, dtype=torch.long)
    for row in range(texts):
        length = int(torch.randint(2, words + 1, (1,), generator=generator))  # incl. SOT and EOT
        ids[row, 0] = sot
        ids[row, 1:length - 1] = torch.randint(1, sot, (length - 2,), generator=generator)
        ids[row, length - 1] = eot
    return ids


@torch.no_grad()
def topk_margins(model: UCoFiA, frames: torch.Tensor) -> torch.Tensor:
    """Per-frame gap between the k-th and (k+1)-th patch score, [V,F] for frames [V,F,3,H,W]."""
    cfg = model.config
    v, f = frames.shape[:2]
    tokens = encode_frame_tokens(model.clip, frames.reshape(v * f, *frames.shape[2:]), f,
                                 cfg.patch_shift_blocks if cfg.patch_shift_active else (), cfg.patch_shift_div)
    scores = model.visual_token_selector.score_predictor(tokens, f)[:, 1:]
    ranked = torch.topk(scores, cfg.top_k + 1, dim=-1).values
    return (ranked[:, cfg.top_k - 1] - ranked[:, cfg.top_k]).reshape(v, f)


def sample_videos(model: UCoFiA, valid_frames: list[int], generator: torch.Generator,
                  min_margin: float = 0.0) -> VideoSample:
    """Videos with ``valid_frames[i]`` real frames each (the rest zero, mask 0), tie-safe."""
    cfg = model.config
    f, size = cfg.max_frames, cfg.clip.image_size
    frames, masks, margins = [], [], []
    for valid in valid_frames:
        if not 0 <= valid <= f:
            raise ValueError(f"valid frame count {valid} outside 0..{f}")
        best = None
        for _ in range(MAX_TIE_TRIES):
            clip = torch.zeros(1, f, 3, size, size)
            clip[0, :valid] = torch.randn(valid, 3, size, size, generator=generator)
            mask = torch.zeros(1, f)
            mask[0, :valid] = 1
            margin = topk_margins(model, clip)
            # only real frames can be re-drawn; padded frames' gaps are fixed by the model
            worst = float(margin[0, :valid].min()) if valid else float("inf")
            if best is None or worst > best[3]:
                best = (clip, mask, margin, worst)
            if worst >= min_margin:
                break
        frames.append(best[0])
        masks.append(best[1])
        margins.append(best[2])
    return VideoSample(torch.cat(frames), torch.cat(masks), torch.cat(margins))
