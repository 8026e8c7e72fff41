"""Training config: YAML + overrides, validation errors before any work, optimizer groups, schedule."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from train_helpers import synthetic_splits, tiny_train_config

from ucofia.checkpoints import CheckpointError, save_checkpoint
from ucofia.cli import main
from ucofia.model import build_model
from ucofia.training.config import TrainConfigError, load_config, parse_override
from ucofia.training.optim import build_optimizer, lr_factor, param_groups
from ucofia.training.trainer import Trainer


def test_packaged_configs_load():
    demo = load_config("demo")
    assert demo.model.backbone == "tiny" and demo.optim.coef_lr == 1.0
    assert demo.model_config().max_frames == 12
    ref = load_config("msrvtt")
    assert ref.optim.betas == (0.9, 0.98) and ref.optim.eps == 1e-6 and ref.optim.weight_decay == 0.2
    assert ref.optim.lr == 1e-4 and ref.optim.coef_lr == 1e-3 and ref.optim.warmup_proportion == 0.1


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  backbone: tiny\n  max_frames: 4\n  clip:\n    embed_dim: 32\n"
                    "optim:\n  lr: 0.001\n  betas: [0.8, 0.9]\n")
    cfg = load_config(str(path), dict([parse_override("optim.lr=3e-4"), parse_override("model.clip.vision_width=32"),
                                       parse_override("data.val_split=null")]))
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.val_split is None
    mc = cfg.model_config()
    assert (mc.max_frames, mc.clip.embed_dim, mc.clip.vision_width) == (4, 32, 32)
    # round trip through YAML
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(str(again)).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("override,match", [
    ({"optim.lr": -1e-4}, "optim.lr must be positive"),
    ({"optim.lr": "fast"}, "optim.lr must be a number"),
    ({"optim.epochs": 0}, "optim.epochs must be >= 1"),
    ({"optim.batch_size": 10, "optim.grad_accum": 3}, "divisible"),
    ({"optim.warmup_proportion": 1.5}, "warmup_proportion"),
    ({"optim.precision": "fp8"}, "optim.precision must be one of"),
    ({"optim.learning_rate": 1e-4}, "unknown config field 'optim.learning_rate'"),
    ({"training.lr": 1e-4}, "unknown config field"),
    ({"model.max_frame": 8}, "unknown model field 'max_frame'"),
    ({"model.top_k": 0}, "top_k must be a positive integer"),
    ({"model.backbone": "NoSuchNet-99"}, "not an open_clip model name"),
    ({"data.val_split": "test"}, "never be selected on the test split"),
    ({"eval.select_metric": "t2v.all.R2"}, "select_metric"),
    ({"eval.sk": False, "eval.select_metric": "t2v.all_sk.R1"}, "needs eval.sk"),
    ({"run.device": "tpu"}, "run.device"),
])
def test_bad_values_are_named(override, match):
    with pytest.raises(TrainConfigError, match=match):
        load_config("demo", override)


def test_unknown_yaml_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(TrainConfigError, match=f"{path}: unknown config section"):
        load_config(str(path))


def test_reference_param_groups_and_schedule():
    cfg = tiny_train_config(optim__lr=1e-4, optim__coef_lr=1e-3)
    model = build_model(cfg.model_config(), seed=0)
    groups = {g["name"]: g for g in param_groups(model, cfg.optim)}
    names = {id(p): n for n, p in model.named_parameters()}
    clip_lr = {g["lr"] for k, g in groups.items() if k.startswith("clip")}
    assert len(clip_lr) == 1 and clip_lr.pop() == pytest.approx(1e-7) and groups["heads/decay"]["lr"] == 1e-4
    no_decay = [names[id(p)] for k, g in groups.items() if k.endswith("no_decay") for p in g["params"]]
    assert no_decay and all("bias" in n or "LayerNorm" in n for n in no_decay)
    decay = [names[id(p)] for k, g in groups.items() if k.endswith("/decay") for p in g["params"]]
    assert "clip.ln_final.weight" in decay  # the reference's rule only matches 'LayerNorm' names
    assert all(g["weight_decay"] == 0.2 for k, g in groups.items() if k.endswith("/decay"))
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    opt = build_optimizer(model, cfg.optim)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.98)
    # warmup-cosine as the reference: linear warmup over 10 %, then 0.5 (1 + cos(pi x))
    assert lr_factor(0, 100, 0.1, "warmup_cosine") == 0.0
    assert lr_factor(5, 100, 0.1, "warmup_cosine") == pytest.approx(0.5)
    assert lr_factor(50, 100, 0.1, "warmup_cosine") == pytest.approx(0.5)
    assert lr_factor(10, 100, 0.1, "warmup_cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))


def test_cli_errors_before_work(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, ["train", "--config", "demo", "-o", str(out), "--set", "optim.lr=-1"])
    assert res.exit_code != 0 and "optim.lr must be positive" in res.output
    res = runner.invoke(main, ["train", "--config", "demo", "-o", str(out), "--set", "nonsense"])
    assert res.exit_code != 0 and "section.field=value" in res.output
    res = runner.invoke(main, ["train", "--config", "demo", "-o", str(out), "--data", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "does not exist" in res.output
    res = runner.invoke(main, ["train", "--config", str(tmp_path / "nope.yaml"), "-o", str(out)])
    assert res.exit_code != 0 and "not found" in res.output
    res = runner.invoke(main, ["train", "--config", "demo", "-o", str(out), "--resume"])
    assert res.exit_code != 0 and "cannot resume" in res.output
    assert not out.exists()  # nothing was written
    res = runner.invoke(main, ["train", "--config", "demo", "-o", str(out), "--print-config", "--lr", "0.01"])
    assert res.exit_code == 0 and "lr: 0.01" in res.output


def test_checkpoint_of_another_architecture_is_refused_before_data(tmp_path):
    other = tiny_train_config(model__max_frames=3).model_config()
    ckpt = save_checkpoint(tmp_path / "other", build_model(other, seed=0))
    cfg = tiny_train_config(model__init_checkpoint=str(ckpt))  # config asks for 2 frames
    trainer = Trainer(cfg, tmp_path / "run", splits=synthetic_splits())
    with pytest.raises(CheckpointError, match="max_frames: config 2, checkpoint 3"):
        trainer.run()
    assert not (tmp_path / "run").exists()
    # a pretrained CLIP file of the wrong geometry
    from ucofia.clip_towers import build_open_clip

    wrong = tiny_train_config(model__clip__embed_dim=16).model_config()
    torch.save(build_open_clip(wrong.clip).state_dict(), tmp_path / "clip.pt")
    cfg = tiny_train_config(model__backbone="ViT-B-32", model__pretrained=str(tmp_path / "clip.pt"))
    with pytest.raises(CheckpointError, match="geometry"):
        Trainer(cfg, tmp_path / "run2", splits=synthetic_splits()).run()


def test_pretrained_local_clip_file_initialises_the_towers(tmp_path):
    from ucofia.clip_towers import build_open_clip
    from ucofia.training.model_setup import build_training_model

    cfg = tiny_train_config()
    torch.manual_seed(123)
    clip_state = build_open_clip(cfg.model_config().clip).state_dict()
    torch.save(clip_state, tmp_path / "clip.pt")
    cfg = tiny_train_config(model__pretrained=str(tmp_path / "clip.pt"))
    model, _ = build_training_model(cfg, seed=0)
    assert model.training
    own = model.state_dict()
    for key in ("visual.conv1.weight", "token_embedding.weight", "text_projection", "logit_scale"):
        assert torch.equal(own["clip." + key], clip_state[key]), key
