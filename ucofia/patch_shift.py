"""TS2-Net patch shift (as wrapped around visual blocks 10 and 11 by the reference)."""
from __future__ import annotations

import torch


def shift_token_sets(tokens: int, div: int) -> tuple[list[int], list[int]]:
    """Token positions taken from frame t-1 and from frame t+1 for a sequence of ``tokens``."""
    fold = tokens // div
    if fold < 1:
        raise ValueError(f"patch shift needs at least {div} tokens per frame, got {tokens}")
    return list(range(1, tokens, fold)), list(range(4, tokens, fold))


def patch_shift(x: torch.Tensor, frames_per_video: int, div: int = 7) -> torch.Tensor:
    """Shift token sets across neighbouring frames.

    ``x`` is [N, L, W] with N = videos * frames_per_video (frames consecutive per video). Frame t
    takes the "left" positions from frame t-1 (t >= 1) and the "right" positions from frame t+1
    (t <= F-2); the right shift wins where the sets overlap. Written with ``where`` so that it
    exports to ONNX without scatter ops.
    """
    n, length, width = x.shape
    v = x.reshape(n // frames_per_video, frames_per_video, length, width)
    prev = torch.cat([v[:, :1], v[:, :-1]], dim=1)  # prev[t] = x[t-1]; frame 0 keeps itself
    nxt = torch.cat([v[:, 1:], v[:, -1:]], dim=1)  # nxt[t] = x[t+1]; last frame keeps itself
    left, right = shift_token_sets(length, div)
    left_mask = torch.zeros(length, dtype=torch.bool, device=x.device)
    right_mask = torch.zeros(length, dtype=torch.bool, device=x.device)
    left_mask[left] = True
    right_mask[right] = True
    left_mask = left_mask.view(1, 1, length, 1)
    right_mask = right_mask.view(1, 1, length, 1)
    out = torch.where(right_mask, nxt, torch.where(left_mask, prev, v))
    return out.reshape(n, length, width)
