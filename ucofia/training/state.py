"""Training state in checkpoints: RNG states, progress counters, run-directory layout, pruning.

A run directory holds::

    RUN_DIR/train_config.yaml      the resolved training config (checked again on --resume)
    RUN_DIR/last/                  latest checkpoint, with training_state.pt (resume from here)
    RUN_DIR/best/                  best checkpoint on the validation split (weights + meta)
    RUN_DIR/checkpoints/step-N/    step checkpoints with training state, newest ``keep`` kept
    RUN_DIR/frame_cache/           decoded uint8 frames (unless data.cache_dir points elsewhere)
    RUN_DIR/metrics.jsonl          one JSON record per evaluation
    RUN_DIR/results.json|.md       final test-split results

Checkpoints are written with ``ucofia.save_checkpoint`` (atomic directory replace); the training
state is plain tensors / lists / numbers so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last"
BEST = "best"
STEP_DIR = "checkpoints"
CONFIG_NAME = "train_config.yaml"
METRICS_NAME = "metrics.jsonl"
STEP_PATTERN = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def capture_rng() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def list_step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete step checkpoint, oldest first."""
    root = Path(run_dir) / STEP_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = STEP_PATTERN.match(child.name)
        if m and child.is_dir() and (child / "model.safetensors").is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def prune_step_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step checkpoints; return what was removed."""
    found = list_step_checkpoints(run_dir)
    doomed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
