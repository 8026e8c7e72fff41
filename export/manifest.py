"""The bundle's ``manifest.json`` (format ``ucofia.bundle/1``): what the runtime needs to serve it."""
from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import importlib.util
import platform
import shutil
from pathlib import Path
from typing import Any

from runtime.bundle.contract import BUNDLE_FORMAT, DYNAMIC_AXES, GraphSpec
from ucofia.config import UCoFiAConfig

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# packages whose versions are recorded (distribution names)
VERSIONED_PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "onnx": "onnx",
                      "onnxruntime": "onnxruntime", "numpy": "numpy", "ucofia": "ucofia"}


class VocabularyError(RuntimeError):
    """The CLIP BPE vocabulary cannot be found in the installed open_clip package."""


class SmallVocabularyError(ValueError):
    """The model's text tower has fewer token embeddings than the CLIP BPE tokenizer has ids."""


def vocab_source() -> Path:
    """Path of the CLIP BPE vocabulary shipped inside the installed open_clip package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise VocabularyError("open_clip is not installed; `pip install open_clip_torch` (it ships the BPE vocabulary)")
    for location in spec.submodule_search_locations:
        path = Path(location) / VOCAB_FILE
        if path.is_file():
            return path
    raise VocabularyError(f"{VOCAB_FILE} not found in the open_clip package at "
                          f"{list(spec.submodule_search_locations)}; reinstall open_clip_torch")


def copy_vocab(directory: Path) -> Path:
    """Copy the BPE vocabulary into the bundle directory."""
    target = Path(directory) / VOCAB_FILE
    shutil.copyfile(vocab_source(), target)
    return target


@functools.lru_cache(maxsize=1)
def tokenizer_ids() -> tuple[int, int, int]:
    """(SOT id, EOT id, vocabulary size) of the CLIP BPE tokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(str(vocab_source()))
    return int(tok.sot_token_id), int(tok.eot_token_id), len(tok.encoder)


def check_vocabulary(config: UCoFiAConfig, allow_small_vocab: bool = False) -> None:
    """Refuse a model whose text tower cannot embed every id of the bundled CLIP BPE tokenizer.

    Such a bundle would fail on its first text (onnxruntime: indices out of bounds). Test models
    that are only ever fed token ids from elsewhere may pass ``allow_small_vocab``.
    """
    _, _, size = tokenizer_ids()
    rows = config.clip.vocab_size
    if rows < size and not allow_small_vocab:
        raise SmallVocabularyError(
            f"the checkpoint's text tower has {rows:,} token embeddings (model.clip.vocab_size) but the CLIP BPE "
            f"tokenizer uses {size:,} ids: its bundle could not encode any text (SOT is id {size - 2:,}); export a "
            f"checkpoint with the full {size:,}-token vocabulary, or pass --allow-small-vocab "
            f"(allow_small_vocab=True) for a model that is only fed token ids from elsewhere")


def tokenizer_section(config: UCoFiAConfig) -> tuple[dict[str, Any], list[str]]:
    """The manifest's tokenizer entry and any warning about a vocabulary/model mismatch.

    ``vocab_size`` is the BPE tokenizer's; ``model_vocab_size`` the text encoder's number of token
    embeddings, which the runtime checks every token id against.
    """
    sot, eot, size = tokenizer_ids()
    warnings = []
    if size != config.clip.vocab_size:
        warnings.append(f"the CLIP BPE vocabulary has {size} tokens but the model's text tower has "
                        f"{config.clip.vocab_size}: token ids from the bundled tokenizer do not fit this model")
    return {"vocab_file": VOCAB_FILE, "max_words": config.max_words, "sot_id": sot, "eot_id": eot,
            "vocab_size": size, "model_vocab_size": config.clip.vocab_size,
            "context_length": config.clip.context_length}, warnings


def preprocessing_section(config: UCoFiAConfig) -> dict[str, Any]:
    """Frame sampling and pixel preprocessing the video encoder expects (from the config)."""
    return {
        "image_size": config.clip.image_size,
        "mean": list(config.image_mean),
        "std": list(config.image_std),
        "frames": config.max_frames,
        "feature_framerate": config.feature_framerate,
        "slice_framepos": config.slice_framepos,
        "layout": "frames [V, F, 3, H, W] RGB, /255 then (x - mean) / std",
        "resize": "bicubic resize of the short side to image_size, then center crop",
        "padding": "missing frames are all-zero tensors with video_mask 0",
    }


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions of python and the packages that produced the bundle."""
    out = {"python": platform.python_version()}
    for key, dist in VERSIONED_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    out.update(extra or {})
    return out


def build_manifest(*, config: UCoFiAConfig, fingerprint: str, dtype: str, opset: int, exporter: str,
                   specs: dict[str, GraphSpec], verification: dict[str, Any] | None,
                   trt_check: dict[str, Any], tensorrt: dict[str, Any] | None,
                   fp16: dict[str, Any] | None = None, source: dict[str, Any] | None = None,
                   onnxruntime_hints: dict[str, Any] | None = None,
                   extra_versions: dict[str, str] | None = None, seconds: float | None = None,
                   warnings: list[str] | None = None, int8: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the manifest dict (the contract: ``runtime.bundle.contract``, docs/bundle-format.md)."""
    tokenizer, tok_warnings = tokenizer_section(config)
    return {
        "format": BUNDLE_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "fingerprint": fingerprint,
        "dtype": dtype,
        "opset": opset,
        "exporter": exporter,
        "graphs": {key: spec.to_dict() for key, spec in specs.items()},
        "dynamic_axes": dict(DYNAMIC_AXES),
        "preprocessing": preprocessing_section(config),
        "tokenizer": tokenizer,
        "versions": versions(extra_versions),
        "verification": verification,
        "trt_check": trt_check,
        "tensorrt": tensorrt,
        "fp16": fp16,
        "int8": int8,
        "onnxruntime": onnxruntime_hints or {},
        "source": source or {},
        "export_seconds": None if seconds is None else round(seconds, 2),
        "warnings": list(warnings or []) + tok_warnings,
    }
