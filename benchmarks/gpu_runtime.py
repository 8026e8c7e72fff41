"""The runtime's GPU backends on exported bundles, in a process where torch cannot be imported.

Run by ``benchmarks/gpu_check.py`` (section ``engines``) as a subprocess whose ``import torch``
raises (``--block-torch``): onnxruntime-gpu must find its CUDA libraries through
``onnxruntime.preload_dlls()`` alone, as ``ucofia-run`` does. For every bundle given and every GPU
backend usable here (``tensorrt``: the bundle's engines; ``cuda``: onnxruntime's CUDA provider), it

* runs each graph on batch sizes that force splitting (above the engine profile's maximum) and
  padding (below its minimum) and compares with onnxruntime's CPU provider (max abs error over
  scale against the export's tolerances for the bundle's dtype; the video encoder also reports the
  fraction of frames whose selected patches are the CPU's);
* checks that 200 calls at a fixed shape do not grow device memory (``cuMemGetInfo``) and, for
  TensorRT, that they allocate no buffer after the first;
* times ``runtime.scoring.score_matrix`` on N x N random features against the CPU.

What is not installed is reported as skipped, with the reason; the CPU parts always run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "open_clip")
# max abs error over scale allowed against the CPU, per bundle dtype (export.verify's tolerances)
TOLERANCES = {"float32": {"features": 1e-4, "similarities": 2e-4}, "float16": {"features": 1e-2, "similarities": 5e-2}}
MEMORY_CALLS = 200
MEMORY_SLACK_BYTES = 2 << 20  # allocator granularity: growth below this is no growth


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the runtime must work without torch")
        return None


def _err(ref, got) -> float:
    import numpy as np

    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max()))) if ref.size else 0.0


def _inputs(cfg, key: str, rows: dict[str, int], seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    t, v, d = rows.get("T", 1), rows.get("V", 1), cfg.embed_dim
    if key == "text_encoder":
        ids = rng.integers(1, cfg.clip.vocab_size - 2, (t, cfg.max_words)).astype(np.int64)
        ids[:, 0], ids[:, -1] = cfg.clip.vocab_size - 2, cfg.clip.vocab_size - 1
        return {"input_ids": ids}
    if key == "video_encoder":
        f, size = cfg.max_frames, cfg.clip.image_size
        mask = (np.arange(f)[None] < rng.integers(max(1, f // 2), f + 1, v)[:, None]).astype(np.float32)
        return {"frames": rng.standard_normal((v, f, 3, size, size), dtype=np.float32), "video_mask": mask}
    return {"sentence": rng.standard_normal((t, d), dtype=np.float32),
            "words": rng.standard_normal((t, cfg.max_words, d), dtype=np.float32),
            "video": rng.standard_normal((v, d), dtype=np.float32),
            "frame_features": rng.standard_normal((v, cfg.max_frames, d), dtype=np.float32),
            "patches": (0.1 * rng.standard_normal((v, cfg.num_pixels, d))).astype(np.float32)}


def _batch_sizes(session, key: str) -> list[dict[str, int]]:
    """Rows per call: one below the profile's minimum (padding) and one above its maximum (splitting)."""
    axes = getattr(session, "axes", None) or {"T": (1, 16), "V": (1, 16)}
    if key == "text_encoder":
        return [{"T": 1}, {"T": axes["T"][1] + 3}]
    if key == "video_encoder":
        return [{"V": 1}, {"V": axes["V"][1] + 3}]
    return [{"T": 1, "V": 1}, {"T": axes["T"][1] + 3, "V": min(axes["V"][1] + 3, 1100)}]


def _compare(bundle, backend: str, tolerance: dict) -> dict:
    import numpy as np

    from runtime.backends import open_session

    out = {}
    for key in ("text_encoder", "video_encoder", "scorer"):
        gpu, cpu = open_session(bundle, key, backend), open_session(bundle, key, "cpu")
        bound = tolerance["similarities" if key == "scorer" else "features"]
        cases = []
        for n, rows in enumerate(_batch_sizes(gpu, key)):
            feeds = _inputs(bundle.config, key, rows, seed=n)
            got, want = gpu.run(feeds), cpu.run(feeds)
            case = {"rows": rows, "err_over_scale": {role: _err(want[role], got[role]) for role in want}}
            case["within_tolerance"] = all(e <= bound for e in case["err_over_scale"].values())
            if key == "video_encoder":
                per_frame = np.abs(got["patches"] - want["patches"]).reshape(
                    got["patches"].shape[0], bundle.config.max_frames, -1).max(axis=-1)
                scale = max(1.0, float(np.abs(want["patches"]).max()))
                case["frames_with_cpu_selection"] = float((per_frame <= bound * scale).mean())
            cases.append(case)
        out[key] = {"tolerance": bound, "cases": cases}
        if hasattr(gpu, "close"):
            gpu.close()
    return out


