"""Fixtures every test folder shares (the layout and how to add a test: tests/README.md).

* ``shared_dir``: the optional shared data folder (skipped when absent). Real clips shipped with the
  repository are in ``tests/data/real_clips``; the larger data folder outside it is located by
  ``data_paths.shared_root`` (``$UCOFIA_SHARED_DIR`` overrides it).
* ``fake_bundle``: one hand-built bundle of small ONNX graphs per session (no torch, no export).
* ``tiny_export`` / ``tiny_export_int8``: one tiny model, its checkpoint and its exported bundle
  (float32, verified; and ``--int8``) per session.
* an autouse reset of what an in-process command line leaves behind (logging, progress bars).

Session fixtures are shared by every test of a pytest process (of each xdist worker): read what they
return, never change it; a test that modifies a bundle builds or exports its own into ``tmp_path``.
"""
from __future__ import annotations

import dataclasses
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


@pytest.fixture(scope="session")
def fake_bundle(tmp_path_factory) -> Path:
    """``runtime_helpers.build_fake_bundle`` (tiny config, seed 0): the bundle contract's names, shapes
    and dtypes with simple maths, for the runtime's plumbing. Read-only: to change one, call
    ``build_fake_bundle(tmp_path / "bundle")`` in the test."""
    from runtime_helpers import build_fake_bundle

    return build_fake_bundle(tmp_path_factory.mktemp("fake_bundle") / "bundle")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """``export_helpers.TinyExport``: ``build_model(tiny_config(), seed=0)``, its checkpoint and the
    bundle ``ucofia export`` made from it (with verification), exported once per session."""
    pytest.importorskip("torch")
    from export_helpers import export_tiny

    return export_tiny(tmp_path_factory.mktemp("tiny_export"))


@pytest.fixture(scope="session")
def tiny_export_int8(tiny_export, tmp_path_factory):
    """The same model and checkpoint exported with ``int8=True`` (dynamically quantised encoders)."""
    from export import export_bundle

    out = tmp_path_factory.mktemp("tiny_export_int8") / "bundle"
    manifest = export_bundle(tiny_export.model, out, int8=True)
    return dataclasses.replace(tiny_export, bundle=out, manifest=manifest, output="")


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
