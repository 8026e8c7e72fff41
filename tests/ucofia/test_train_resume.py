"""Exact resume: a run killed after step k and resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
import multiprocessing

import pytest
import torch
from train_helpers import hard_kill_run, synthetic_splits, tiny_train_config

from ucofia.checkpoints import load_checkpoint
from ucofia.training import state as st
from ucofia.training.trainer import TrainError, train


class Killed(RuntimeError):
    pass


def _kill_after(step: int):
    def hook(done: int) -> None:
        if done == step:
            raise Killed(f"simulated kill after step {done}")
    return hook


def _weights(run_dir):
    model, meta = load_checkpoint(run_dir / st.LAST, with_training_state=True)
    return model.state_dict(), meta


@pytest.mark.parametrize("optimizer,accum", [("adamw", 1), ("bertadam", 2)])
def test_resume_is_bit_identical(tmp_path, optimizer, accum):
    splits = synthetic_splits(train_videos=6, captions=2)  # 12 pairs: 3 steps per epoch at batch 4
    cfg = tiny_train_config(optim__optimizer=optimizer, optim__grad_accum=accum, optim__epochs=2,
                            checkpoint__every_steps=2, checkpoint__keep=1, eval__sk=False,
                            eval__select_metric="t2v.all.R1", eval__test_at_end=False)
    full = tmp_path / "full"
    train(cfg, full, splits=splits)

    # killed after step 5 (last checkpoint: step 4, inside the 2nd epoch) -> resume redoes step 5
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        train(cfg, cut, splits=splits, after_step=_kill_after(5))
    assert [s for s, _ in st.list_step_checkpoints(cut)] == [4]  # keep=1 pruned step 2
    result = train(cfg, cut, resume=True, splits=splits)
    assert result.steps == 6

    a, meta_a = _weights(full)
    b, meta_b = _weights(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert meta_a["fingerprint"] == meta_b["fingerprint"]
    # optimizer moments too
    oa, ob = meta_a["training_state"]["optimizer"]["state"], meta_b["training_state"]["optimizer"]["state"]
    for k in oa:
        for name, value in oa[k].items():
            assert torch.equal(value, ob[k][name]), (k, name)
    # metrics.jsonl: the same evaluations, once each
    lines_a = [json.loads(x) for x in (full / st.METRICS_NAME).read_text().splitlines()]
    lines_b = [json.loads(x) for x in (cut / st.METRICS_NAME).read_text().splitlines()]
    assert [r["step"] for r in lines_a] == [r["step"] for r in lines_b] == [3, 6]
    assert [r["metrics"] for r in lines_a] == [r["metrics"] for r in lines_b]


def test_run_dir_guard_and_resume_without_checkpoint(tmp_path):
    splits = synthetic_splits(train_videos=8, captions=1)
    cfg = tiny_train_config(optim__epochs=1, eval__sk=False, eval__select_metric="t2v.all.R1",
                            eval__test_at_end=False)
    with pytest.raises(TrainError, match="cannot resume"):
        train(cfg, tmp_path / "nothing", resume=True, splits=splits)
    run = tmp_path / "run"
    train(cfg, run, splits=splits)
    with pytest.raises(TrainError, match="not empty"):
        train(cfg, run, splits=splits)
    assert (run / st.BEST / "model.safetensors").is_file()


@pytest.mark.slow
def test_resume_after_hard_kill_of_another_process(tmp_path):
    """The killed run is a separate process that dies with os._exit (no cleanup) after step 5."""
    overrides = dict(optim__epochs=2, checkpoint__every_steps=2, eval__sk=False,
                     eval__select_metric="t2v.all.R1", eval__test_at_end=False)
    cut = tmp_path / "cut"
    proc = multiprocessing.get_context("spawn").Process(target=hard_kill_run, args=(str(cut), 5, overrides))
    proc.start()
    proc.join(240)
    assert proc.exitcode == 137
    assert [s for s, _ in st.list_step_checkpoints(cut)] == [2, 4]
    cfg = tiny_train_config(**overrides)
    splits = synthetic_splits(train_videos=6, captions=2)
    train(cfg, cut, resume=True, splits=splits)
    full = tmp_path / "full"
    train(cfg, full, splits=splits)
    a, b = _weights(full)[0], _weights(cut)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
