"""Backend choice: onnxruntime's CUDA provider is used only when a session really runs on it, and a
CPU + GPU onnxruntime pair is detected with the exact fix (no GPU needed: the CPU build of
onnxruntime stands in for a GPU build whose CUDA cannot start)."""
from __future__ import annotations

import os
import subprocess
import sys

import onnxruntime
import pytest
from data_paths import REPO_ROOT
from runtime_helpers import import_blocker

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


PRELOAD_SCRIPT = """
import sys
import onnxruntime
from runtime.backends import OrtSession, resolve_backend
from runtime.backends import ort as ort_backend
from runtime.bundle import load_bundle
from runtime.errors import BackendError

calls = []


def preload_dlls(*args, **kwargs):  # what onnxruntime-gpu's prints when a library is missing
    calls.append("preload")
    print("Failed to load libcublasLt.so.13: cannot open shared object file")


class Recording(onnxruntime.InferenceSession):
    def __init__(self, path, *args, providers=None, **kwargs):
        calls.append(("session", tuple(providers or ())))
        super().__init__(path, *args, providers=["CPUExecutionProvider"], **kwargs)


onnxruntime.preload_dlls = preload_dlls
onnxruntime.InferenceSession = Recording
onnxruntime.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
bundle = load_bundle(sys.argv[1])
assert resolve_backend("auto", bundle) == "cpu"  # the probe session ran, and could not start CUDA
assert calls[0] == "preload" and calls[1][0] == "session" and "CUDAExecutionProvider" in calls[1][1], calls
ort_backend._PRELOADED.clear()
calls.clear()
try:
    OrtSession(bundle.graphs["text_encoder"], "cuda")
except BackendError:
    pass
assert calls[:2] == ["preload", ("session", ("CUDAExecutionProvider", "CPUExecutionProvider"))], calls
calls.clear()
OrtSession(bundle.graphs["text_encoder"], "cpu")
assert "preload" not in calls, calls  # once per process, and never for CPU sessions
del onnxruntime.preload_dlls  # an onnxruntime older than 1.21: nothing to call, nothing breaks
ort_backend._PRELOADED.clear()
assert ort_backend.preload_cuda_libraries() is False
assert not any(m.split(".")[0] in ("torch", "torchvision", "open_clip") for m in sys.modules), "torch imported"
print("preloaded")
"""


def test_cuda_libraries_are_preloaded_before_cuda_sessions_without_torch(fake_bundle, tmp_path):
    """onnxruntime-gpu finds the pip-installed CUDA/cuDNN libraries only after torch loaded them or
    onnxruntime.preload_dlls() did: the runtime (torch blocked here) calls it before the CUDA probe
    and every CUDA session, and what it prints goes to stderr, not into stdout's results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(import_blocker(tmp_path / "hook")), str(REPO_ROOT)])}
    result = subprocess.run([sys.executable, "-c", PRELOAD_SCRIPT, str(fake_bundle)], env=env, capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "preloaded"
    assert "Failed to load libcublasLt.so.13" in result.stderr


def _spinning(session) -> str | None:
    """The session's intra-op spinning entry ("0": idle threads sleep; None: onnxruntime's default, spin)."""
    options = session._session.get_session_options()
    try:
        return options.get_session_config_entry(ort_backend.ALLOW_SPINNING)
    except Exception:  # onnxruntime raises when the entry was never set
        return None


def test_text_encoder_threads_sleep_and_other_sessions_keep_the_default(fake_bundle):
    """The text encoder runs right before the scorer's tile threads in the same process: its idle
    intra-op threads sleep instead of spinning on the cores the tiles need (benchmarks/serve_stages.py)."""
    from runtime.backends import open_session
    from runtime.deployment import load_query_models
    from runtime.text import TextEncoder

    b = load_bundle(fake_bundle)
    assert _spinning(TextEncoder(b, "cpu", threads=2).session) == "0"
    assert _spinning(load_query_models(b, "cpu", threads=2).text.session) == "0"
    assert _spinning(open_session(b, "video_encoder", "cpu", threads=2)) is None
    assert _spinning(open_session(b, "text_encoder", "cpu", threads=2, spinning=False)) == "0"
    assert _spinning(open_session(b, "text_encoder", "cpu", threads=2)) is None


def _cast_graph() -> bytes:
    """x float32 [N] -> half (float16), ints (int64), doubled (float32)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["x"], ["ints"], to=TensorProto.INT64),
             helper.make_node("Add", ["x", "x"], ["doubled"])]
    graph = helper.make_graph(nodes, "casts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N"]),
                               helper.make_tensor_value_info("ints", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["N"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_session_returns_floats_as_float32_and_other_types_as_they_are(tmp_path):
    import numpy as np

    from runtime.backends.base import GraphSession
    from runtime.bundle.contract import GraphSpec, TensorSpec

    spec = GraphSpec("casts", tmp_path / "casts.onnx", {"value": TensorSpec("x", "float32", ("N",))},
                     {"half": TensorSpec("half", "float16", ("N",)), "ints": TensorSpec("ints", "int64", ("N",)),
                      "doubled": TensorSpec("doubled", "float32", ("N",))})
    session = OrtSession(spec, "cpu", model=_cast_graph())
    out = session.run({"value": np.array([1.5, 2.0, -3.0], np.float64)})  # cast to the manifest's float32 first
    assert out["half"].dtype == np.float32 and out["half"].tolist() == [1.5, 2.0, -3.0]
    assert out["ints"].dtype == np.int64 and out["ints"].tolist() == [1, 2, -3]
    assert out["doubled"].dtype == np.float32 and out["doubled"].tolist() == [3.0, 4.0, -6.0]
    with pytest.raises(ValueError, match=r"casts: missing inputs \['value'\]"):
        session.run({"x": np.zeros(3, np.float32)})
    # one run at a time unless a session was opened for parallel tiles (the scorer sizes its pool by it)
    assert GraphSession.concurrency == 1 and session.concurrency == 1 and session.text_side is None
