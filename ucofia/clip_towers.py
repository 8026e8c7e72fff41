"""CLIP frame and text towers built from open_clip, returning every projected token.

The towers follow the OpenAI/open_clip ViT layout (QuickGELU, pre-LN blocks), so OpenAI CLIP state
dicts and reference UCoFiA ``clip.*`` weights load without renaming. The text tower runs at
``max_words`` by slicing the causal mask and the position embedding (never interpolating them); the
vision tower optionally applies the TS2-Net patch shift inside chosen blocks.
"""
from __future__ import annotations

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from ucofia.config import CLIPConfig
from ucofia.patch_shift import patch_shift


def build_open_clip(cfg: CLIPConfig) -> open_clip.CLIP:
    """Build a randomly initialised open_clip CLIP with the given geometry (QuickGELU, fp32)."""
    vision = CLIPVisionCfg(
        layers=cfg.vision_layers, width=cfg.vision_width,
        head_width=cfg.vision_width // cfg.vision_heads, patch_size=cfg.patch_size,
        image_size=cfg.image_size,
    )
    text = CLIPTextCfg(
        context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
        heads=cfg.text_heads, layers=cfg.text_layers,
    )
    return open_clip.CLIP(cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def encode_text_tokens(clip: open_clip.CLIP, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (EOT feature [T,D], all projected tokens [T,L,D]) for token ids [T,L].

    The EOT token is the row's highest id (CLIP convention); no padding mask is used, exactly as
    the reference does.
    """
    length = input_ids.shape[1]
    x = clip.token_embedding(input_ids) + clip.positional_embedding[:length]
    mask = clip.attn_mask[:length, :length]
    for block in clip.transformer.resblocks:
        x = block(x, attn_mask=mask)
    hidden = clip.ln_final(x) @ clip.text_projection
    eot = hidden[torch.arange(hidden.shape[0], device=hidden.device), input_ids.argmax(dim=-1)]
    return eot, hidden


def encode_frame_tokens(
    clip: open_clip.CLIP,
    images: torch.Tensor,
    frames_per_video: int,
    shift_blocks: tuple[int, ...] = (),
    shift_div: int = 7,
) -> torch.Tensor:
    """Return all projected tokens [N, 1+grid^2, D] for images [N,3,H,W] (N = videos * frames).

    Blocks listed in ``shift_blocks`` apply the TS2-Net patch shift to ``ln_1(x)`` before their
    attention (the residual keeps the unshifted x), frames grouped in blocks of ``frames_per_video``.
    """
    visual = clip.visual
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    for index, block in enumerate(visual.transformer.resblocks):
        if index in shift_blocks:
            shifted = patch_shift(block.ln_1(x), frames_per_video, shift_div)
            x = x + block.ls_1(block.attention(q_x=shifted))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        else:
            x = block(x)
    return visual.ln_post(x) @ visual.proj
