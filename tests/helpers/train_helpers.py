"""Helpers for the training tests: tiny synthetic splits (frame-cache layout) and tiny configs."""
from __future__ import annotations

from typing import Any

import numpy as np

from ucofia.training.config import TrainConfig, load_config
from ucofia.training.data import SplitData

# A very small model: tiny towers with a 512-token vocabulary, 2 frames, 8 words.
VOCAB = 512
FRAMES = 2
WORDS = 8
IMAGE = 32


def synthetic_split(name: str, videos: int, captions_per_video: int = 1, seed: int = 0,
                    frames: int = FRAMES, words: int = WORDS, image: int = IMAGE) -> SplitData:
    """Random uint8 frames (some padded) and random captions with SOT/EOT, as the frame cache holds."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (videos, frames, image, image, 3), dtype=np.uint8)
    mask = np.ones((videos, frames), np.uint8)
    mask[::3, -1] = 0
    pixels[mask == 0] = 0
    texts = videos * captions_per_video
    ids = rng.integers(1, VOCAB - 2, (texts, words))
    length = rng.integers(3, words, texts)
    for row, n in enumerate(length):
        ids[row, 0] = VOCAB - 2  # "SOT"
        ids[row, n - 1] = VOCAB - 1  # "EOT": the highest id, as the CLIP tokenizer
        ids[row, n:] = 0
    return SplitData(name, [f"{name}{i}" for i in range(videos)], pixels, mask, ids.astype(np.int64),
                     (ids > 0).astype(np.int64), np.repeat(np.arange(videos), captions_per_video))


def synthetic_splits(train_videos: int = 16, val_videos: int = 6, test_videos: int = 6,
                     captions: int = 2) -> dict[str, SplitData]:
    return {"train": synthetic_split("train", train_videos, captions, seed=0),
            "val": synthetic_split("val", val_videos, 1, seed=1),
            "test": synthetic_split("test", test_videos, 1, seed=2)}


def tiny_train_config(**overrides: Any) -> TrainConfig:
    """A TrainConfig for the tiny test model; ``overrides`` are dotted keys with '__' for '.'."""
    values: dict[str, Any] = {
        "model.backbone": "tiny", "model.max_frames": FRAMES, "model.max_words": WORDS,
        "model.clip.vocab_size": VOCAB, "model.clip.embed_dim": 32, "model.clip.vision_width": 32,
        "model.clip.text_width": 32, "model.clip.vision_layers": 1, "model.clip.text_layers": 1,
        "optim.epochs": 2, "optim.batch_size": 4, "optim.lr": 1e-3, "optim.coef_lr": 1.0,
        "eval.sk_bank_size": 8, "eval.sk_video_bank_size": 8, "run.progress": False, "run.num_threads": 1,
        "optim.seed": 3,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, values)


def hard_kill_run(run_dir: str, kill_after: int, overrides: dict[str, Any]) -> None:
    """Train in this process and die like `kill -9` right after optimizer step ``kill_after``."""
    import os

    from ucofia.training.trainer import train

    def die(step: int) -> None:
        if step == kill_after:
            os._exit(137)

    cfg = tiny_train_config(**overrides)
    train(cfg, run_dir, splits=synthetic_splits(train_videos=6, captions=2), after_step=die)
