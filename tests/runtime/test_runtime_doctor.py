"""``ucofia-run doctor`` (runtime.diagnostics): text and JSON, on this CPU install and on the situations
a GPU user meets, faked: onnxruntime-gpu whose CUDA provider cannot start for missing libraries, both
onnxruntime packages installed, TensorRT engines built for another release or this one."""
from __future__ import annotations

import json
import sys

import onnxruntime
import pytest
from runtime_helpers import build_fake_bundle, run_cli
from trt_runtime_fakes import FakeCudaMemory, add_fake_engines, fake_tensorrt

from runtime import diagnostics
from runtime.backends import cuda_libraries, tensorrt_engines, tensorrt_session
from runtime.backends import ort as ort_backend

DEVICE = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch):
    monkeypatch.setattr(ort_backend, "_CUDA_PROBES", {})
    monkeypatch.setattr(ort_backend, "_PRELOADED", [])


def test_doctor_on_this_cpu_install():
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(diagnostics.HEADER)
    for needle in ("ucofia ", "onnxruntime packages", "CPUExecutionProvider runs", "no CUDA libraries needed",
                   "threads", "faiss", "problems"):
        assert needle in text, needle
    report = json.loads(run_cli("doctor", "--json").stdout)
    assert report["providers_running"]["CPUExecutionProvider"] == "runs"
    assert report["onnxruntime"]["packages"] == {"onnxruntime": onnxruntime.__version__}
    assert report["threads"]["cpus_available"] >= 1 and "UCOFIA_RUN_THREADS" in report["threads"]
    assert report["faiss"]["version"]
    assert set(report["versions"]["extras"]) == {"train", "serve", "ray", "ray-serve", "tensorrt", "parquet", "http",
                                                 "s3", "gcs"}


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_doctor_names_missing_cuda_libraries_and_the_fix(monkeypatch):
    """onnxruntime-gpu 1.31.1 (a CUDA 13.0 build) whose provider cannot start: cuBLAS is missing."""
    from onnxruntime.capi import build_and_package_info

    versions = {"onnxruntime-gpu": "1.31.1", "nvidia-cuda-runtime": "13.0.96"}
    monkeypatch.setattr(diagnostics, "_version", versions.get)
    monkeypatch.setattr(cuda_libraries, "package_version", versions.get)
    monkeypatch.setattr(build_and_package_info, "cuda_version", "13.0", raising=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    preloads = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: preloads.append(1), raising=False)
    found = {"libcudart.so.13": "/venv/nvidia/cu13/lib/libcudart.so.13", "libcuda.so.1": "/usr/lib/libcuda.so.1"}
    monkeypatch.setattr(cuda_libraries, "find_library", found.get)
    report = diagnostics.diagnose()
    assert preloads == [1]  # probed as the runtime runs it: after preload_dlls
    assert report["providers_running"]["CUDAExecutionProvider"] == "listed, but sessions run on CPUExecutionProvider"
    rows = {row["library"]: row for row in report["cuda_libraries"]}
    assert list(rows) == ["libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcufft.so.12",
                          "libcudart.so.13", "libcudnn.so.9"]
    assert rows["libcudart.so.13"]["path"].endswith("libcudart.so.13") and rows["libcudart.so.13"]["fix"] is None
    assert rows["libcublas.so.13"]["package"] == "nvidia-cublas" and rows["libcudnn.so.9"]["package"] == \
        "nvidia-cudnn-cu13"
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1'" in rows["libcublas.so.13"]["fix"]
    sections = [p["section"] for p in report["problems"]]
    assert sections.count("cuda_libraries") == 5 and "providers" in sections
    text = diagnostics.format_text(report)
    assert "libcublas.so.13      MISSING (nvidia-cublas not installed)" in text
    assert "fix: install nvidia-cudnn-cu13" in text
    # CUDA 12 builds name the -cu12 packages
    assert [lib.package for lib in cuda_libraries.required_libraries(12)][:2] == ["nvidia-cublas-cu12"] * 2


def test_doctor_reports_both_onnxruntime_packages_with_the_fix(monkeypatch):
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(diagnostics, "_version", versions.get)
    monkeypatch.setattr(ort_backend, "_dist_version", versions.get)
    report = diagnostics.diagnose()
    assert report["conflicts"] == ["onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1"]
    problem = next(p for p in report["problems"] if p["section"] == "conflicts")
    assert "uninstall -y onnxruntime onnxruntime-gpu" in problem["fix"]
    assert "pip install onnxruntime-gpu==1.31.1" in problem["fix"]


@pytest.mark.parametrize("installed, usable", [("10.8.0", True), ("11.4.0", False)])
def test_doctor_checks_the_bundle_engines_against_this_gpu_and_release(tmp_path, monkeypatch, installed, usable):
    root = build_fake_bundle(tmp_path / "bundle")
    add_fake_engines(root, (1, 2, 4), (1, 2, 4), DEVICE, "10.8.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(installed, root, []))
    monkeypatch.setattr(tensorrt_engines, "gpu_device", lambda: dict(DEVICE))
    monkeypatch.setattr(diagnostics, "gpu_device", lambda: dict(DEVICE))
    monkeypatch.setattr(diagnostics, "device_memory", lambda: (70 << 30, 80 << 30))
    monkeypatch.setattr(tensorrt_session, "CudaMemory", FakeCudaMemory)
    result = run_cli("doctor", "--bundle", str(root), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tensorrt"]["version"] == installed
    assert report["tensorrt"]["bundle_engines"]["version"] == "10.8.0"
    assert report["tensorrt"]["bundle_engines_usable"] is usable
    assert report["gpu"]["gpu"] == DEVICE["gpu"] and report["gpu"]["memory_total_gib"] == 80
    backend = report["bundle"]["backend"]
    if usable:
        assert backend["auto"] == "tensorrt" and not any(p["section"] == "tensorrt" for p in report["problems"])
    else:
        assert backend["auto"] == "cpu"
        assert any("TensorRT versions differ" in n for n in backend["notes"])
        problem = next(p for p in report["problems"] if p["section"] == "tensorrt")
        assert "--trt --force" in problem["problem"]
        text = run_cli("doctor", "--bundle", str(root)).stdout
        assert "bundle_engines_usable" in text and "[tensorrt] the bundle's engines cannot run here" in text


def test_doctor_without_a_bundle_directory_is_a_one_line_error(tmp_path):
    result = run_cli("doctor", "--bundle", str(tmp_path / "missing"))
    assert result.returncode == 1 and result.stderr.startswith("error: bundle directory not found")
