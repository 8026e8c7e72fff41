"""Backend choice: onnxruntime's CUDA provider is used only when a session really runs on it, and a
CPU + GPU onnxruntime pair is detected with the exact fix (no GPU needed: the CPU build of
onnxruntime stands in for a GPU build whose CUDA cannot start)."""
from __future__ import annotations

import onnxruntime
import pytest

from runtime.backends import OrtSession, resolve_backend, selection
from runtime.backends import ort as ort_backend
from runtime.bundle import load_bundle
from runtime.errors import BackendError


@pytest.fixture
def bundle(fake_bundle, monkeypatch):
    monkeypatch.setattr(ort_backend, "_CUDA_PROBES", {})
    return load_bundle(fake_bundle)


def _notes(caplog) -> list[str]:
    """What backend selection logged (the CLI prints it on stderr)."""
    return [r.getMessage() for r in caplog.records if r.name == selection.logger.name]


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_listed_but_not_running_is_never_used_silently(bundle, monkeypatch, caplog):
    # what onnxruntime-gpu reports on a machine without a usable GPU / CUDA libraries
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendError, match="--backend cuda is unavailable: onnxruntime lists "
                                           "CUDAExecutionProvider but could not start it.*CPUExecutionProvider"):
        resolve_backend("cuda", bundle)
    assert resolve_backend("auto", bundle) == "cpu"
    notes = _notes(caplog)
    assert len(notes) == 1 and notes[0].startswith("note: running on the CPU: onnxruntime lists")
    # a session opened for CUDA checks where it actually runs
    with pytest.raises(BackendError, match=r"could not start CUDAExecutionProvider for .*scorer.onnx"):
        OrtSession(bundle.graphs["scorer"], "cuda")
    assert OrtSession(bundle.graphs["scorer"], "cpu").providers == ["CPUExecutionProvider"]


def test_cpu_only_install_resolves_quietly(bundle, caplog):
    assert resolve_backend("auto", bundle) == "cpu" and _notes(caplog) == []
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not installed.*GPU install"):
        resolve_backend("cuda", bundle)


def test_cpu_and_gpu_onnxruntime_together_print_the_fix(bundle, monkeypatch, caplog):
    versions = {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.1"}
    monkeypatch.setattr(ort_backend, "_dist_version", versions.get)
    fix = "uninstall -y onnxruntime onnxruntime-gpu && .* -m pip install onnxruntime-gpu==1.22.1"
    with pytest.raises(BackendError, match="both onnxruntime 1.22.0 and onnxruntime-gpu 1.22.1 are installed.*" + fix):
        resolve_backend("cuda", bundle)
    assert resolve_backend("auto", bundle) == "cpu"
    notes = _notes(caplog)
    assert len(notes) == 1 and "pip uninstall -y onnxruntime onnxruntime-gpu" in notes[0]
    assert resolve_backend("cpu", bundle) == "cpu"  # the CPU provider works either way
    # a half-removed pair leaves an `onnxruntime` module without its API: the fix is still given
    monkeypatch.setattr(ort_backend, "ort_providers", list)
    with pytest.raises(BackendError, match=fix):
        resolve_backend("cpu", bundle)
