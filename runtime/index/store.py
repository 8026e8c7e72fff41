"""Stored feature dtypes of an index (``ucofia-run index --store``): how a shard's features are
written to disk and read back as float32.

* ``float32``: the encoder's outputs as they are (125 KB per ViT-B/32 video).
* ``float16``: every feature in IEEE half precision (half the bytes; relative rounding 2^-11).
* ``int8``: ``frame_features`` and ``patches`` as int8 with one float32 scale per vector
  (symmetric: ``x ~ q * scale``, ``scale = max|x| / 127``; a quarter of the bytes plus 4 bytes a
  vector); the ``video`` vector, which stage 1 of two-stage search ranks by, in float16.

``video_mask`` stays float32 in every store. Readers always get float32 (:func:`decode`); the
scorer computes in float32 tile by tile, so only one tile is ever held decoded.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

STORES = ("float32", "float16", "int8")
# The store of a new index when --store is not given. float16 would halve the bytes, but `ucofia
# parity --store float16` on the trained demo model moved one single level's R@1 by one caption
# (the fused + SK R@1 stayed identical), and the rule for making it the default is identical R@1:
# benchmarks/README.md, "Stored dtype".
DEFAULT_STORE = "float32"
FLOAT16_MAX = float(np.finfo(np.float16).max)
INT8_LEVELS = 127
SCALE_SUFFIX = ".scale"
# role -> on-disk dtype per store (roles not listed: float32)
_DTYPES: dict[str, dict[str, str]] = {
    "float32": {},
    "float16": {"video": "float16", "frame_features": "float16", "patches": "float16"},
    "int8": {"video": "float16", "frame_features": "int8", "patches": "int8"},
}


def check_store(store: str) -> str:
    """``store`` unchanged, or ValueError naming the choices."""
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; choose one of {', '.join(STORES)}")
    return store


def stored_dtype(store: str, role: str) -> str:
    """The on-disk dtype of ``role`` in ``store``."""
    return _DTYPES[check_store(store)].get(role, "float32")


def scale_name(role: str) -> str:
    """File stem of the per-vector scales of an int8 ``role``."""
    return role + SCALE_SUFFIX


def unstorable_rows(features: Mapping[str, np.ndarray], store: str) -> np.ndarray:
    """Boolean [N]: rows with a value float16 cannot hold (|x| > 65504) where ``store`` keeps that role
    in float16 (they would be stored as inf)."""
    n = next(iter(features.values())).shape[0]
    bad = np.zeros(n, dtype=bool)
    for role, value in features.items():
        if stored_dtype(store, role) == "float16":
            bad |= (np.abs(value.reshape(n, -1)) > FLOAT16_MAX).any(axis=1)
    return bad


def encode(features: Mapping[str, np.ndarray], store: str) -> dict[str, np.ndarray]:
    """File stem -> array to save for one shard: each role in its stored dtype, plus ``<role>.scale``
    [N, vectors] float32 for int8 roles. Raises ValueError for values float16 cannot hold."""
    out: dict[str, np.ndarray] = {}
    for role, value in features.items():
        dtype = stored_dtype(store, role)
        value = np.asarray(value, dtype=np.float32)
        if dtype == "int8":
            scale = np.abs(value).max(axis=-1) / np.float32(INT8_LEVELS)
            safe = np.where(scale > 0, scale, np.float32(1))[..., None]
            out[role] = np.clip(np.rint(value / safe), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
            out[scale_name(role)] = scale.astype(np.float32)
        elif dtype == "float16":
            if value.size and float(np.abs(value).max()) > FLOAT16_MAX:
                raise ValueError(f"{role} holds values beyond the float16 range (|x| > {FLOAT16_MAX:g}); "
                                 f"index with --store float32")
            out[role] = value.astype(np.float16)
        else:
            out[role] = value
    return out


def decode(stored: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """float32 values of stored rows (``scale``: the matching rows of the int8 scales, else None)."""
    if scale is None:
        return stored.astype(np.float32, copy=False)
    return stored.astype(np.float32) * np.asarray(scale, dtype=np.float32)[..., None]


def bytes_per_video(store: str, embed_dim: int, frames: int, patches: int) -> int:
    """Bytes of one video's features on disk in ``store`` (array payload, without .npy headers)."""
    shapes = {"video": (embed_dim,), "frame_features": (frames, embed_dim), "patches": (patches, embed_dim),
              "video_mask": (frames,)}
    total = 0
    for role, shape in shapes.items():
        dtype = stored_dtype(store, role)
        total += int(np.prod(shape)) * np.dtype(dtype).itemsize
        if dtype == "int8":
            total += int(np.prod(shape[:-1])) * 4
    return total
