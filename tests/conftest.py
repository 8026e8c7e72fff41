"""Shared pytest fixtures: paths to the optional shared data (skipped when absent).

Real clips shipped with the repository are in ``tests/data/real_clips``; the larger data folder
outside it is located by ``data_paths.shared_root`` (``$UCOFIA_SHARED_DIR`` overrides it).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from data_paths import SHARED, SHARED_ENV


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data folder {SHARED / 'data'} is absent (set {SHARED_ENV} to its parent folder)")
    return SHARED
