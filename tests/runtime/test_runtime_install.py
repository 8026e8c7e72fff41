"""The base install as a user makes it: a fresh venv with ``pip install 'ucofia[serve]'`` (no torch),
used on a bundle exported by the full install; and docs/install.md's GPU steps, checked in that venv
with ``pip install --dry-run --report`` (they must end with onnxruntime-gpu alone).

Slow by design (a real ``pip install`` into a new venv: about 15-20 s with pip's cache, the index
of this machine's pip configuration; it needs the package index pip is configured with).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from data_paths import REPO_ROOT
from runtime_helpers import copy_clips

PACKAGES = ("ucofia", "export", "runtime", "evaluation")
INSTALL_DOC = REPO_ROOT / "docs" / "install.md"
MAX_BASE_BYTES = 1 << 30  # docs/install.md: 435 MB with [serve]; torch alone would be several GB
START_TIMEOUT_S = 60
# what docs/install.md says onnxruntime-gpu's metadata requires (checked against the real metadata)
GPU_REQUIREMENTS = ('nvidia-cuda-runtime~=13.0; extra == "cuda"', 'nvidia-cudnn-cu13~=9.0; extra == "cudnn"')


def _run(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)


def _source_copy(dest: Path) -> Path:
    """What pip needs to build ucofia (pyproject.toml, README.md, the four packages), so the build does
    not write into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def gpu_steps(doc: str) -> list[list[str]]:
    """The pip commands of the first shell block under "## GPU install", in order, as argv lists
    (``python3 -m venv`` left out, comments dropped, ``&&`` chains split)."""
    section = doc.split("## GPU install", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    steps = []
    for line in block.splitlines():
        for part in line.split("#", 1)[0].split("&&"):
            argv = shlex.split(part)
            if argv and argv[0].endswith("/pip"):
                steps.append(argv[1:])
    return steps


def _without_extras(requirement: str) -> str:
    """``name[extra,...]spec`` -> ``name spec`` (options and plain names pass unchanged)."""
    return re.sub(r"^([A-Za-z0-9_.-]+)\[[^\]]*\]", r"\1", requirement)


def _dry_run(python: Path, args: list[str], report: Path) -> dict[str, dict]:
    """``pip install --dry-run --report`` of ``args`` in the venv of ``python``: name -> report entry.
    Downloads go to a temp folder beside ``report`` and skip pip's cache, so they leave nothing behind."""
    temp = report.with_suffix(".tmp")
    temp.mkdir(exist_ok=True)
    result = _run(python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-cache-dir", "--report", report,
                  *args, env={**os.environ, "TMPDIR": str(temp)})
    shutil.rmtree(temp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]}


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    """A fresh venv with ``pip install '<checkout>[serve]'``: (its bin folder, seconds, bytes)."""
    root = tmp_path_factory.mktemp("base_install")
    source = _source_copy(root / "src")
    venv = root / "venv"
    start = time.perf_counter()
    result = _run(sys.executable, "-m", "venv", venv)
    assert result.returncode == 0, result.stderr
    result = _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  f"{source}[serve]")
    assert result.returncode == 0, f"pip install of the base (+serve) failed:\n{result.stderr[-4000:]}"
    return venv / "bin", time.perf_counter() - start, _size(venv), source


