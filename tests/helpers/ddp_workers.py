"""The rank functions of the DDP tests (tests/ucofia/test_train_ddp.py).

``torch.multiprocessing`` starts each rank with ``spawn``: the child imports the function by its
module name, so the functions live in this helper module (importable by name from tests/helpers,
which the children inherit on sys.path), not in the test module, which pytest imports by path.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from train_helpers import synthetic_splits, tiny_train_config

from ucofia.model import build_model
from ucofia.training.data import host_batch, to_device
from ucofia.training.loss import ContrastiveObjective

WORLD = 2
BATCH = 6  # global batch: 3 pairs per rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})


def batch(model, rows):
    split = synthetic_splits()["train"]
    return to_device(host_batch(split, rows), model.config, torch.device("cpu"))


def grad_worker(rank: int, port: int, out: str) -> None:
    """One rank: DDP(objective) on its slice of the global batch; save the averaged gradients."""
    torch.set_num_threads(1)
    _env(rank, port)
    torch.distributed.init_process_group("gloo")
    try:
        model = build_model(tiny_train_config().model_config(), seed=0)  # eval(): hard top-k
        ddp = torch.nn.parallel.DistributedDataParallel(ContrastiveObjective(model), find_unused_parameters=True)
        per = BATCH // WORLD
        b = batch(model, list(range(rank * per, (rank + 1) * per)))
        loss = ddp(b.input_ids, b.attention_mask, b.frames, b.video_mask)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.grad is not None}}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def train_worker(rank: int, port: int, out: str) -> None:
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
