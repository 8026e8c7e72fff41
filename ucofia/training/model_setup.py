"""Build the model a training run starts from, with every check done before any data work.

Sources, in order of precedence: ``--resume`` (RUN_DIR/last), ``model.init_checkpoint`` (our
checkpoint directory or a reference ``.bin``), ``model.pretrained`` (open_clip tag or local CLIP
weights through ``load_clip_state`` + ``init_from_clip``), else random init (``tiny`` or any ViT
geometry) with the run's seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ucofia.checkpoints import (
    CONFIG_FILE,
    CheckpointError,
    init_from_clip,
    load_checkpoint,
    load_clip_state,
    load_reference_checkpoint,
)
from ucofia.config import ConfigError, UCoFiAConfig
from ucofia.model import UCoFiA, build_model
from ucofia.training.config import TrainConfig, TrainConfigError


def config_differences(a: UCoFiAConfig, b: UCoFiAConfig) -> list[str]:
    """Field-by-field differences ``name: a != b`` (clip fields as clip.name)."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for key in sorted(set(da) | set(db)):
        if key == "clip":
            for ck in sorted(set(da["clip"]) | set(db["clip"])):
                if da["clip"].get(ck) != db["clip"].get(ck):
                    out.append(f"clip.{ck}: {da['clip'].get(ck)!r} != {db['clip'].get(ck)!r}")
        elif da.get(key) != db.get(key):
            out.append(f"{key}: {da.get(key)!r} != {db.get(key)!r}")
    return out


def _check_requested_fields(cfg: TrainConfig, found: UCoFiAConfig, source: str) -> None:
    """Model fields set in the training config must agree with the checkpoint's architecture."""
    fields = dict(cfg.model.fields)
    clip = fields.pop("clip", None) or {}
    have = found.to_dict()
    bad = []
    for key, value in fields.items():
        want = list(value) if isinstance(value, (list, tuple)) else value
        got = list(have[key]) if isinstance(have[key], (list, tuple)) else have[key]
        if want != got:
            bad.append(f"{key}: config {value!r}, checkpoint {have[key]!r}")
    for key, value in clip.items():
        if have["clip"].get(key) != value:
            bad.append(f"clip.{key}: config {value!r}, checkpoint {have['clip'].get(key)!r}")
    if bad:
        raise CheckpointError(
            f"{source} has another architecture than the training config asks for: {'; '.join(bad)}. "
            "Remove those model fields from the config or pick a matching checkpoint")


def build_training_model(cfg: TrainConfig, seed: int, resume_dir: Path | None = None) -> tuple[UCoFiA, dict[str, Any]]:
    """(model in train mode, meta of the loaded checkpoint or {}); raises before any data work."""
    if resume_dir is not None:
        if not (resume_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"cannot resume: {resume_dir} has no {CONFIG_FILE}; the run never saved "
                                  "a checkpoint (start it again without --resume)")
        saved = UCoFiAConfig.from_json(resume_dir / CONFIG_FILE)
        if not cfg.model.init_checkpoint:
            want = cfg.model_config()
            diff = config_differences(saved, want)
            if diff:
                raise CheckpointError(
                    f"cannot resume from {resume_dir}: its architecture differs from the config "
                    f"({'; '.join(diff[:6])})")
        model, meta = load_checkpoint(resume_dir, with_training_state=True)
        return model.train(), meta
    m = cfg.model
    if m.init_checkpoint:
        path = Path(m.init_checkpoint)
        if not path.exists():
            raise CheckpointError(f"model.init_checkpoint {path} does not exist")
        if path.is_dir():
            found = UCoFiAConfig.from_json(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
            if found is None:
                raise CheckpointError(f"model.init_checkpoint {path} is a directory without {CONFIG_FILE}")
            _check_requested_fields(cfg, found, str(path))
            model, meta = load_checkpoint(path)
        else:
            model, meta = load_reference_checkpoint(path), {}
            _check_requested_fields(cfg, model.config, str(path))
        return model.train(), meta
    model_cfg = cfg.model_config()
    if m.pretrained:
        pre = Path(m.pretrained)
        if (("/" in m.pretrained or pre.suffix in (".pt", ".bin", ".pth", ".safetensors"))
                and not pre.exists()):
            raise CheckpointError(f"model.pretrained {pre} does not exist (give a local CLIP weights file "
                                  "or an open_clip pretrained tag such as 'openai')")
        if pre.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = {k: v.float() for k, v in load_file(str(pre)).items()}
        else:
            state = load_clip_state(m.pretrained, model_name=m.backbone)
        try:
            model = init_from_clip(model_cfg, state, seed=seed)
        except CheckpointError as exc:
            raise CheckpointError(f"model.pretrained {m.pretrained}: {exc}. Pick the matching "
                                  "model.backbone or model.clip fields") from None
        return model.train(), {}
    return build_model(model_cfg, seed=seed).train(), {}


def model_config_for(cfg: TrainConfig) -> UCoFiAConfig:
    """The model config without building the model (init_checkpoint: read its config.json)."""
    path = cfg.model.init_checkpoint
    if path and Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file():
        return UCoFiAConfig.from_json(Path(path) / CONFIG_FILE)
    try:
        return cfg.model_config()
    except (ConfigError, TypeError) as exc:
        raise TrainConfigError(str(exc)) from None


__all__ = ["build_training_model", "config_differences", "model_config_for"]
