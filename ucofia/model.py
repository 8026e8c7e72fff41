"""The UCoFiA model: CLIP towers, patch selection, temporal encoder and the three ISA levels.

Free of I/O: loading and saving live in ``ucofia.checkpoints``. Parameter names follow the public
reference implementation so that its checkpoints load with only the ``attn.net`` rename.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ucofia import isa
from ucofia.clip_towers import build_open_clip, encode_frame_tokens, encode_text_tokens
from ucofia.config import UCoFiAConfig
from ucofia.selector import VisualTokenSelector
from ucofia.sinkhorn import LEVELS, fuse
from ucofia.temporal import TemporalTransformer, l2_normalize, masked_mean

# Reference initialisation of the new (non-CLIP) modules.
HEAD_INIT_STD = 0.02
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)


@dataclass
class TextFeatures:
    """Raw text encoder outputs: EOT feature [T,D] and all projected tokens [T,L,D]."""

    sentence: torch.Tensor
    words: torch.Tensor
    attention_mask: torch.Tensor | None = None


@dataclass
class VideoFeatures:
    """Video encoder outputs.

    video: [V,D] seqTransf output, masked mean, L2-normalised. frames: [V,F,D] raw CLIP CLS
    features. patches: [V,F*(k+1),D] raw selected tokens (CLS + top-k per frame).
    patch_indices: [V,F,k] chosen patch positions (CLS excluded, ascending).
    """

    video: torch.Tensor
    frames: torch.Tensor
    patches: torch.Tensor
    video_mask: torch.Tensor
    patch_indices: torch.Tensor | None = None


class UCoFiA(nn.Module):
    """Unified Coarse-to-Fine Alignment over CLIP towers."""

    def __init__(self, config: UCoFiAConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        e, f, l, p = config.embed_dim, config.max_frames, config.max_words, config.num_pixels
        self.clip = build_open_clip(config.clip)
        if config.sim_header == "seqTransf":
            self.frame_position_embeddings = nn.Embedding(config.frame_positions, e)
            self.transformerClip = TemporalTransformer(e, config.temporal_layers, config.temporal_heads)
        self.global_mat_weight = nn.Parameter(torch.eye(e))
        self.global_mat_weight_1 = nn.Parameter(torch.eye(e))
        self.frame_logit_weight = nn.Parameter(torch.eye(f))
        self.local_mat_weight = nn.Parameter(torch.eye(e))
        if config.scorer_variant == "train":
            self.local_mat_weight1 = nn.Parameter(torch.eye(e))
        self.word_mat_weight = nn.Parameter(torch.eye(l))
        self.word_mat_weight2 = nn.Parameter(torch.eye(l))
        self.pixel_mat_weight = nn.Parameter(torch.eye(p))
        self.pixel_mat_weight2 = nn.Parameter(torch.eye(p))
        self.visual_token_selector = VisualTokenSelector(e, config.top_k, config.scorer_variant)
        self._init_heads()

    def _init_heads(self) -> None:
        for name, module in self.named_modules():
            if name.startswith("clip"):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=HEAD_INIT_STD)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, std=HEAD_INIT_STD)
                nn.init.zeros_(module.in_proj_bias)
                nn.init.normal_(module.out_proj.weight, std=HEAD_INIT_STD)
                nn.init.zeros_(module.out_proj.bias)

    # ---- encoders --------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextFeatures:
        """Token ids [T,L] (L = max_words) -> raw sentence [T,D] and word [T,L,D] features."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [texts, words], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.clip.context_length:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed the context length {self.config.clip.context_length}")
        sentence, words = encode_text_tokens(self.clip, input_ids.long())
        return TextFeatures(sentence=sentence, words=words, attention_mask=attention_mask)

    def encode_video(self, frames: torch.Tensor, video_mask: torch.Tensor) -> VideoFeatures:
        """Frames [V,F,3,H,W] + video_mask [V,F] -> VideoFeatures (see its docstring)."""
        cfg = self.config
        if frames.dim() != 5 or frames.shape[1] != cfg.max_frames:
            raise ValueError(f"frames must be [videos, {cfg.max_frames}, 3, H, W], got {tuple(frames.shape)}")
        v, f = frames.shape[:2]
        tokens = encode_frame_tokens(
            self.clip, frames.reshape(v * f, *frames.shape[2:]), f,
            cfg.patch_shift_blocks if cfg.patch_shift_active else (), cfg.patch_shift_div,
        )
        cls = tokens[:, 0].reshape(v, f, -1)
        selected, indices = self.visual_token_selector(tokens, f, perturbed=self.training)
        patches = selected.reshape(v, f * selected.shape[1], -1)
        video = self._temporal(cls, video_mask)
        return VideoFeatures(video=video, frames=cls, patches=patches, video_mask=video_mask,
                             patch_indices=indices.reshape(v, f, -1))

    def _temporal(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        out = frames
        if self.config.sim_header == "seqTransf":
            positions = self.frame_position_embeddings.weight[: frames.shape[1]]
            out = self.transformerClip(frames + positions, video_mask) + frames
        return l2_normalize(masked_mean(l2_normalize(out), video_mask))

    # ---- similarities ----------------------------------------------------------------------
    def level_similarities(self, text: TextFeatures, video: VideoFeatures) -> dict[str, torch.Tensor]:
        """The three level similarity matrices [T,V], keyed by level name."""
        return self.score(text.sentence, text.words, video.video, video.frames, video.patches)

    def score(self, sentence: torch.Tensor, words: torch.Tensor, video: torch.Tensor,
              frames: torch.Tensor, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Level similarities from raw tensors (the scorer graph the export writes)."""
        tau = self.config.isa_temperature
        ls = self.clip.logit_scale
        return {
            "video_sentence": isa.video_sentence(sentence, video, self.global_mat_weight,
                                                 self.global_mat_weight_1, ls),
            "frame_sentence": isa.frame_sentence(sentence, frames, self.frame_logit_weight, ls, tau),
            "patch_word": isa.patch_word(
                words, patches, self.local_mat_weight, getattr(self, "local_mat_weight1", None),
                self.word_mat_weight, self.pixel_mat_weight, self.pixel_mat_weight2,
                self.word_mat_weight2, tau),
        }

    @staticmethod
    def contrastive_loss(sims: dict[str, torch.Tensor]) -> torch.Tensor:
        """Symmetric cross-entropy on the mean of the three levels (square [B,B] batch)."""
        sim = fuse(sims)
        targets = torch.arange(sim.shape[0], device=sim.device)
        ce = nn.functional.cross_entropy
        return (ce(sim, targets) + ce(sim.t(), targets)) / 2

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, frames: torch.Tensor,
                video_mask: torch.Tensor) -> torch.Tensor:
        """Training forward: the contrastive loss of a batch of matched (caption, video) pairs."""
        sims = self.level_similarities(self.encode_text(input_ids, attention_mask),
                                       self.encode_video(frames, video_mask))
        return self.contrastive_loss(sims)


def build_model(config: UCoFiAConfig, seed: int | None = 0) -> UCoFiA:
    """A randomly initialised model in eval() mode (deterministic for a given seed)."""
    if seed is not None:
        torch.manual_seed(seed)
    return UCoFiA(config).eval()


__all__ = ["LEVELS", "TextFeatures", "UCoFiA", "VideoFeatures", "build_model"]
