"""Checkpoint formats: ours (safetensors + JSON config) and imports of reference / CLIP weights.

Our checkpoint is a directory::

    config.json          UCoFiAConfig.to_dict()
    model.safetensors    model weights (float32)
    meta.json            optional free-form metadata (step, metrics, ...)
    training_state.pt    optional optimizer / scheduler / RNG state, loaded with weights_only=True

Untrusted ``.pt``/``.bin`` files are always read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ucofia.config import CLIPConfig, UCoFiAConfig
from ucofia.io_utils import atomic_directory, atomic_path, atomic_write_text
from ucofia.model import UCoFiA

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
TRAINING_STATE_FILE = "training_state.pt"

# Reference parameters that never influence the output (see reference-semantics.md, quirk 11),
# plus the non-loose-type heads the reference builds but never uses at loose_type.
REFERENCE_DEAD_KEYS = ("frame_mat_weight", "frame_mat_weight2", "word_logit_weight", "word_mat_weight_for_pixel")
REFERENCE_DEAD_PREFIXES = ("cross.", "similarity_dense.")
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
# Heads per 64 channels, as OpenAI CLIP and the reference derive them.
HEAD_WIDTH = 64


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, truncated or of another architecture."""


# ---- our format -----------------------------------------------------------------------------
def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes and float32 bytes (stable across save/load)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, model: UCoFiA, training_state: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None, force: bool = True) -> Path:
    """Write our checkpoint directory atomically (build in a temp dir, then rename)."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(directory, force=force) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
        full_meta = dict(meta or {})
        full_meta["fingerprint"] = weights_fingerprint(model)
        atomic_write_text(tmp / META_FILE, json.dumps(full_meta, indent=2, sort_keys=True))
        if training_state is not None:
            with atomic_path(tmp / TRAINING_STATE_FILE) as part:
                torch.save(training_state, part)
    return directory


def load_checkpoint(directory: str | Path, with_training_state: bool = False
                    ) -> tuple[UCoFiA, dict[str, Any]]:
    """Load our checkpoint directory -> (model in eval mode, meta [+ "training_state"])."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is not a directory; expected {CONFIG_FILE} + {WEIGHTS_FILE}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {directory} has no {name}")
    config = UCoFiAConfig.from_json(directory / CONFIG_FILE)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(f"cannot read {directory / WEIGHTS_FILE}: {exc} (file truncated or corrupt?)") from None
    model = UCoFiA(config)
    _load_strict(model, state, directory / WEIGHTS_FILE)
    meta: dict[str, Any] = {}
    if (directory / META_FILE).is_file():
        meta = json.loads((directory / META_FILE).read_text())
    if with_training_state and (directory / TRAINING_STATE_FILE).is_file():
        meta["training_state"] = _torch_load(
            directory / TRAINING_STATE_FILE,
            f"To resume, replace {directory} with an intact step checkpoint (RUN_DIR/checkpoints/step-N), "
            f"or start a new run from these weights with model.init_checkpoint={directory}")
    return model.eval(), meta


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:5]})")
        if mismatched:
            parts.append(f"shape mismatches: {mismatched[:5]}")
        raise CheckpointError(f"{source} does not fit this architecture: " + "; ".join(parts))
    for key, value in state.items():
        if not torch.isfinite(value.float()).all():
            raise CheckpointError(f"{source}: parameter {key} contains NaN or inf")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def load_model(path: str | Path) -> UCoFiA:
    """Load any supported checkpoint: our directory or a reference ``pytorch_model.bin`` file."""
    path = Path(path)
    if path.is_dir():
        return load_checkpoint(path)[0]
    return load_reference_checkpoint(path)


# ---- raw torch files ------------------------------------------------------------------------
CHECKPOINT_HINT = "Give a ucofia checkpoint directory (from `ucofia train`) or a reference pytorch_model.bin"
CLIP_HINT = "Give OpenAI / open_clip CLIP weights (a .pt or .bin state dict, or an OpenAI JIT archive)"


