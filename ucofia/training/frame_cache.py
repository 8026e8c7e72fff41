"""Frame cache: decode every video of a split once into uint8 ``.npy`` shards read by memmap.

Layout (one directory per split and decoding fingerprint, written atomically)::

    CACHE/<split>-<fingerprint>/
        frames.npy   uint8 [V, max_frames, S, S, 3]  (RGB after resize + centre crop; padding 0)
        mask.npy     uint8 [V, max_frames]           (1 = real frame)
        meta.json    video ids, source files, decoding spec, failures, fingerprint

The fingerprint covers the decoding spec and every source file's path, size and mtime, so a
changed video or setting builds a new cache instead of reusing stale frames. Torch-free.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ucofia.io_utils import atomic_directory, atomic_write_text

CACHE_FORMAT = "ucofia.frame_cache/1"
FRAMES_FILE = "frames.npy"
MASK_FILE = "mask.npy"
META_FILE = "meta.json"


class FrameCacheError(RuntimeError):
    """Videos of a split could not be decoded into the cache."""


@dataclass(frozen=True)
class CacheItem:
    """One video to cache: its id, file and optional (start, end) window in whole seconds."""

    video_id: str
    path: str
    start_time: int | None = None
    end_time: int | None = None


@dataclass
class CachedSplit:
    """A split's cached frames (memmaps) and the videos that failed to decode (when skipped)."""

    directory: Path
    video_ids: list[str]
    frames: np.ndarray  # uint8 [V, F, S, S, 3] (memmap)
    video_mask: np.ndarray  # uint8 [V, F]
    failed: dict[str, str]  # video id -> reason
    built: bool = False  # True when this call decoded the videos (False: an existing cache was opened)


def _file_signature(path: str) -> list[Any]:
    try:
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [os.path.abspath(path), None, None]


def fingerprint(items: Sequence[CacheItem], spec: Any) -> str:
    """sha256 over the decoding spec and each item's id, file signature and window."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "spec": dataclasses.asdict(spec)}, sort_keys=True).encode())
    for item in items:
        digest.update(json.dumps([item.video_id, _file_signature(item.path), item.start_time,
                                  item.end_time]).encode())
    return digest.hexdigest()


def cache_directory(root: Path, split: str, items: Sequence[CacheItem], spec: Any) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in split)
    return Path(root) / f"{safe}-{fingerprint(items, spec)[:16]}"


def open_cache(directory: Path) -> CachedSplit:
    """Open a complete cache directory (meta.json is written last, so its presence means complete)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FrameCacheError(f"{directory} is not a complete frame cache (no {META_FILE}); delete it")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise FrameCacheError(f"{directory}: unsupported frame cache format {meta.get('format')!r}; delete it")
    frames = np.load(directory / FRAMES_FILE, mmap_mode="r")
    mask = np.load(directory / MASK_FILE, mmap_mode="r")
    ids = list(meta["video_ids"])
    if frames.shape[0] != len(ids) or mask.shape[0] != len(ids):
        raise FrameCacheError(f"{directory}: {len(ids)} ids but frames {frames.shape}; delete the cache")
    return CachedSplit(directory, ids, frames, mask, dict(meta.get("failed", {})))


def build_or_open(root: Path, split: str, items: Sequence[CacheItem], spec: Any, workers: int = 2,
                  skip_bad: bool = False, progress: Callable[[int, int], None] | None = None) -> CachedSplit:
    """Return the split's cache, decoding the videos first when no matching cache exists.

    Videos that fail to decode raise FrameCacheError naming them, unless ``skip_bad`` (then they
    are left out, listed in meta.json and in ``CachedSplit.failed``).
    """
    from ucofia.data.video import decode_many

    if not items:
        raise FrameCacheError(f"split {split!r} has no videos to cache")
    directory = cache_directory(root, split, items, spec)
    if (directory / META_FILE).is_file():
        return open_cache(directory)
    n, f, s = len(items), spec.max_frames, spec.image_size
    failed: dict[str, str] = {}
    with atomic_directory(directory, force=True) as tmp:
        frames = np.lib.format.open_memmap(tmp / FRAMES_FILE, mode="w+", dtype=np.uint8, shape=(n, f, s, s, 3))
        mask = np.zeros((n, f), dtype=np.uint8)
        ok = np.zeros(n, dtype=bool)
        for done, outcome in enumerate(decode_many(items, spec, workers=workers), 1):
            if outcome.ok:
                frames[outcome.index] = outcome.video.frames_uint8
                mask[outcome.index] = outcome.video.video_mask.astype(np.uint8)
                ok[outcome.index] = True
            else:
                failed[items[outcome.index].video_id] = str(outcome.error)
            if progress is not None:
                progress(done, n)
        if failed and not skip_bad:
            examples = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
            raise FrameCacheError(
                f"{len(failed)} of {n} {split} videos could not be decoded ({examples}). Fix or remove "
                "them, or set data.skip_bad_videos=true to train without them")
        if failed:  # compact: keep only the decoded videos
            keep = np.nonzero(ok)[0]
            frames.flush()
            del frames
            full = np.load(tmp / FRAMES_FILE, mmap_mode="r")
            compact = np.lib.format.open_memmap(tmp / "compact.npy", mode="w+", dtype=np.uint8,
                                                shape=(len(keep), f, s, s, 3))
            for j, i in enumerate(keep):
                compact[j] = full[i]
            compact.flush()
            del compact, full
            os.replace(tmp / "compact.npy", tmp / FRAMES_FILE)
            mask = mask[keep]
        else:
            frames.flush()
            del frames
        np.save(tmp / MASK_FILE, mask)
        ids = [it.video_id for it, good in zip(items, ok) if good]
        meta = {"format": CACHE_FORMAT, "split": split, "fingerprint": fingerprint(items, spec),
                "spec": dataclasses.asdict(spec), "video_ids": ids,
                "files": [it.path for it, good in zip(items, ok) if good], "failed": failed}
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1))
    cached = open_cache(directory)
    cached.built = True
    return cached
