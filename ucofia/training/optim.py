"""Optimizer and learning-rate schedule of the reference recipe.

Parameter groups follow the reference: CLIP parameters (names starting with ``clip.``) train at
``lr * coef_lr``; parameters whose names contain ``bias`` or ``LayerNorm`` get no weight decay
(``no_decay: reference``), or every bias / norm / scalar does (``no_decay: norms_biases``).

Two optimizers: ``adamw`` (torch AdamW, decoupled weight decay) and ``bertadam``, the
reference's BertAdam maths (no bias correction, decoupled decay scaled by the lr, and each
parameter's gradient clipped to norm 1 on its own), written here from its description.
The schedule is the reference's ``warmup_cosine`` on training progress x = step / total:
``x / warmup`` during warmup, then ``0.5 * (1 + cos(pi * x))``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ucofia.training.config import OptimSection

REFERENCE_NO_DECAY = ("bias", "LayerNorm")
CLIP_PREFIX = "clip."


def is_no_decay(name: str, param: torch.Tensor, rule: str) -> bool:
    """Whether parameter ``name`` is excluded from weight decay under ``rule``."""
    if rule == "reference":
        return any(token in name for token in REFERENCE_NO_DECAY)
    if rule == "norms_biases":
        return param.ndim < 2 or "bias" in name or ".ln" in name or "norm" in name.lower() \
            or name.endswith(("class_embedding", "positional_embedding", "logit_scale"))
    raise ValueError(f"unknown no_decay rule {rule!r}")


def param_groups(model: nn.Module, cfg: OptimSection) -> list[dict]:
    """The four reference groups: (clip / heads) x (decay / no decay); empty groups dropped."""
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith(CLIP_PREFIX), is_no_decay(name, param, cfg.no_decay))
        groups.setdefault(key, []).append(param)
    out = []
    for is_clip in (True, False):
        for no_decay in (False, True):
            params = groups.get((is_clip, no_decay))
            if not params:
                continue
            out.append({"params": params, "lr": cfg.lr * (cfg.coef_lr if is_clip else 1.0),
                        "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                        "name": f"{'clip' if is_clip else 'heads'}/{'no_decay' if no_decay else 'decay'}"})
    return out


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, decoupled weight decay, per-parameter gradient clipping.

    ``p -= lr_t * (m / (sqrt(v) + eps) + wd * p)`` with ``m``, ``v`` the running moments.
    The learning rate comes from the group (a LambdaLR schedule multiplies it).
    """

    def __init__(self, params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-6, weight_decay: float = 0.0, max_grad_norm: float = 1.0) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    """AdamW (default) or BertAdam over the reference parameter groups."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, foreach=False)
    if cfg.optimizer == "bertadam":
        return BertAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_factor(step: int, total_steps: int, warmup_proportion: float, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based) out of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    x = step / max(1, total_steps)
    if x < warmup_proportion:
        return x / warmup_proportion
    return 0.5 * (1.0 + math.cos(math.pi * x))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimSection,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with the reference warmup-cosine factor (stepped once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_proportion, cfg.schedule))
