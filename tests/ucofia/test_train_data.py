"""Training data: device-side normalisation matches the reference preprocessing, batch order."""
from __future__ import annotations

import numpy as np
import torch
from train_helpers import synthetic_split, tiny_train_config

from ucofia.data.video import VideoSpec, to_model_input
from ucofia.training.data import MicroBatches, epoch_pairs, frames_to_model, iterate, pairs_per_epoch


def test_frames_to_model_is_bit_identical_to_reference_preprocessing():
    cfg = tiny_train_config().model_config()
    split = synthetic_split("x", 5)
    spec = VideoSpec.from_config(cfg)
    ours = frames_to_model(torch.from_numpy(np.asarray(split.frames)),
                           torch.from_numpy(split.video_mask.astype(np.float32)), cfg).numpy()
    for v in range(split.num_videos):
        ref = to_model_input(split.frames[v], split.video_mask[v], spec)
        assert np.array_equal(ours[v], ref)
    assert (ours[0, -1] == 0).all()  # padded frame: zero in normalised space


def test_epoch_order_is_deterministic_and_covers_the_split():
    split = synthetic_split("train", 10, captions_per_video=3)
    a = epoch_pairs(split, 1, seed=5, sampling="caption")
    assert np.array_equal(a, epoch_pairs(split, 1, seed=5, sampling="caption"))
    assert sorted(a.tolist()) == list(range(30))
    assert not np.array_equal(a, epoch_pairs(split, 2, seed=5, sampling="caption"))
    v = epoch_pairs(split, 0, seed=5, sampling="video")
    assert len(v) == pairs_per_epoch(split, "video") == 10
    assert sorted(split.video_of_text[v].tolist()) == list(range(10))  # each video once


def test_rank_slices_restore_the_global_batch_and_workers_keep_order():
    split = synthetic_split("train", 12)
    order = epoch_pairs(split, 0, seed=1, sampling="caption")
    single = list(iterate(MicroBatches(split, order, micro=4, world=1, rank=0), workers=0))
    ranks = [list(iterate(MicroBatches(split, order, micro=2, world=2, rank=r), workers=0)) for r in range(2)]
    for step, batch in enumerate(single):
        joined = torch.cat([ranks[0][step]["input_ids"], ranks[1][step]["input_ids"]])
        assert torch.equal(joined, batch["input_ids"])
    state = torch.get_rng_state()
    loaded = list(iterate(MicroBatches(split, order, micro=4, world=1, rank=0, start=1), workers=2))
    assert torch.equal(torch.get_rng_state(), state)  # the loader leaves the global RNG alone
    assert len(loaded) == len(single) - 1
    for a, b in zip(loaded, single[1:]):
        assert all(torch.equal(a[k], b[k]) for k in a)
