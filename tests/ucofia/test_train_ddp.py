"""DDP on CPU (gloo, 2 processes): the cross-rank contrastive loss gives the large-batch gradient."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from ddp_workers import BATCH, WORLD, batch, free_port, grad_worker, train_worker
from train_helpers import tiny_train_config

from ucofia.model import build_model
from ucofia.training.loss import ContrastiveObjective

# The rank functions are in tests/helpers/ddp_workers.py: spawned ranks import them by module name.

pytestmark = pytest.mark.slow  # two spawned processes with torch each


def test_ddp_gradient_equals_single_process_large_batch(tmp_path):
    mp.start_processes(grad_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    torch.set_num_threads(1)
    model = build_model(tiny_train_config().model_config(), seed=0)
    b = batch(model, list(range(BATCH)))
    loss = ContrastiveObjective(model)(b.input_ids, b.attention_mask, b.frames, b.video_mask)
    loss.backward()
    # every rank computed the loss of the whole (gathered) batch
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(ranks[0]["grads"])
    checked = 0
    for name, g in grads.items():
        for r in ranks:  # DDP all-reduced: identical on both ranks and equal to the large batch
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
        checked += int(g.abs().sum() > 0)
    assert checked > 20  # encoders and heads both received gradient


def test_ddp_training_run_two_processes(tmp_path):
    mp.start_processes(train_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"trained{r}.pt", weights_only=True) for r in range(WORLD)]
    # each rank's own weights: equal on both ranks (DDP averaged every step), moved by training,
    # and what rank 0 saved as `last`
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["trained"] == ranks[1]["trained"] != ranks[0]["initial"]
    from ucofia.checkpoints import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "last")[1]["fingerprint"] == ranks[1]["trained"]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().strip()
