"""Where tests and fixture generators find real data.

* ``REPO_ROOT``: the checkout (test modules use it rather than counting parent folders);
  ``TEST_FIXTURES``: ``tests/fixtures``.
* ``REAL_CLIPS``: four Apache-2.0 real clips shipped in the repository (``tests/data/real_clips``,
  licence and attribution beside them): every clone tests decoding of camera-made files.
* ``SHARED``: an optional, larger data folder kept OUTSIDE the repository (research-use clips such
  as an MSR-VTT 1k-A sample, which must not be committed). It holds ``data/msrvtt_1ka_sample`` and
  ``data/real_clips``. By default it is the folder ``shared`` next to the checkout; set
  ``UCOFIA_SHARED_DIR`` to use another one, or to a missing path to run as a fresh clone would.
  Tests that read it skip with a reason when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/data_paths.py
TESTS_DATA = REPO_ROOT / "tests" / "data"
TEST_FIXTURES = REPO_ROOT / "tests" / "fixtures"  # files recorded from the reference (docs/parity-fixtures.md)
REAL_CLIPS = TESTS_DATA / "real_clips"
SHARED_ENV = "UCOFIA_SHARED_DIR"


def shared_root() -> Path:
    """The optional shared data folder (``$UCOFIA_SHARED_DIR``, else ``shared`` beside the checkout)."""
    configured = os.environ.get(SHARED_ENV)
    return Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared"


SHARED = shared_root()
SHARED_DATA = SHARED / "data"
