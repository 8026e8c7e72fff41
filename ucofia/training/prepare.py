"""Turn a dataset on disk into SplitData: read annotations, tokenize captions, fill the frame cache.

``check_dataset`` only reads annotation files (cheap) so that a wrong path or split name fails
before any decoding; ``prepare_splits`` then decodes every video once into the frame cache (rank 0,
the other ranks wait) and tokenizes the captions with the CLIP BPE tokenizer.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ucofia.config import UCoFiAConfig
from ucofia.progress import progress_bar
from ucofia.training.config import TrainConfig, TrainConfigError
from ucofia.training.data import SplitData
from ucofia.training.frame_cache import CacheItem, build_or_open

ROLES = ("train", "val", "test")

logger = logging.getLogger(__name__)


@dataclass
class Annotations:
    """A split as the reader returns it, reduced to what training needs."""

    role: str
    name: str
    items: list[CacheItem]
    captions: list[str]
    video_of_text: np.ndarray


def _split_names(cfg: TrainConfig) -> dict[str, str]:
    d = cfg.data
    names = {"train": d.train_split, "val": d.val_split, "test": d.test_split}
    return {role: name for role, name in names.items() if name}


def _to_annotations(role: str, name: str, split: Any) -> Annotations:
    items = [CacheItem(video_id=str(v.video_id), path=str(v.path), start_time=v.start_time, end_time=v.end_time)
             for v in split.videos]
    return Annotations(role, name, items, list(split.texts), np.asarray(split.video_of_text, dtype=np.int64))


MSRVTT_MARKERS = ("MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json", "MSRVTT_train.9k.csv")


def detect_dataset(root: Path) -> str:
    """``auto``: the MSR-VTT layout (which the demo benchmark uses), else ask for data.dataset."""
    if root.is_file() and root.suffix == ".csv":
        return "msrvtt" if root.name.startswith("MSRVTT") else "csv"
    for sub in ("", "msrvtt_data", "annotations", "data"):
        if any((root / sub / marker).is_file() for marker in MSRVTT_MARKERS):
            return "msrvtt"
    raise TrainConfigError(
        f"data.dataset=auto cannot tell the layout of {root} (no MSR-VTT annotation files found); set "
        "data.dataset (--dataset) to one of msrvtt, msvd, didemo, activitynet, lsmdc, vatex, csv")


def check_dataset(cfg: TrainConfig) -> dict[str, Annotations]:
    """Read every configured split's annotations; raise TrainConfigError on a bad path or split."""
    from ucofia.data import readers

    path = cfg.data.path
    if not path:
        raise TrainConfigError(f"{cfg.source}: data.path is not set; pass --data DIR (e.g. the folder "
                               "`ucofia demo-data -o DIR` wrote)")
    root = Path(path)
    if not root.exists():
        raise TrainConfigError(f"data.path {root} does not exist; check the path (or create a demo set with "
                               f"`ucofia demo-data -o {root}`)")
    dataset = cfg.data.dataset if cfg.data.dataset != "auto" else detect_dataset(root)
    out: dict[str, Annotations] = {}
    for role, name in _split_names(cfg).items():
        try:
            split = readers.read_split(dataset, root, name, allow_missing=cfg.data.skip_bad_videos)
        except (readers.DatasetError, ValueError, KeyError, OSError) as exc:
            raise TrainConfigError(f"data: cannot read the {role} split {name!r} "
                                   f"of {root} ({dataset}): {exc}") from None
        if split.missing:
            logger.warning("%s (%d videos missing on disk are left out: %s)", split.summary(), len(split.missing),
                           [m.video_id for m in split.missing[:5]])
        out[role] = _to_annotations(role, name, split)
        if not out[role].items:
            raise TrainConfigError(f"data: the {role} split {name!r} of {root} has no videos")
    return out


def prepare_splits(cfg: TrainConfig, model_config: UCoFiAConfig, run_dir: Path,
                   annotations: dict[str, Annotations], dist_info: Any) -> dict[str, SplitData]:
    """Frame caches (built once by rank 0) + tokenized captions, as SplitData per role."""
    from ucofia.data.tokenizer import ClipTokenizer
    from ucofia.data.video import VideoSpec
    from ucofia.training.distributed import barrier

    spec = VideoSpec.from_config(model_config)
    cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "frame_cache"
    tokenizer = ClipTokenizer()
    out: dict[str, SplitData] = {}
    for role, ann in annotations.items():
        if dist_info.is_main:
            cached = _build(cache_root, ann, spec, cfg)
        barrier()
        if not dist_info.is_main:
            cached = _build(cache_root, ann, spec, cfg)  # opens the finished cache
        keep_videos = {vid: i for i, vid in enumerate(cached.video_ids)}
        if cached.failed and dist_info.is_main:
            logger.warning("%d %s videos could not be decoded and are left out (data.skip_bad_videos): %s",
                           len(cached.failed), ann.name, sorted(cached.failed)[:5])
        ids_of_items = [it.video_id for it in ann.items]
        rows, gt = [], []
        for row, v in enumerate(ann.video_of_text):
            vid = ids_of_items[int(v)]
            if vid in keep_videos:
                rows.append(row)
                gt.append(keep_videos[vid])
        captions = [ann.captions[r] for r in rows]
        try:
            input_ids, mask = tokenizer.tokenize(captions, model_config.max_words)
        except ValueError as exc:
            raise TrainConfigError(f"data: split {ann.name!r}: {exc}") from None
        if int(input_ids.max(initial=0)) >= model_config.clip.vocab_size:
            raise TrainConfigError(f"token ids reach {int(input_ids.max())} but the model vocabulary has "
                                   f"{model_config.clip.vocab_size} entries (model.clip.vocab_size)")
        out[role] = SplitData(ann.name, list(cached.video_ids), cached.frames, cached.video_mask,
                              input_ids, mask, np.asarray(gt, dtype=np.int64), captions)
    return out


def _build(cache_root: Path, ann: Annotations, spec: Any, cfg: TrainConfig):
    start = time.perf_counter()
    with progress_bar(len(ann.items), f"decode {ann.name}", "video", leave=False, show=cfg.run.progress) as bar:
        cached = build_or_open(cache_root, ann.name, ann.items, spec, workers=cfg.data.decode_workers,
                               skip_bad=cfg.data.skip_bad_videos, progress=bar.advance_to)
    how = f"decoded in {time.perf_counter() - start:.1f} s" if cached.built else "reused"
    logger.info("frame cache %s: %d %s videos, %.1f MB uint8, %s", cached.directory.name, len(cached.video_ids),
                ann.role, cached.frames.nbytes / 1e6, how)
    return cached
