"""Training data in memory: a split = cached uint8 frames + tokenized captions; pair batches.

``SplitData`` holds one split: frames ``uint8 [V,F,H,W,3]`` (a memmap from the frame cache),
``video_mask [V,F]``, token ids / masks ``[T,L]`` and ``video_of_text [T]``. Training pairs are
drawn in an order that is a pure function of (seed, epoch), so a resumed run replays exactly the
batches an uninterrupted run would have seen. Frames are normalised on the target device
(``/255``, CLIP mean/std from the model config, padded frames exactly zero, as the reference).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ucofia.config import UCoFiAConfig


@dataclass
class SplitData:
    """One dataset split ready for the model."""

    name: str
    video_ids: list[str]
    frames: np.ndarray  # uint8 [V, F, H, W, 3]
    video_mask: np.ndarray  # [V, F], 1 = real frame
    input_ids: np.ndarray  # int64 [T, L]
    attention_mask: np.ndarray  # [T, L]
    video_of_text: np.ndarray  # int64 [T]
    captions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        v, t = len(self.video_ids), len(self.video_of_text)
        if self.frames.shape[0] != v or self.video_mask.shape[0] != v:
            raise ValueError(f"split {self.name}: {v} videos but frames {self.frames.shape} / "
                             f"mask {self.video_mask.shape}")
        if self.input_ids.shape[0] != t or self.attention_mask.shape[0] != t:
            raise ValueError(f"split {self.name}: {t} captions but ids {self.input_ids.shape}")
        if t and (self.video_of_text.min() < 0 or self.video_of_text.max() >= v):
            raise ValueError(f"split {self.name}: video_of_text points outside its {v} videos")

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_texts(self) -> int:
        return len(self.video_of_text)

    def captions_of_video(self) -> list[np.ndarray]:
        """Caption rows of every video (in caption order)."""
        order = np.argsort(self.video_of_text, kind="stable")
        counts = np.bincount(self.video_of_text, minlength=self.num_videos)
        return np.split(order, np.cumsum(counts)[:-1])


def frames_to_model(frames: torch.Tensor, video_mask: torch.Tensor, config: UCoFiAConfig) -> torch.Tensor:
    """uint8 [V,F,H,W,3] -> float32 [V,F,3,H,W]: /255, CLIP mean/std, padded frames all zero."""
    x = frames.permute(0, 1, 4, 2, 3).to(torch.float32).div_(255.0)
    mean = torch.tensor(config.image_mean, dtype=torch.float32, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32, device=x.device).view(1, 1, 3, 1, 1)
    x = (x - mean) / std
    return x * video_mask.to(x.dtype).view(*video_mask.shape, 1, 1, 1)


def epoch_pairs(split: SplitData, epoch: int, seed: int, sampling: str) -> np.ndarray:
    """Caption rows of this epoch's (caption, video) pairs, in training order.

    ``caption``: every caption once, shuffled. ``video``: every video once, shuffled, each with
    one of its captions at random. Deterministic in (seed, epoch) and independent of any RNG state.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x7A11]))
    if sampling == "caption":
        return rng.permutation(split.num_texts)
    if sampling == "video":
        groups = split.captions_of_video()
        videos = [v for v, g in enumerate(groups) if len(g)]
        order = rng.permutation(len(videos))
        picks = rng.integers(0, 1 << 30, size=len(videos))
        return np.array([groups[videos[i]][picks[j] % len(groups[videos[i]])] for j, i in enumerate(order)],
                        dtype=np.int64)
    raise ValueError(f"unknown sampling {sampling!r}")


def pairs_per_epoch(split: SplitData, sampling: str) -> int:
    if sampling == "caption":
        return split.num_texts
    return int(np.count_nonzero(np.bincount(split.video_of_text, minlength=split.num_videos)))


@dataclass
class Batch:
    """A micro-batch on its device (frames normalised)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    frames: torch.Tensor
    video_mask: torch.Tensor


def host_batch(split: SplitData, text_rows: np.ndarray) -> dict[str, torch.Tensor]:
    """CPU tensors of one micro-batch (uint8 frames; cheap to send to a device)."""
    rows = np.asarray(text_rows, dtype=np.int64)
    vids = split.video_of_text[rows]
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(split.input_ids[rows], dtype=np.int64)),
        "attention_mask": torch.from_numpy(np.ascontiguousarray(split.attention_mask[rows], dtype=np.int64)),
        "frames": torch.from_numpy(np.ascontiguousarray(split.frames[vids])),
        "video_mask": torch.from_numpy(np.ascontiguousarray(split.video_mask[vids], dtype=np.float32)),
    }


def to_device(batch: dict[str, torch.Tensor], config: UCoFiAConfig, device: torch.device) -> Batch:
    mask = batch["video_mask"].to(device, non_blocking=True)
    frames = batch["frames"].to(device, non_blocking=True)
    return Batch(input_ids=batch["input_ids"].to(device, non_blocking=True),
                 attention_mask=batch["attention_mask"].to(device, non_blocking=True),
                 frames=frames_to_model(frames, mask, config), video_mask=mask)


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` of one epoch for one rank (a DataLoader with batch_size=None prefetches it).

    The epoch's pairs are cut into global micro-batches of ``micro * world`` pairs (drop_last);
    rank r takes the r-th contiguous slice, so gathering over ranks restores the global batch.
    ``start`` skips micro-batches already consumed (resume inside an epoch).
    """

    def __init__(self, split: SplitData, order: np.ndarray, micro: int, world: int, rank: int,
                 start: int = 0, count: int | None = None) -> None:
        self.split, self.order, self.micro, self.world, self.rank = split, order, micro, world, rank
        total = len(order) // (micro * world)
        self.start = start
        self.stop = total if count is None else min(total, start + count)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = self.start + i
        lo = g * self.micro * self.world + self.rank * self.micro
        return host_batch(self.split, self.order[lo:lo + self.micro])


def iterate(dataset: MicroBatches, workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the micro-batches in order, with ``workers`` background loader processes (0: inline).

    A private generator keeps the DataLoader from drawing on the global torch RNG.
    """
    if workers == 0:
        for i in range(len(dataset)):
            yield dataset[i]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0),
                                         persistent_workers=False, pin_memory=torch.cuda.is_available())
    yield from loader


def subset_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A deterministic sorted subset of ``size`` out of ``n`` indices (all when size is 0 or >= n)."""
    if size <= 0 or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B4E]))
    return np.sort(rng.choice(n, size=size, replace=False))


def batched(indices: Sequence[int] | np.ndarray, size: int) -> Iterator[np.ndarray]:
    indices = np.asarray(indices)
    for lo in range(0, len(indices), size):
        yield indices[lo:lo + size]
