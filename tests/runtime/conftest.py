"""Fixtures of the runtime tests (tests/runtime and tests/runtime/serve).

``fake_bundle`` (the hand-built bundle every runtime test may read) is in tests/conftest.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

N_CLIPS = 6  # clip0 ... clip5


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """A folder of small H.264 clips ``clip0.mp4`` ... ``clip5.mp4``: clip i lasts 1 + i seconds
    (48x40 px, 3 fps, a random colour per frame from seed i; ``runtime_helpers.make_clip``).
    Made once per session and read-only: copy the ones a test indexes into its own folder
    (``copy_clips``) when it needs another set, adds files or changes them."""
    from runtime_helpers import make_clip

    folder = tmp_path_factory.mktemp("clips")
    for i in range(N_CLIPS):
        make_clip(folder / f"clip{i}.mp4", seconds=1 + i, seed=i)
    return folder


@pytest.fixture(scope="module")
def bundle(fake_bundle):
    """``fake_bundle`` loaded (a module may define its own ``bundle`` instead)."""
    from runtime.bundle import load_bundle

    return load_bundle(fake_bundle)


@pytest.fixture(scope="module")
def scorer(bundle):
    """The scorer of ``bundle`` on onnxruntime's CPU backend."""
    from runtime.backends import open_session
    from runtime.scoring import Scorer

    return Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
