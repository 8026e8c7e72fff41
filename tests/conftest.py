"""Fixtures every test folder shares (the layout and how to add a test: tests/README.md).

* ``shared_dir``: the optional shared data folder (skipped when absent). Real clips shipped with the
  repository are in ``tests/data/real_clips``; the larger data folder outside it is located by
  ``data_paths.shared_root`` (``$UCOFIA_SHARED_DIR`` overrides it).
* an autouse reset of what an in-process command line leaves behind (logging, progress bars).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from data_paths import SHARED, SHARED_ENV


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data folder {SHARED / 'data'} is absent (set {SHARED_ENV} to its parent folder)")
    return SHARED


def _reset_command_line_logging() -> None:
    """Undo ``ucofia.logs.configure`` (called by every command's -q/-v options): its stderr handler,
    the package loggers' level and the progress-bar switch go back to a library's defaults."""
    logs = sys.modules.get("ucofia.logs")
    if logs is None:  # no command line configured anything in this process yet
        return
    for name in logs.PACKAGES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logs._StderrHandler)]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    logs.progress.set_enabled(False)


@pytest.fixture(autouse=True)
def _fresh_command_line_logging():
    """Commands run in-process (``run_cli``, CliRunner) configure logging for the whole process: each
    test starts from the defaults, whatever a fixture or an earlier test ran, and leaves them so."""
    _reset_command_line_logging()
    yield
    _reset_command_line_logging()
