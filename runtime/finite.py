"""Checks that graph outputs are finite: a NaN or inf feature or score would otherwise be stored or
ranked silently (float16 overflow in a TensorRT engine or fp16 bundle, or a damaged bundle)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NON_FINITE_FIX = ("with a float16 bundle or TensorRT engine this is usually float16 overflow: use a float32 "
                  "bundle or --backend cpu; with float32 the bundle is damaged: re-export it")


def non_finite_rows(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Boolean [N]: rows (first axis) holding a NaN or inf in any of ``arrays`` (all [N, ...])."""
    bad = None
    for array in arrays:
        rows = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        bad = rows if bad is None else bad | rows
    if bad is None:
        raise ValueError("non_finite_rows needs at least one array")
    return bad
