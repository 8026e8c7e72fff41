"""The one source of truth for UCoFiA shapes and hyper-parameters.

This module is deliberately torch-free: the runtime reads the same dataclass back from a bundle
manifest. Every checkpoint and every bundle stores ``UCoFiAConfig.to_dict()``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# CLIP image normalisation used by OpenAI CLIP and the reference dataloaders.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

ScorerVariant = Literal["eval", "train"]
SimHeader = Literal["seqTransf", "meanP"]

CONFIG_FORMAT = "ucofia.config/1"

# The three alignment levels, in the order every similarity dict, bias array and report uses.
LEVELS: tuple[str, str, str] = ("video_sentence", "frame_sentence", "patch_word")


class ConfigError(ValueError):
    """A configuration value is invalid or inconsistent."""


@dataclass
class CLIPConfig:
    """Geometry of the CLIP towers (OpenAI / open_clip ViT layout, QuickGELU)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        """CLS + patches."""
        return self.grid * self.grid + 1


@dataclass
class UCoFiAConfig:
    """Everything that fixes the shapes and the maths of a UCoFiA model."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)
    # open_clip model name the towers follow (informational when weights are imported).
    clip_model_name: str = "ViT-B-32"
    max_words: int = 32
    max_frames: int = 12
    top_k: int = 3
    # "eval": eval_t2v scorer (LN over 2E, video-sum context); "train": train-tree scorer.
    scorer_variant: ScorerVariant = "eval"
    sim_header: SimHeader = "seqTransf"
    temporal_layers: int = 4
    temporal_heads: int = 8
    # size of frame_position_embeddings (the reference uses the text context length)
    frame_positions: int = 77
    # TS2-Net patch shift on these visual blocks (0-based); empty = off.
    patch_shift_blocks: tuple[int, ...] = (10, 11)
    patch_shift_div: int = 7
    isa_temperature: float = 0.01
    sk_iterations: int = 4
    # Product switch: mask padded frames / word positions in levels 2 and 3 (never by default).
    mask_padding: bool = False
    # Preprocessing (reference MSR-VTT dataloader conventions)
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    feature_framerate: int = 1
    slice_framepos: int = 2
    logit_scale_max: float = 100.0

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    @property
    def patches_per_frame(self) -> int:
        """Tokens kept per frame after selection: CLS + top-k."""
        return self.top_k + 1

    @property
    def num_pixels(self) -> int:
        """Length of the selected-token sequence per video (F * (k+1))."""
        return self.max_frames * self.patches_per_frame

    @property
    def patch_shift_active(self) -> bool:
        return bool(self.patch_shift_blocks) and max(self.patch_shift_blocks) < self.clip.vision_layers

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> UCoFiAConfig:
        """Raise ConfigError naming the field when a value is out of range or inconsistent."""
        c = self.clip
        positive = {
            "clip.embed_dim": c.embed_dim, "clip.image_size": c.image_size,
            "clip.patch_size": c.patch_size, "clip.vision_width": c.vision_width,
            "clip.vision_layers": c.vision_layers, "clip.vision_heads": c.vision_heads,
            "clip.context_length": c.context_length, "clip.vocab_size": c.vocab_size,
            "clip.text_width": c.text_width, "clip.text_layers": c.text_layers,
            "clip.text_heads": c.text_heads, "max_words": self.max_words,
            "max_frames": self.max_frames, "top_k": self.top_k,
            "temporal_heads": self.temporal_heads, "frame_positions": self.frame_positions,
            "patch_shift_div": self.patch_shift_div,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {value!r}")
        if c.image_size % c.patch_size:
            raise ConfigError(
                f"clip.image_size ({c.image_size}) must be a multiple of clip.patch_size ({c.patch_size})")
        if self.max_words > c.context_length:
            raise ConfigError(
                f"max_words ({self.max_words}) exceeds the text context length ({c.context_length})")
        if self.max_words < 2:
            raise ConfigError("max_words must be at least 2 (SOT and EOT)")
        if self.max_frames > self.frame_positions:
            raise ConfigError(
                f"max_frames ({self.max_frames}) exceeds frame_positions ({self.frame_positions})")
        if self.top_k >= c.grid * c.grid:
            raise ConfigError(f"top_k ({self.top_k}) must be smaller than the {c.grid * c.grid} patches")
        if self.scorer_variant not in ("eval", "train"):
            raise ConfigError(f"scorer_variant must be 'eval' or 'train', got {self.scorer_variant!r}")
        if self.sim_header not in ("seqTransf", "meanP"):
            raise ConfigError(f"sim_header must be 'seqTransf' or 'meanP', got {self.sim_header!r}")
        if self.temporal_layers < 0:
            raise ConfigError("temporal_layers must be >= 0")
        if self.embed_dim % self.temporal_heads:
            raise ConfigError(
                f"temporal_heads ({self.temporal_heads}) must divide embed_dim ({self.embed_dim})")
        if self.scorer_variant == "train" and self.embed_dim % 2:
            raise ConfigError("the train scorer variant needs an even embed_dim")
        if self.slice_framepos not in (0, 1, 2):
            raise ConfigError(f"slice_framepos must be 0, 1 or 2, got {self.slice_framepos!r}")
        if self.feature_framerate <= 0:
            raise ConfigError("feature_framerate must be positive")
        if not (self.isa_temperature > 0):
            raise ConfigError("isa_temperature must be positive")
        return self

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format"] = CONFIG_FORMAT
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UCoFiAConfig:
        data = dict(data)
        fmt = data.pop("format", CONFIG_FORMAT)
        if fmt != CONFIG_FORMAT:
            raise ConfigError(f"unsupported config format {fmt!r} (expected {CONFIG_FORMAT!r})")
        clip_data = data.pop("clip", {}) or {}
        known_clip = {f.name for f in dataclasses.fields(CLIPConfig)}
        unknown = set(clip_data) - known_clip
        if unknown:
            raise ConfigError(f"unknown clip config fields: {sorted(unknown)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"clip"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        for key in ("patch_shift_blocks", "image_mean", "image_std"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        return cls(clip=CLIPConfig(**clip_data), **data).validate()

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON (atomically)."""
        from ucofia.io_utils import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_json(cls, path: str | Path) -> UCoFiAConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> UCoFiAConfig:
        return dataclasses.replace(self, **changes).validate()


def tiny_config(**overrides: Any) -> UCoFiAConfig:
    """A tiny random-initialisable config for tests and the CPU demo (no patch shift: 2 layers)."""
    clip_over = overrides.pop("clip", {})
    clip = CLIPConfig(
        embed_dim=64, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
        vision_heads=1, context_length=77, vocab_size=49408, text_width=64, text_layers=2,
        text_heads=1,
    )
    clip = dataclasses.replace(clip, **clip_over)
    base = dict(clip=clip, clip_model_name="tiny", temporal_layers=1, temporal_heads=1,
                max_frames=12, max_words=32)
    base.update(overrides)
    return UCoFiAConfig(**base).validate()


def vit_b32_config(**overrides: Any) -> UCoFiAConfig:
    """The published UCoFiA geometry (OpenAI ViT-B/32)."""
    return UCoFiAConfig(**overrides).validate()
