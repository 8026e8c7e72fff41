"""Fixtures of the evaluation tests. ``tiny_export`` / ``tiny_export_int8`` (a tiny checkpoint and
its exported bundles) are in tests/conftest.py."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_benchmark(tmp_path_factory) -> Path:
    """``ucofia.data.demo.generate_demo(scale=0.05, seed=0)``: a small MSR-VTT-layout benchmark
    (videos, train and test CSVs), made once per session. Read-only: copy it to change it."""
    from ucofia.data.demo import generate_demo

    data = tmp_path_factory.mktemp("demo_benchmark") / "data"
    generate_demo(data, scale=0.05, seed=0)
    return data