def _memory(bundle, backend: str) -> dict:
    from runtime.backends import open_session
    from runtime.backends.cuda_driver import device_memory

    session = open_session(bundle, "scorer", backend)
    feeds = _inputs(bundle.config, "scorer", {"T": 8, "V": 64}, seed=7)
    session.run(feeds)  # warm up: buffers, arenas, lazy kernels
    allocations = getattr(session, "allocations", None)
    free_before = device_memory()[0]
    start = time.perf_counter()
    for _ in range(MEMORY_CALLS):
        session.run(feeds)
    seconds = time.perf_counter() - start
    growth = free_before - device_memory()[0]
    out = {"calls": MEMORY_CALLS, "device_memory_growth_bytes": int(growth),
           "no_growth": growth <= MEMORY_SLACK_BYTES, "ms_per_call": round(1000 * seconds / MEMORY_CALLS, 3)}
    if allocations is not None:
        out["buffer_allocations_after_warmup"] = session.allocations - allocations
    return out


def _score_timing(bundle, backends: list[str], n: int) -> dict:
    import numpy as np

    from runtime.backends import open_session
    from runtime.bundle.contract import VIDEO_ROLES
    from runtime.scoring import ArrayVideos, Scorer, TextFeatures, score_matrix

    feats = _inputs(bundle.config, "scorer", {"T": n, "V": n}, seed=11)
    text = TextFeatures(feats["sentence"], feats["words"])
    videos = ArrayVideos({role: feats[role] for role in VIDEO_ROLES})
    out, reference = {}, None
    for backend in ["cpu", *backends]:
        scorer = Scorer(open_session(bundle, "scorer", backend), bundle.config)
        score_matrix(scorer, TextFeatures(text.sentence[:4], text.words[:4]), videos)  # warm up
        start = time.perf_counter()
        levels = score_matrix(scorer, text, videos)
        out[backend] = {"seconds": round(time.perf_counter() - start, 4), "tile": list(scorer.plan_tiles(n, n, 2048))}
        if reference is None:
            reference = levels
        else:
            out[backend]["err_over_scale_vs_cpu"] = max(_err(reference[lv], levels[lv]) for lv in levels)
            fused = [sum(d[lv] for lv in d) for d in (reference, levels)]
            out[backend]["same_top1_vs_cpu"] = float(np.mean(fused[0].argmax(1) == fused[1].argmax(1)))
            out[backend]["speedup_over_cpu"] = round(out["cpu"]["seconds"] / out[backend]["seconds"], 1)
    return out


def run(bundles: list[Path], n: int) -> dict:
    from runtime.backends import ort
    from runtime.backends.tensorrt_engines import tensorrt_unusable_reason
    from runtime.bundle import load_bundle

    result: dict = {"torch_importable": "torch" in sys.modules or _importable("torch"), "bundles": {}}
    for path in bundles:
        bundle = load_bundle(path)
        entry: dict = {"dtype": bundle.dtype, "skipped": {}}
        backends = []
        reason = tensorrt_unusable_reason(bundle)
        (entry["skipped"].__setitem__("tensorrt", reason) if reason else backends.append("tensorrt"))
        problem = ort.cuda_problem(bundle)  # preload_dlls() first, as the runtime does
        (entry["skipped"].__setitem__("cuda", problem) if problem else backends.append("cuda"))
        for backend in backends:
            try:
                entry[backend] = {"compare": _compare(bundle, backend, TOLERANCES[bundle.dtype]),
                                  "memory": _memory(bundle, backend)}
            except Exception as exc:  # keep the other backend's results
                entry[backend] = {"error": f"{type(exc).__name__}: {exc}"}
        entry["scoring"] = {"n": n, **_score_timing(bundle, [b for b in backends if "error" not in entry[b]], n)}
        result["bundles"][str(path)] = entry
    return result


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--size", type=int, default=1000, help="texts = videos for the scoring timing")
    parser.add_argument("--block-torch", action="store_true", help="make `import torch` fail in this process")
    args = parser.parse_args()
    if args.block_torch:
        sys.meta_path.insert(0, _Blocked())
    sys.path.insert(0, str(REPO))
    args.out.write_text(json.dumps(run(args.bundles, args.size), indent=2) + "\n")


if __name__ == "__main__":
    main()