def _torch_load(path: Path, hint: str = CHECKPOINT_HINT) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {path} is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for foreign or damaged files
        raise CheckpointError(_torch_load_failure(path, exc, hint)) from None


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _torch_load_failure(path: Path, exc: Exception, hint: str) -> str:
    """What went wrong reading ``path`` with torch.load(weights_only=True), and the fix (``hint``:
    what the file should have been)."""
    unsafe = _UNSAFE_GLOBAL.search(str(exc))
    if unsafe:
        return (f"refusing to unpickle {path}: besides tensors it holds a Python object of type "
                f"{unsafe.group(1)}, and ucofia only loads plain weights from files it did not write. "
                f"Re-save it where you trust it as a state dict: torch.save(model.state_dict(), PATH)")
    text = str(exc).strip()
    # torch wraps unpickler errors in advice about weights_only=False that is wrong for junk files
    reason = re.search(r"WeightsUnpickler error: *([^\n]*)", text) or re.search(r"^([^\n]*)", text)
    detail = reason.group(1).strip().split(". ")[0][:200] if reason else ""
    if "Weights only load failed" in detail or detail.isdigit():
        detail = ""  # torch's weights_only advice, or the stray magic number of a non-torch file
    return (f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}"
            f"{': ' + detail if detail else ''}): the file is truncated or not a torch.save file. {hint}")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if state:
            return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    raise CheckpointError(f"{path} holds no tensor state dict")