@pytest.mark.slow
def test_the_base_install_serves_a_bundle_of_the_full_install_without_torch(base_venv, tiny_export, clips,
                                                                              tmp_path):
    bin_dir, seconds, size, _source = base_venv
    python, cli = bin_dir / "python", bin_dir / "ucofia-run"
    no_torch = _run(python, "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    assert size < MAX_BASE_BYTES, f"the base install takes {size / 1e6:.0f} MB"
    print(f"base+serve install: {seconds:.1f} s, {size / 1e6:.0f} MB")

    videos = copy_clips(clips, tmp_path / "videos", range(3), "video{}.mp4")
    bank = tmp_path / "bank.txt"
    bank.write_text("a cat sleeps\na car drives\n")
    index = tmp_path / "index"
    result = _run(cli, "index", "--bundle", tiny_export.bundle, "--videos", videos, "--bank", bank, "-o", index,
                  "-q", "--workers", "1")
    assert result.returncode == 0, result.stderr
    hits = tmp_path / "hits.jsonl"
    result = _run(cli, "search", "--index", index, "--query", "a red car", "--top-k", "2", "--two-stage",
                  "--shortlist", "3", "-o", hits)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(hits.read_text())["results"]) == 2

    proc = subprocess.Popen([str(cli), "serve", "--index", str(index), "--port", "0", "--backend", "cpu",
                             "--no-access-log"], stderr=subprocess.PIPE, text=True)
    try:
        url, seen, deadline = None, [], time.monotonic() + START_TIMEOUT_S
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            seen.append(proc.stderr.readline())
            match = re.search(r"at (http://127\.0\.0\.1:\d+/)", seen[-1])
            url = match.group(1) if match else None
        assert url, "".join(seen)
        while True:  # the socket is bound before uvicorn answers
            try:
                with urllib.request.urlopen(url + "readyz", timeout=10) as reply:
                    assert json.loads(reply.read())["ready"] is True
                break
            except OSError:
                assert time.monotonic() < deadline, "the service never answered /readyz"
                time.sleep(0.2)
        request = urllib.request.Request(url + "v1/search", data=json.dumps({"queries": ["a red car"],
                                                                             "top_k": 2}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert len(json.loads(reply.read())["results"][0]["results"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    doctor = _run(cli, "doctor", "--bundle", tiny_export.bundle, "--json")
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["versions"]["extras"] == {"train": False, "serve": True, "ray": False, "ray-serve": False,
                                            "tensorrt": False, "parquet": False, "http": False, "s3": False,
                                            "gcs": False}
    assert report["bundle"]["backend"]["auto"] == "cpu"
    # the model side says which extra it needs instead of failing on an import
    export = _run(bin_dir / "ucofia", "export", tmp_path / "ckpt", "-o", tmp_path / "out")
    assert export.returncode == 1 and "pip install 'ucofia[train]'" in export.stderr
    assert "Traceback" not in export.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="onnxruntime-gpu 1.31 needs Python 3.11+")
def test_the_gpu_install_steps_end_with_onnxruntime_gpu_alone(base_venv, tmp_path):
    """docs/install.md's GPU steps, replayed in the base venv: uninstalls for real, installs as
    ``--dry-run --report``. After the swap no step may bring the CPU package back, and what the docs
    say onnxruntime-gpu needs is what its metadata says.

    The installs are resolved without their extras: the ``[cuda,cudnn]`` wheels (cuDNN, cuBLAS,
    cuFFT, ...) are about 2 GB that a dry run downloads into the temp folder just to read their
    metadata, which filled a CI disk. What those extras require is read from onnxruntime-gpu's own
    metadata instead, and none of it is an onnxruntime package."""
    bin_dir, _seconds, _size_bytes, source = base_venv
    python = bin_dir / "python"
    doc = INSTALL_DOC.read_text()
    steps = gpu_steps(doc)
    assert steps[0][:2] == ["install", "-e"] and steps[0][2].startswith(".["), steps[0]
    swap = next(i for i, step in enumerate(steps) if step[:3] == ["uninstall", "-y", "onnxruntime"])
    later = steps[swap + 1:]
    assert later, "the GPU steps must install onnxruntime-gpu after removing onnxruntime"
    for step in later:  # a later install of ucofia itself re-resolves onnxruntime>=1.18
        assert step[0] == "install" and not any(a.startswith((".", "-e")) for a in step[1:]), step

    result = _run(python, "-m", "pip", "uninstall", "-y", "onnxruntime")
    assert result.returncode == 0, result.stderr
    installed: dict[str, dict] = {}
    for n, step in enumerate(later):
        installed.update(_dry_run(python, [_without_extras(a) for a in step[1:]], tmp_path / f"step{n}.json"))
    assert "onnxruntime-gpu" in installed and "onnxruntime" not in installed, sorted(installed)
    requires = installed["onnxruntime-gpu"]["metadata"].get("requires_dist", [])
    for requirement in GPU_REQUIREMENTS:
        assert requirement in requires, requires  # the wheel's own metadata
        assert requirement.split(";")[0] in doc  # ... is what the docs state
    extras_need = [r.split(";")[0] for r in requires if "extra ==" in r]
    assert extras_need and not any(re.match(r"onnxruntime\b(?!-gpu)", r) for r in extras_need), extras_need
    # the check sees the failure the old order had: installing ucofia after the swap brings onnxruntime back
    assert "onnxruntime" in _dry_run(python, [f"{source}[serve]"], tmp_path / "again.json")
