"""run.reproducible_cpu: the same weights whatever ISA the CPU kernels may use (x86-64 with AVX2).

"Another CPU" is emulated in a fresh process by capping what each kernel library may use: ATen's
vectorised kernels (ATEN_CPU_CAPABILITY), MKL (MKL_ENABLE_INSTRUCTIONS) and oneDNN
(ONEDNN_MAX_CPU_ISA). Each cap alone changes the weights of a normal run within a few steps.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import REPO_ROOT
from train_helpers import tiny_train_config

from ucofia.config import ConfigError

HELPERS = REPO_ROOT / "tests" / "helpers"
# a CPU without AVX-512 and with old MKL / oneDNN paths, as seen from this machine's libraries
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def _x86_with_avx2() -> bool:
    import torch

    return platform.machine().lower() in ("x86_64", "amd64") and bool(torch.cpu._is_avx2_supported())


def _train(tmp: Path, pin: bool, caps: dict[str, str]) -> dict[str, str]:
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (*OTHER_CPU, "MKL_CBWR")}
    env.update(caps)
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    code = ("from cpu_numerics_worker import train_and_fingerprint; "
            f"train_and_fingerprint({str(tmp / 'out.json')!r}, {pin})")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.slow  # four fresh processes
@pytest.mark.skipif(not _x86_with_avx2(), reason="run.reproducible_cpu pins x86-64 AVX2 kernels")
def test_same_weights_under_other_kernel_isas(tmp_path):
    native = _train(tmp_path / "native", pin=False, caps={})
    other = _train(tmp_path / "other", pin=False, caps=OTHER_CPU)
    assert native["weights"] != other["weights"]  # the emulated CPU does change a normal run
    pinned = _train(tmp_path / "pinned", pin=True, caps={})
    pinned_other = _train(tmp_path / "pinned_other", pin=True, caps=OTHER_CPU)
    assert pinned["capability"] == pinned_other["capability"] == "AVX2"
    assert pinned["weights"] == pinned_other["weights"]


def test_setting_needs_a_fixed_thread_count():
    with pytest.raises(ConfigError, match="run.num_threads"):
        tiny_train_config(run__reproducible_cpu=True, run__num_threads=None)


@pytest.mark.skipif(not _x86_with_avx2(), reason="run.reproducible_cpu pins x86-64 AVX2 kernels")
def test_trainer_warns_when_torch_ran_before_the_setting(tmp_path, caplog):
    """In a process whose kernels are already chosen (this test runner) the run says so."""
    import torch
    from train_helpers import synthetic_splits

    from ucofia.training.trainer import Trainer

    torch.ones(64, 64) @ torch.ones(64, 64)  # MKL and ATen start here, without the pinning
    cfg = tiny_train_config(run__reproducible_cpu=True, optim__max_steps=1)
    with caplog.at_level(logging.WARNING, logger="ucofia.training.trainer"):
        Trainer(cfg, tmp_path / "run", splits=synthetic_splits()).preflight()
    assert any("reproducible_cpu is not in effect" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records), caplog.text


def test_convolution_avoids_cpu_dependent_backends_while_pinned():
    """oneDNN (ISA-specific JIT) and NNPACK (tiles by cache size) are off inside, restored after."""
    import torch

    from ucofia.training.cpu_numerics import portable_kernels

    x, w = torch.randn(16, 3, 32, 32, requires_grad=True), torch.randn(8, 3, 8, 8, requires_grad=True)
    before = (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled())
    with portable_kernels(True), torch.profiler.profile() as prof:
        torch.nn.functional.conv2d(x, w, stride=8).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert not {n for n in names if "mkldnn" in n or "nnpack" in n}, names
    assert any("slow_conv2d" in n for n in names), names
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == before
