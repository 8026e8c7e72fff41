"""Training configuration: YAML sections, ``--set section.field=value`` overrides, validation.

Torch-free. A training config has five sections plus the model::

    model:       backbone, pretrained, init_checkpoint + any UCoFiAConfig field (e.g. max_frames)
    data:        dataset path / layout / splits / frame cache
    optim:       the reference recipe (AdamW betas (0.9, 0.98), eps 1e-6, wd 0.2, lr 1e-4, ...)
    eval:        evaluation during training (splits, SK bank, best-checkpoint metric)
    checkpoint:  step checkpoints and keep-N pruning
    run:         device, threads, logging

Every value is checked before any work starts; errors name the field and the file it came from.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ucofia.config import ConfigError, UCoFiAConfig, tiny_config, vit_b32_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# ``--config NAME`` shortcuts for the packaged configs.
PRESETS: dict[str, str] = {"demo": "demo_tiny.yaml", "demo_tiny": "demo_tiny.yaml",
                           "msrvtt": "msrvtt_vitb32.yaml", "msrvtt_vitb32": "msrvtt_vitb32.yaml"}
TINY_BACKBONE = "tiny"


class TrainConfigError(ConfigError):
    """A training configuration value is unknown, of the wrong type or out of range."""


@dataclass
class ModelSection:
    """Which model to train. Any other key is a UCoFiAConfig field (``clip`` may be a mapping)."""

    backbone: str = "ViT-B-32"  # "tiny" (random tiny towers) or an open_clip model name
    pretrained: str | None = None  # open_clip --pretrained tag or a local CLIP weights file
    init_checkpoint: str | None = None  # start from a UCoFiA checkpoint (ours or a reference .bin)
    fields: dict[str, Any] = field(default_factory=dict)  # UCoFiAConfig overrides


@dataclass
class DataSection:
    path: str | None = None  # dataset root (MSR-VTT layout, the demo benchmark, ...)
    dataset: str = "auto"  # ucofia.data.readers name (msrvtt, msvd, didemo, ...); auto: MSR-VTT layout / demo
    train_split: str = "train"
    val_split: str | None = "val"  # selects the best checkpoint; never the test split
    test_split: str | None = "test"  # evaluated for reporting only
    cache_dir: str | None = None  # frame cache; default RUN_DIR/frame_cache
    decode_workers: int = 2
    loader_workers: int = 0
    # "caption": one pair per caption per epoch (reference MSR-VTT, expanded sentences);
    # "video": one pair per video per epoch with a random caption (CLIP4Clip non-expanded).
    sampling: str = "caption"
    skip_bad_videos: bool = False  # leave missing / undecodable videos (and their captions) out, with a warning


@dataclass
class OptimSection:
    epochs: int = 5
    batch_size: int = 128  # pairs per optimizer step, over all ranks and accumulation steps
    grad_accum: int = 1
    lr: float = 1e-4
    coef_lr: float = 1e-3  # CLIP towers train at lr * coef_lr
    warmup_proportion: float = 0.1
    schedule: str = "warmup_cosine"  # or "constant"
    weight_decay: float = 0.2
    # "reference": no decay for names containing 'bias' or 'LayerNorm' (the reference rule);
    # "norms_biases": no decay for every bias, norm weight, embedding and scalar (1-D / 0-D tensor).
    no_decay: str = "reference"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    optimizer: str = "adamw"  # or "bertadam": the reference's BertAdam maths (no bias correction)
    max_grad_norm: float = 1.0  # 0 disables clipping
    precision: str = "fp32"  # "bf16" / "fp16" autocast (GPU)
    seed: int = 42
    max_steps: int | None = None  # stop early after this many optimizer steps (schedule unchanged)


@dataclass
class EvalSection:
    every_epochs: int = 1  # evaluate the val split every N epochs (0: only at the end)
    every_steps: int = 0  # and/or every N optimizer steps (0: off)
    video_batch: int = 32
    text_batch: int = 256
    sim_text_chunk: int = 64  # texts x videos per similarity tile (bounds level-3 memory)
    sim_video_chunk: int = 256
    sk: bool = True
    sk_bank_size: int = 0  # training captions in the t2v SK bank (0: all), deterministic subset
    sk_video_bank_size: int = 0  # training videos in the v2t SK bank (0: all)
    select_metric: str = "t2v.all_sk.R1"  # best checkpoint on the val split; MdR/MnR minimise
    test_at_end: bool = True  # evaluate `best` (and `last`) on the test split at the end
    test_last: bool = True  # also test `last` when it differs from `best`
    test_sk: bool = True  # SK biases in the final test evaluation (eval.sk covers the val evaluations)
    test_sk_bank_size: int = 0  # training captions in the final test's t2v SK bank (0: all)


@dataclass
class CheckpointSection:
    every_steps: int = 0  # step checkpoints under RUN_DIR/checkpoints (0: off)
    every_epochs: int = 1  # refresh `last` every N epochs (and always at the end)
    keep: int = 2  # step checkpoints kept (newest); `last` and `best` are always kept


@dataclass
class RunSection:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int | None = None  # torch CPU threads (None: torch default)
    # pin PyTorch's CPU kernels so that training gives the same weights on every x86-64 CPU with
    # AVX2 (ucofia.training.cpu_numerics); needs num_threads; CPU steps take about 1.8x as long
    reproducible_cpu: bool = False
    log_every: int = 10
    progress: bool = True
    dist_backend: str = "auto"  # nccl on GPU, gloo on CPU
    dist_timeout_min: int = 60  # collective timeout: ranks wait while rank 0 evaluates
    find_unused_parameters: bool = False  # DDP: every parameter gets a gradient in training mode


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)
    source: str = "<defaults>"  # where the values came from (for error messages)

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            if name == "model":
                extra = section.pop("fields")
                section.update(extra)
            for key, value in section.items():
                if isinstance(value, tuple):
                    section[key] = list(value)
            out[name] = section
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---- the model config -----------------------------------------------------------------
    def model_config(self) -> UCoFiAConfig:
        """The UCoFiAConfig this run builds (backbone preset + field overrides), validated."""
        return build_model_config(self.model.backbone, self.model.fields, self.source)


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "optim": OptimSection,
                             "eval": EvalSection, "checkpoint": CheckpointSection, "run": RunSection}
MODEL_KEYS = ("backbone", "pretrained", "init_checkpoint")
UCOFIA_FIELDS = {f.name for f in dataclasses.fields(UCoFiAConfig)}


# ---- loading ------------------------------------------------------------------------------------
def resolve_config_path(name_or_path: str) -> Path:
    """``demo`` / ``msrvtt`` -> the packaged YAML; anything else is a file path."""
    if name_or_path in PRESETS:
        return CONFIG_DIR / PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise TrainConfigError(
            f"config file {path} not found (give a YAML file, or one of the packaged names: "
            f"{', '.join(sorted(PRESETS))})")
    return path


def load_config(name_or_path: str | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, validate. Torch-free."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: the top level must be a mapping of sections {sorted(SECTIONS)}")
        raw = loaded
    cfg = config_from_dict(raw, source)
    if overrides:
        apply_overrides(cfg, overrides)
    return validate(cfg)


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> TrainConfig:
    """Build a TrainConfig from nested mappings, rejecting unknown sections and fields."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise TrainConfigError(f"{source}: unknown config section(s) {unknown}; known: {sorted(SECTIONS)}")
    cfg = TrainConfig(source=source)
    for name, values in raw.items():
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise TrainConfigError(f"{source}: section '{name}' must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            set_field(cfg, f"{name}.{key}", value)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``section.field=value`` -> (dotted key, YAML-parsed value)."""
    if "=" not in text:
        raise TrainConfigError(f"--set {text!r}: expected section.field=value (e.g. optim.lr=3e-4)")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """Set dotted keys (``optim.lr``, ``model.clip.embed_dim``) on ``cfg`` in place."""
    for key, value in overrides.items():
        set_field(cfg, key, value, origin="command line")
    return cfg


def set_field(cfg: TrainConfig, dotted: str, value: Any, origin: str | None = None) -> None:
    """Set one dotted field with type coercion; unknown names raise TrainConfigError."""
    where = origin or cfg.source
    parts = dotted.split(".")
    section_name = parts[0]
    if section_name not in SECTIONS or len(parts) < 2:
        raise TrainConfigError(
            f"{where}: unknown config field {dotted!r}; fields are section.name with sections {sorted(SECTIONS)}")
    section = getattr(cfg, section_name)
    name = parts[1]
    if section_name == "model" and name not in MODEL_KEYS:
        if name not in UCOFIA_FIELDS:
            raise TrainConfigError(
                f"{where}: unknown model field {name!r}; use backbone/pretrained/init_checkpoint or a "
                f"UCoFiAConfig field ({', '.join(sorted(UCOFIA_FIELDS))})")
        if len(parts) > 2:
            if name != "clip" or len(parts) != 3:
                raise TrainConfigError(f"{where}: unknown config field {dotted!r}")
            clip = dict(section.fields.get("clip") or {})
            clip[parts[2]] = value
            section.fields["clip"] = clip
        else:
            section.fields[name] = value
        return
    if len(parts) != 2:
        raise TrainConfigError(f"{where}: unknown config field {dotted!r}")
    known = {f.name: f for f in dataclasses.fields(section) if f.name != "fields"}
    if name not in known:
        raise TrainConfigError(
            f"{where}: unknown config field {dotted!r}; known {section_name} fields: {sorted(known)}")
    setattr(section, name, _coerce(value, known[name].type, dotted, where))


def _coerce(value: Any, annotation: Any, dotted: str, where: str) -> Any:
    text = str(annotation)
    optional = "None" in text
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise TrainConfigError(f"{where}: {dotted} may not be empty")
    base = text.replace("| None", "").strip()

    def bad(expected: str) -> TrainConfigError:
        return TrainConfigError(f"{where}: {dotted} must be {expected}, got {value!r}")

    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if base == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise bad("an integer")
    if base == "float":
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if base.startswith("tuple"):
        if isinstance(value, str):
            value = value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",")
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise bad("a pair of numbers, e.g. [0.9, 0.98]")
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise bad("a pair of numbers") from None
    if base == "str":
        if isinstance(value, (dict, list)):
            raise bad("a string")
        return str(value)
    return value


