"""The ``ucofia`` commands that need PyTorch (the ``train`` extra) fail with one line naming the extra
where it is missing (the base install), instead of an ImportError traceback; their ``--help`` and the
torch-free commands keep working."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from data_paths import REPO_ROOT
from runtime_helpers import TORCH_MODULES, import_blocker

from ucofia.cli import COMMANDS


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    hook = import_blocker(tmp_path_factory.mktemp("no_torch"), TORCH_MODULES + ("safetensors", "yaml"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO_ROOT)])}


def _ucofia(env, *args):
    return subprocess.run([sys.executable, "-m", "ucofia.cli", *args], env=env, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


@pytest.mark.parametrize("args", [["export", "ckpt", "-o", "out"], ["train", "--config", "demo", "-o", "out"],
                                  ["parity", "--checkpoint", ".", "--bundle", ".", "--benchmark", "."],
                                  ["demo", "-o", "out"]])
def test_commands_needing_torch_name_the_extra(no_torch_env, args, tmp_path):
    result = _ucofia(no_torch_env, *[str(tmp_path / a) if a in ("out", "ckpt") else a for a in args])
    assert result.returncode == 1, result.stderr
    assert f"`ucofia {args[0]}` needs the 'train' extra" in result.stderr
    assert "missing: torch" in result.stderr and "pip install 'ucofia[train]'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_help_and_torch_free_commands_work_without_torch(no_torch_env, tmp_path):
    for name in COMMANDS:
        result = _ucofia(no_torch_env, name, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, (name, result.stderr)
    result = _ucofia(no_torch_env, "demo-data", "-o", str(tmp_path / "data"), "--scale", "0.05")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "MSRVTT_data.json").is_file()