# ---- CLIP geometry from OpenAI-layout keys --------------------------------------------------
def clip_config_from_state(state: Mapping[str, torch.Tensor], prefix: str = "") -> CLIPConfig:
    """Derive the CLIP geometry from OpenAI-layout weights (``visual.proj`` etc.)."""
    def need(key: str) -> torch.Tensor:
        if prefix + key not in state:
            raise CheckpointError(f"missing CLIP weight {prefix + key}: not an OpenAI-layout ViT CLIP")
        return state[prefix + key]

    conv = need("visual.conv1.weight")
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = round((need("visual.positional_embedding").shape[0] - 1) ** 0.5)
    block = re.compile(re.escape(prefix) + r"visual\.transformer\.resblocks\.(\d+)\.")
    vision_layers = len({m.group(1) for k in state if (m := block.match(k))})
    text_block = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    text_layers = len({m.group(1) for k in state if (m := text_block.match(k))})
    text_width = need("ln_final.weight").shape[0]
    return CLIPConfig(
        embed_dim=need("text_projection").shape[1], image_size=patch * grid, patch_size=patch,
        vision_width=vision_width, vision_layers=vision_layers,
        vision_heads=max(1, vision_width // HEAD_WIDTH), context_length=need("positional_embedding").shape[0],
        vocab_size=need("token_embedding.weight").shape[0], text_width=text_width,
        text_layers=text_layers, text_heads=max(1, text_width // HEAD_WIDTH),
    )


def _clip_keys_to_ours(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI-layout ``prefix*`` keys -> our ``clip.*`` keys (patch-shift ``attn.net`` unwrapped)."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in OPENAI_META_KEYS:
            continue
        name = name.replace(".attn.net.", ".attn.")
        out["clip." + name] = value
    return out


# ---- reference UCoFiA checkpoints -----------------------------------------------------------
def config_from_reference_state(state: Mapping[str, torch.Tensor], **overrides: Any) -> UCoFiAConfig:
    """Infer the UCoFiA config (variant, frames, words, top-k, temporal depth) from shapes."""
    clip = clip_config_from_state(state, prefix="clip.")
    needed = ["frame_logit_weight", "word_mat_weight", "pixel_mat_weight",
              "visual_token_selector.score_predictor.in_conv.0.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"not a UCoFiA checkpoint: missing {missing}")
    frames = state["frame_logit_weight"].shape[0]
    words = state["word_mat_weight"].shape[0]
    pixels = state["pixel_mat_weight"].shape[0]
    if pixels % frames:
        raise CheckpointError(f"pixel_mat_weight size {pixels} is not a multiple of max_frames {frames}")
    ln_width = state["visual_token_selector.score_predictor.in_conv.0.weight"].shape[0]
    if ln_width == 2 * clip.embed_dim:
        variant = "eval"
    elif ln_width == clip.embed_dim:
        variant = "train"
    else:
        raise CheckpointError(f"patch scorer LayerNorm width {ln_width} fits neither variant (embed {clip.embed_dim})")
    temporal = re.compile(r"transformerClip\.resblocks\.(\d+)\.")
    temporal_layers = len({m.group(1) for k in state if (m := temporal.match(k))})
    shifted = sorted({int(m.group(1)) for k in state
                      if (m := re.match(r"clip\.visual\.transformer\.resblocks\.(\d+)\.attn\.net\.", k))})
    if shifted:
        shift_blocks = tuple(shifted)
    else:
        # The reference wraps blocks 10 and 11 whenever they exist (make_patch_shift).
        shift_blocks = tuple(b for b in (10, 11) if b < clip.vision_layers)
    values: dict[str, Any] = dict(
        clip=clip, clip_model_name="reference-import", max_words=words, max_frames=frames,
        top_k=pixels // frames - 1, scorer_variant=variant,
        sim_header="seqTransf" if temporal_layers else "meanP",
        temporal_layers=temporal_layers, temporal_heads=max(1, clip.text_width // HEAD_WIDTH),
        frame_positions=state["frame_position_embeddings.weight"].shape[0]
        if "frame_position_embeddings.weight" in state else clip.context_length,
        patch_shift_blocks=shift_blocks,
    )
    values.update(overrides)
    return UCoFiAConfig(**values).validate()


def load_reference_checkpoint(path: str | Path, **overrides: Any) -> UCoFiA:
    """Load a reference UCoFiA checkpoint (``torch.save`` of its state dict) in eval() mode.

    The scorer variant, frames, words and top-k follow from the weight shapes. Patch-shift
    attention weights (``...resblocks.{10,11}.attn.net.*``) are loaded, not dropped.
    """
    path = Path(path)
    state = _unwrap_state_dict(_torch_load(path), path)
    config = config_from_reference_state(state, **overrides)
    ours = _clip_keys_to_ours(state, "clip.")
    for key, value in state.items():
        if key.startswith("clip.") or key in REFERENCE_DEAD_KEYS or key.startswith(REFERENCE_DEAD_PREFIXES):
            continue
        ours[key] = value
    model = UCoFiA(config)
    if config.scorer_variant == "eval":
        # The eval tree builds local_mat_weight1 but never uses it.
        ours.pop("local_mat_weight1", None)
    _load_strict(model, ours, path)
    return model.eval()


# ---- CLIP weights only (initialising a new model) ------------------------------------------
def load_clip_state(path_or_tag: str, model_name: str = "ViT-B-32") -> dict[str, torch.Tensor]:
    """OpenAI-layout CLIP weights from a local JIT archive / state dict, or an open_clip tag.

    A local file is read without executing code: JIT archives are opened as zip files and only
    their tensor payload is loaded (weights_only). A tag (e.g. ``openai``, ``laion2b_s34b_b79k``)
    goes through open_clip's download cache and needs a network or a pre-filled cache.
    """
    path = Path(path_or_tag)
    if path.exists():
        try:
            obj = torch.jit.load(str(path), map_location="cpu").state_dict() if _is_torchscript(path) \
                else _torch_load(path, CLIP_HINT)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot read CLIP weights from {path}: {exc}") from None
        state = _unwrap_state_dict(obj, path)
        if "visual.proj" not in state:
            raise CheckpointError(f"{path} is not an OpenAI-layout ViT CLIP state dict (no visual.proj)")
        return {k: v.float() for k, v in state.items()}
    import open_clip

    try:
        model = open_clip.create_model(model_name, pretrained=path_or_tag)
    except Exception as exc:
        raise CheckpointError(
            f"cannot get open_clip weights {model_name!r}/{path_or_tag!r}: {exc}. Pass a local file "
            "instead (OpenAI ViT-B-32.pt or an open_clip state dict).") from None
    return {k: v.float() for k, v in model.state_dict().items()}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def init_from_clip(config: UCoFiAConfig, clip_state: Mapping[str, torch.Tensor], seed: int = 0) -> UCoFiA:
    """A new UCoFiA whose CLIP towers (and temporal init, as the reference does) come from CLIP."""
    derived = clip_config_from_state(clip_state)
    if derived != config.clip:
        raise CheckpointError(f"CLIP weights have geometry {derived}, config expects {config.clip}")
    torch.manual_seed(seed)
    model = UCoFiA(config)
    ours = _clip_keys_to_ours(clip_state, "")
    own = model.state_dict()
    for key in ("clip.logit_bias",):
        ours.pop(key, None)
    missing = [k for k in own if k.startswith("clip.") and k not in ours]
    if missing:
        raise CheckpointError(f"CLIP weights lack {missing[:5]}")
    # The reference initialises frame positions and the temporal blocks from the text tower.
    if hasattr(model, "frame_position_embeddings"):
        pos = clip_state["positional_embedding"]
        if pos.shape == own["frame_position_embeddings.weight"].shape:
            ours["frame_position_embeddings.weight"] = pos
        for key, value in clip_state.items():
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
            if m and int(m.group(1)) < config.temporal_layers:
                target = f"transformerClip.resblocks.{m.group(1)}.{m.group(2)}"
                if target in own and own[target].shape == value.shape:
                    ours[target] = value
    own.update({k: v.float() for k, v in ours.items() if k in own})
    model.load_state_dict(own)
    return model
