"""Experiment: the patch-word level as numpy GEMM + a fused C kernel for its pools
(fused_pools.c, compiled here with gcc -O3 -march=native) vs the exported float32 graph in
onnxruntime, one thread each, interleaved rounds on the same tile (4 texts x 128 videos,
ViT-B/32 geometry). Not part of the product; it measures how much a hand-written kernel would buy.

    .venv/bin/python benchmarks/experiments/fused_pools_ab.py
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
from ucofia import isa  # noqa: E402

TEXTS, VIDEOS, ROUNDS, CALLS = 4, 128, 8, 10
MIXING = ("word_mat_weight", "pixel_mat_weight", "pixel_mat_weight2", "word_mat_weight2")


class PatchWordOnly(torch.nn.Module):
    """The scorer signature with only the patch-word level computed (others zero)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, sentence, words, video, frames, patches):
        m, tau = self.model, self.model.config.isa_temperature
        zero = torch.zeros(sentence.shape[0], video.shape[0]) + 0 * (sentence.sum() + video.sum() + frames.sum())
        return zero, zero, isa.patch_word(words, patches, m.local_mat_weight, None, *(getattr(m, k) for k in MIXING), tau)


def main() -> None:
    torch.set_num_threads(1)
    cfg = common.config("vit_b32")
    model = common.random_model(cfg).eval()
    tau = cfg.isa_temperature
    work = Path(tempfile.mkdtemp(prefix="fused_pools_"))
    lib_path = work / "libpools.so"
    subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-mprefer-vector-width=512", "-shared", "-fPIC",
                    f"-DP={cfg.num_pixels}", f"-DL={cfg.max_words}", str(HERE / "fused_pools.c"), "-o", str(lib_path)],
                   check=True)
    lib = ctypes.CDLL(str(lib_path))
    fptr = ctypes.POINTER(ctypes.c_float)

    def ptr(a: np.ndarray):
        return a.ctypes.data_as(fptr)

    with torch.no_grad():
        common.export_scorer(model, work / "pw.onnx", PatchWordOnly(model))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    session = ort.InferenceSession(str(work / "pw.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    t, v, d, l, f, p = TEXTS, VIDEOS, cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    inputs = [rng.standard_normal((t, d), dtype=np.float32), rng.standard_normal((t, l, d), dtype=np.float32),
              rng.standard_normal((v, d), dtype=np.float32), rng.standard_normal((v, f, d), dtype=np.float32),
              (0.1 * rng.standard_normal((v, p, d))).astype(np.float32)]
    feeds = dict(zip([i.name for i in session.get_inputs()], inputs))
    mixing = [np.ascontiguousarray((getattr(model, k) / tau).detach().numpy(), dtype=np.float32) for k in MIXING]
    local = model.local_mat_weight.detach().numpy()
    patches = inputs[4].reshape(v * p, d)
    out = np.empty((v, t), np.float32)

    def fused() -> np.ndarray:
        words = inputs[1] / np.linalg.norm(inputs[1], axis=-1, keepdims=True)
        keys = (words.reshape(t * l, d) @ local) * np.float32(1 / tau)
        fine = patches @ keys.T  # [V*P, T*L] = [V, P, T, L]
        lib.pools(ptr(fine), v, t, *(ptr(w) for w in mixing), ptr(out))
        return (out * (tau / 2)).T

    def graph() -> np.ndarray:
        return session.run(None, feeds)[2]

    print(f"max |fused - onnxruntime| = {float(np.abs(fused() - graph()).max()):.2e}")
    times: dict[str, list[float]] = {"onnxruntime graph": [], "numpy GEMM + C pools": []}
    for _ in range(ROUNDS):
        for name, fn in zip(times, (graph, fused)):
            fn()
            start = time.perf_counter()
            for _ in range(CALLS):
                fn()
            times[name].append((time.perf_counter() - start) / CALLS / (t * v) * 1e6)
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.2f} us/pair")
    ratio = np.median(np.array(times["onnxruntime graph"]) / np.array(times["numpy GEMM + C pools"]))
    print(f"speed-up of the fused kernel: {ratio:.2f}x")


if __name__ == "__main__":
    main()
