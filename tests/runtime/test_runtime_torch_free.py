"""ucofia-run must work where torch cannot be imported: every runtime module, `--help` of every
command, and index + search + evaluate on a prepared index run in subprocesses whose
``import torch`` (and torchvision / open_clip) raises."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import REPO_ROOT
from runtime_helpers import TORCH_MODULES, copy_clips, import_blocker

REPO = REPO_ROOT
BLOCKED = TORCH_MODULES
# Every module of the runtime package (found by walking it, so a new module is covered the day it
# lands), plus the torch-free leaves of ucofia and evaluation it uses.
TORCH_FREE_LEAVES = ["ucofia.data.windows", "ucofia.data.window_decode", "ucofia.progress", "ucofia.logs",
                     "ucofia.cli_support", "evaluation.moments", "evaluation.metrics"]
# Modules that need the 'serve' extra (checked only where it is installed).
SERVE_MODULES = ["runtime.serve.app", "runtime.serve.metrics", "runtime.serve.guard", "runtime.serve.server"]


def runtime_modules() -> list[str]:
    """Every module under runtime/ except those that need the serve extra."""
    names = ["runtime"]
    for path in sorted((REPO / "runtime").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in names and name not in SERVE_MODULES:
            names.append(name)
    return names


RUNTIME_MODULES = runtime_modules() + TORCH_FREE_LEAVES


def test_the_module_walk_finds_the_runtime():
    for name in ("runtime.cli", "runtime.commands.index", "runtime.search.searcher", "runtime.ingest.job",
                 "runtime.serve.engine", "runtime.distributed.pipeline", "runtime.index.updates"):
        assert name in RUNTIME_MODULES
    assert not set(SERVE_MODULES) & set(RUNTIME_MODULES)


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    hook_dir = import_blocker(tmp_path_factory.mktemp("no_torch"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), str(REPO)])
    # the hook really blocks torch in this environment
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked" in check.stderr
    return env


def _cli(env, *args):
    script = Path(sys.executable).with_name("ucofia-run")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, cwd=REPO)


def test_runtime_modules_import_without_torch(no_torch_env):
    code = ("import importlib, sys\n"
            f"for name in {RUNTIME_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            f"assert not any(m.split('.')[0] in {BLOCKED!r} for m in sys.modules), 'torch got imported'\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize("command", [[], ["index"], ["search"], ["evaluate"], ["serve"], ["thumbnails"],
                                     ["api-key", "create"], ["doctor"]])
def test_help_without_torch(no_torch_env, command):
    result = _cli(no_torch_env, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "Exit codes" in result.stdout


SERVE_SCRIPT = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from runtime.serve.app import create_app
from runtime.serve.service import SearchService
from runtime.serve.settings import ServeSettings

service = SearchService.open(ServeSettings(index_dir=Path(sys.argv[1]), backend="cpu"))
with TestClient(create_app(service), base_url="http://127.0.0.1") as client:
    assert client.get("/readyz").json()["ready"] is True
    reply = client.post("/v1/search", json={"queries": ["a red car"], "top_k": 2})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["results"][0]["results"]) == 2
    assert client.get("/v1/videos/video0/thumbnail").status_code == 200
    assert client.get("/metrics").status_code == 200
assert not any(m.split(".")[0] in {blocked!r} for m in sys.modules), "torch got imported"
print("served")
"""


def test_serve_without_torch(no_torch_env, fake_bundle, clips, tmp_path):
    pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
    pytest.importorskip("httpx", reason="TestClient needs httpx")
    code = ("import importlib\n"
            f"for name in {SERVE_MODULES!r}:\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    bundle = fake_bundle
    videos = copy_clips(clips, tmp_path / "videos", range(3), "video{}.mp4")
    index = tmp_path / "index"
    result = _cli(no_torch_env, "index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(index), "-q",
                  "--workers", "1")
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-c", SERVE_SCRIPT.replace("{blocked!r}", repr(BLOCKED)), str(index)],
                            env=no_torch_env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "served" in result.stdout, result.stderr


def test_serve_without_its_extra_says_how_to_install(no_torch_env, tmp_path):
    hook = import_blocker(tmp_path / "hook", BLOCKED + ("fastapi", "uvicorn"))
    env = {**no_torch_env, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    result = _cli(env, "serve", "--index", str(tmp_path / "index"))
    assert result.returncode == 1
    assert "pip install 'ucofia[serve]'" in result.stderr and "Traceback" not in result.stderr


def test_index_search_evaluate_without_torch(no_torch_env, fake_bundle, clips, tmp_path):
    bundle = fake_bundle
    videos = copy_clips(clips, tmp_path / "videos", range(3), "video{}.mp4")
    captions = ["a red car", "a dog runs", "people talk"]
    annotations = tmp_path / "test.csv"
    annotations.write_text("key,vid_key,video_id,sentence\n" +
                           "".join(f"ret{i},msr{i},video{i},{c}\n" for i, c in enumerate(captions)))
    bank = tmp_path / "bank.txt"
    bank.write_text("a cat sleeps\na car drives\n")
    index = tmp_path / "index"
    result = _cli(no_torch_env, "index", "--bundle", str(bundle), "--videos", str(videos), "--bank", str(bank),
                  "-o", str(index), "-q", "--workers", "1")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "hits.jsonl"
    result = _cli(no_torch_env, "search", "--index", str(index), "--query", "a red car", "--top-k", "2",
                  "--two-stage", "--shortlist", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["results"]) == 2
    report = tmp_path / "metrics.json"
    result = _cli(no_torch_env, "evaluate", "--index", str(index), "--annotations", str(annotations),
                  "--dataset", "msrvtt", "-o", str(report))
    assert result.returncode == 0, result.stderr
    assert "R@1" in result.stdout
    assert set(json.loads(report.read_text())["metrics"]) == {"t2v", "v2t"}
    windows = tmp_path / "windows"
    result = _cli(no_torch_env, "index", "--bundle", str(bundle), "--videos", str(videos), "-o", str(windows), "-q",
                  "--window", "1", "--stride", "0.5")
    assert result.returncode == 0, result.stderr
    result = _cli(no_torch_env, "search", "--index", str(windows), "--query", "a red car", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert {"file_id", "start", "end", "windows"} <= set(json.loads(result.stdout)["results"][0])


def test_doctor_without_torch(no_torch_env, fake_bundle):
    result = _cli(no_torch_env, "doctor", "--bundle", str(fake_bundle), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["providers_running"]["CPUExecutionProvider"] == "runs"
    assert report["bundle"]["backend"]["auto"] == "cpu"
    assert report["versions"]["extras"]["train"] is False  # torch is blocked here, so [train] counts as missing
