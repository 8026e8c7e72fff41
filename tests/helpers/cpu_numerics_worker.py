"""The training run that tests/ucofia/test_train_cpu_numerics.py starts in fresh processes (a spawned
process imports it by name, so it lives in a helper module)."""
from __future__ import annotations

import json
from pathlib import Path

from train_helpers import tiny_train_config

STEPS = 3


def train_and_fingerprint(out: str, pin: bool) -> None:
    """Train STEPS steps of the tiny model in this (fresh) process; write the weights' fingerprint."""
    if pin:
        from ucofia.training.cpu_numerics import apply_env

        apply_env()  # before torch computes anything, as `ucofia train` does
    import torch
    from train_helpers import synthetic_splits

    from ucofia.checkpoints import weights_fingerprint
    from ucofia.training.trainer import Trainer

    cfg = tiny_train_config(run__reproducible_cpu=pin, optim__max_steps=STEPS, eval__test_at_end=False,
                            eval__every_epochs=0)
    trainer = Trainer(cfg, Path(out).parent / "run", splits=synthetic_splits())
    trainer.run()
    Path(out).write_text(json.dumps({"weights": weights_fingerprint(trainer._model),
                                     "capability": torch.backends.cpu.get_cpu_capability()}))
