"""Distributed helpers: torchrun environment, feature all-gather with gradients, rank utilities.

The contrastive loss on every rank uses the features of all ranks (the reference's ``AllGather``):
the forward concatenates every rank's tensor; the backward hands each rank the gradient of its own
slice. Each rank computes the same full-batch loss, so the gradient reaching its own features is
``dL/df_local``; DDP then averages parameter gradients over ranks. To make the averaged gradient
equal the single-process gradient of the large batch, the local slice's gradient is multiplied by
the world size (the reference omits this factor, so its encoder gradients are 1/world_size of the
large-batch ones while the similarity heads get the full gradient).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """World size announced by torchrun (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:local_rank when CUDA is available, else cpu."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"run.device is {preference!r} but CUDA is not available; use run.device=cpu")
        if preference == "cuda":
            return torch.device(f"cuda:{local_rank}")
    return torch.device(preference)


def init_distributed(device_preference: str = "auto", backend: str = "auto", timeout_min: int = 60) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process DistInfo."""
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


class _AllGatherKeepLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(), world, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        local = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return local * ctx.world


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (rank order); identity without a group.

    All ranks must pass the same number of rows. The backward keeps the local slice's gradient
    (times the world size, see the module docstring).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherKeepLocalGrad.apply(tensor)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (identity without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over ranks (for logging)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