# ---- validation ---------------------------------------------------------------------------------
CHOICES: dict[str, tuple[str, ...]] = {
    "data.sampling": ("caption", "video"),
    "optim.schedule": ("warmup_cosine", "constant"),
    "optim.no_decay": ("reference", "norms_biases"),
    "optim.optimizer": ("adamw", "bertadam"),
    "optim.precision": ("fp32", "bf16", "fp16"),
    "run.dist_backend": ("auto", "nccl", "gloo"),
}
METRIC_DIRECTIONS = ("t2v", "v2t")
METRIC_VARIANTS = ("video_sentence", "frame_sentence", "patch_word", "all", "all_sk")
METRIC_NAMES = ("R1", "R5", "R10", "MdR", "MnR")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check ranges and choices; raise TrainConfigError naming the field and the source file."""
    src = cfg.source

    def fail(msg: str) -> None:
        raise TrainConfigError(f"{src}: {msg}")

    for dotted, choices in CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            fail(f"{dotted} must be one of {list(choices)}, got {value!r}")
    o = cfg.optim
    if o.epochs < 1:
        fail(f"optim.epochs must be >= 1, got {o.epochs}")
    if o.batch_size < 2:
        fail(f"optim.batch_size must be >= 2 (a contrastive batch needs negatives), got {o.batch_size}")
    if o.grad_accum < 1:
        fail(f"optim.grad_accum must be >= 1, got {o.grad_accum}")
    if o.batch_size % o.grad_accum:
        fail(f"optim.batch_size ({o.batch_size}) must be divisible by optim.grad_accum ({o.grad_accum})")
    if o.batch_size // o.grad_accum < 2:
        fail("optim.batch_size / optim.grad_accum must be >= 2 pairs per micro-batch")
    if not o.lr > 0:
        fail(f"optim.lr must be positive, got {o.lr}")
    if not o.coef_lr > 0:
        fail(f"optim.coef_lr must be positive, got {o.coef_lr}")
    if not 0 <= o.warmup_proportion < 1:
        fail(f"optim.warmup_proportion must be in [0, 1), got {o.warmup_proportion}")
    if o.weight_decay < 0:
        fail(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if not all(0 <= b < 1 for b in o.betas):
        fail(f"optim.betas must both be in [0, 1), got {list(o.betas)}")
    if not o.eps > 0:
        fail(f"optim.eps must be positive, got {o.eps}")
    if o.max_grad_norm < 0:
        fail(f"optim.max_grad_norm must be >= 0 (0 disables clipping), got {o.max_grad_norm}")
    if o.seed < 0:
        fail(f"optim.seed must be >= 0, got {o.seed}")
    if o.max_steps is not None and o.max_steps < 1:
        fail(f"optim.max_steps must be >= 1 or null, got {o.max_steps}")
    e = cfg.eval
    for name in ("every_epochs", "every_steps", "sk_bank_size", "sk_video_bank_size", "test_sk_bank_size"):
        if getattr(e, name) < 0:
            fail(f"eval.{name} must be >= 0, got {getattr(e, name)}")
    for name in ("video_batch", "text_batch", "sim_text_chunk", "sim_video_chunk"):
        if getattr(e, name) < 1:
            fail(f"eval.{name} must be >= 1, got {getattr(e, name)}")
    parse_metric(e.select_metric, src)
    if e.select_metric.split(".")[1] == "all_sk" and not e.sk:
        fail(f"eval.select_metric {e.select_metric!r} needs eval.sk: true")
    c = cfg.checkpoint
    if c.every_steps < 0:
        fail(f"checkpoint.every_steps must be >= 0, got {c.every_steps}")
    if c.every_epochs < 0:
        fail(f"checkpoint.every_epochs must be >= 0, got {c.every_epochs}")
    if c.keep < 0:
        fail(f"checkpoint.keep must be >= 0, got {c.keep}")
    r = cfg.run
    if r.num_threads is not None and r.num_threads < 1:
        fail(f"run.num_threads must be >= 1 or null, got {r.num_threads}")
    if r.reproducible_cpu and r.num_threads is None:
        fail("run.reproducible_cpu needs run.num_threads: the result depends on how many threads split "
             "each reduction")
    if r.dist_timeout_min < 1:
        fail(f"run.dist_timeout_min must be >= 1, got {r.dist_timeout_min}")
    if r.log_every < 1:
        fail(f"run.log_every must be >= 1, got {r.log_every}")
    if not (r.device in ("auto", "cpu", "cuda") or r.device.startswith("cuda:")):
        fail(f"run.device must be auto, cpu, cuda or cuda:N, got {r.device!r}")
    d = cfg.data
    if d.decode_workers < 1:
        fail(f"data.decode_workers must be >= 1, got {d.decode_workers}")
    if d.loader_workers < 0:
        fail(f"data.loader_workers must be >= 0, got {d.loader_workers}")
    if not d.train_split:
        fail("data.train_split must be set")
    if d.val_split is not None and d.test_split is not None and d.val_split == d.test_split:
        fail(f"data.val_split and data.test_split are both {d.val_split!r}: the best checkpoint must "
             "never be selected on the test split")
    m = cfg.model
    if m.init_checkpoint and m.pretrained:
        fail("model.init_checkpoint and model.pretrained are exclusive (the checkpoint holds CLIP weights)")
    if not m.init_checkpoint:
        cfg.model_config()  # raises on bad model fields
    return cfg


def parse_metric(name: str, source: str = "<config>") -> tuple[str, str, str]:
    """``t2v.all_sk.R1`` -> (direction, variant, metric); raise on anything else."""
    parts = name.split(".")
    if (len(parts) != 3 or parts[0] not in METRIC_DIRECTIONS or parts[1] not in METRIC_VARIANTS
            or parts[2] not in METRIC_NAMES):
        raise TrainConfigError(
            f"{source}: eval.select_metric {name!r} must be direction.variant.metric with direction in "
            f"{list(METRIC_DIRECTIONS)}, variant in {list(METRIC_VARIANTS)}, metric in {list(METRIC_NAMES)}")
    return parts[0], parts[1], parts[2]


def metric_higher_is_better(name: str) -> bool:
    return name.split(".")[-1].startswith("R")


def build_model_config(backbone: str, fields: Mapping[str, Any], source: str = "<config>") -> UCoFiAConfig:
    """Backbone preset (``tiny``, ``ViT-B-32`` or another open_clip ViT) + field overrides."""
    fields = dict(fields)
    clip_over = fields.pop("clip", None) or {}
    if not isinstance(clip_over, Mapping):
        raise TrainConfigError(f"{source}: model.clip must be a mapping of CLIP geometry fields")
    try:
        if backbone == TINY_BACKBONE:
            base = tiny_config()
        elif backbone in ("ViT-B-32", "ViT-B/32"):
            base = vit_b32_config()
        else:
            base = UCoFiAConfig(clip=open_clip_geometry(backbone), clip_model_name=backbone)
        data = base.to_dict()
        data["clip"].update(clip_over)
        data.update(fields)
        return UCoFiAConfig.from_dict(data)
    except ConfigError as exc:
        if isinstance(exc, TrainConfigError):
            raise
        raise TrainConfigError(f"{source}: model: {exc}") from None
    except TypeError as exc:
        raise TrainConfigError(f"{source}: model: {exc}") from None


def open_clip_geometry(name: str):
    """CLIPConfig for an open_clip ViT model name (reads open_clip's model config; no weights)."""
    from ucofia.config import CLIPConfig

    try:
        import open_clip
    except ImportError:  # pragma: no cover - open_clip is a dependency
        raise TrainConfigError(f"model.backbone {name!r} needs open_clip installed") from None
    spec = open_clip.get_model_config(name)
    if spec is None:
        raise TrainConfigError(
            f"model.backbone {name!r} is not an open_clip model name (see open_clip.list_models()), "
            "or use 'tiny'")
    vision, text = spec.get("vision_cfg", {}), spec.get("text_cfg", {})
    if "timm_model_name" in vision or "hf_model_name" in text or isinstance(vision.get("layers"), (list, tuple)):
        raise TrainConfigError(f"model.backbone {name!r} is not a plain ViT CLIP; UCoFiA needs a ViT CLIP")
    vw = vision.get("width", 768)
    tw = text.get("width", 512)
    head_width = vision.get("head_width", 64)
    return CLIPConfig(
        embed_dim=spec["embed_dim"], image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 32), vision_width=vw, vision_layers=vision.get("layers", 12),
        vision_heads=max(1, vw // head_width), context_length=text.get("context_length", 77),
        vocab_size=text.get("vocab_size", 49408), text_width=tw, text_layers=text.get("layers", 12),
        text_heads=text.get("heads", 8))
