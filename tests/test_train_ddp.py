"""DDP on CPU (gloo, 2 processes): the cross-rank contrastive loss gives the large-batch gradient."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from train_helpers import synthetic_splits, tiny_train_config

from ucofia.model import build_model
from ucofia.training.data import host_batch, to_device
from ucofia.training.loss import ContrastiveObjective

WORLD = 2
BATCH = 6  # global batch: 3 pairs per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})


def _batch(model, rows):
    split = synthetic_splits()["train"]
    return to_device(host_batch(split, rows), model.config, torch.device("cpu"))


def _grad_worker(rank: int, port: int, out: str) -> None:
    """One rank: DDP(objective) on its slice of the global batch; save the averaged gradients."""
    torch.set_num_threads(1)
    _env(rank, port)
    torch.distributed.init_process_group("gloo")
    try:
        model = build_model(tiny_train_config().model_config(), seed=0)  # eval(): hard top-k
        ddp = torch.nn.parallel.DistributedDataParallel(ContrastiveObjective(model), find_unused_parameters=True)
        per = BATCH // WORLD
        b = _batch(model, list(range(rank * per, (rank + 1) * per)))
        loss = ddp(b.input_ids, b.attention_mask, b.frames, b.video_mask)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.grad is not None}}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _train_worker(rank: int, port: int, out: str) -> None:
    """One rank of a full 2-process training run through the Trainer (perturbed top-k on); saves
    the fingerprint of the weights this rank holds before and after training."""
    from ucofia.checkpoints import weights_fingerprint
    from ucofia.training.trainer import Trainer

    _env(rank, port)
    cfg = tiny_train_config(optim__epochs=1, optim__batch_size=4, eval__sk=False,
                            eval__select_metric="t2v.all.R1", run__num_threads=1)
    trainer = Trainer(cfg, Path(out) / "run", splits=synthetic_splits(train_videos=8, captions=1))
    trainer.preflight()
    initial = weights_fingerprint(trainer._model)
    trainer.run()
    torch.save({"initial": initial, "trained": weights_fingerprint(trainer._model)}, f"{out}/trained{rank}.pt")


def test_ddp_gradient_equals_single_process_large_batch(tmp_path):
    mp.start_processes(_grad_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    torch.set_num_threads(1)
    model = build_model(tiny_train_config().model_config(), seed=0)
    b = _batch(model, list(range(BATCH)))
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
    mp.start_processes(_train_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
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
