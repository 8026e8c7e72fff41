"""Benchmark: torch eager vs onnxruntime (CPU) for the bundle's video and text encoders.

ViT-B/32 geometry (``ucofia.config.vit_b32_config()``) with random weights, exported with
``export.export_bundle`` (verified against PyTorch as every export is). Cases: the video encoder
on 1 and 4 videos of ``max_frames`` (12) frames, i.e. 12 and 48 frames per call (frames/s), and
the text encoder on 64 texts of ``max_words`` tokens (texts/s).

Both sides use the same number of threads (``--threads``; ``torch.set_num_threads`` and
onnxruntime's ``intra_op_num_threads``) and the same inputs. onnxruntime runs through the
runtime's own session factory (``runtime.backends.open_session``: ORT_ENABLE_ALL graph
optimisations, subnormals flushed); a second onnxruntime session with only basic graph
optimisations shows what the optimiser contributes, and a third runs the same graphs quantised
to int8 as ``ucofia export --int8`` writes them (``export.int8``: dynamic quantisation, lossy;
its features' cosine to torch's is reported beside its speed). torch runs eagerly under
``torch.inference_mode()``. Runs of the sides are interleaved (torch, ort, ort-basic, torch, ...)
so that load changes on the machine hit them alike; medians are reported.

    .venv/bin/python benchmarks/encoders.py -o benchmarks/results/encoders_vit_b32.json
    .venv/bin/python benchmarks/encoders.py --config tiny --repeats 3      # quick check
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

VIDEO_BATCHES = (1, 4)  # videos per call (x max_frames frames)
TEXT_BATCH = 64
TARGET = 1.5


def _config(name: str):
    from ucofia.config import tiny_config, vit_b32_config

    return {"tiny": tiny_config, "vit_b32": vit_b32_config}[name]()


def _ort_basic(bundle, key: str, threads: int):
    """An onnxruntime session like the runtime's but with basic graph optimisations only."""
    import onnxruntime as ort

    from runtime.backends import GraphSession

    class BasicOptSession(GraphSession):
        backend = "cpu"

        def __init__(self, spec) -> None:
            super().__init__(spec)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.set_denormal_as_zero", "1")
            self._session = ort.InferenceSession(str(spec.file), options, providers=["CPUExecutionProvider"])
            self._outputs = [o.name for o in spec.outputs.values()]

        def _run(self, feeds):
            return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))

    return BasicOptSession(bundle.graphs[key])


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up (allocations, kernel selection)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--threads", type=int, default=common.available_cpus())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="reuse this exported bundle (its config must match --config) instead of exporting")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    import torch

    import ucofia
    from export import export_bundle
    from export.int8 import quantize_encoders
    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.bundle.contract import graph_specs

    torch.set_num_threads(args.threads)
    cfg = _config(args.config)
    model = ucofia.build_model(cfg, seed=0)
    machine = common.machine({"torch_set_num_threads": args.threads, "onnxruntime_intra_op_num_threads": args.threads})
    monitor = common.CpuMonitor()
    with tempfile.TemporaryDirectory(prefix="ucofia-enc-") as tmp:
        export_info = {}
        bundle_dir = args.bundle
        if bundle_dir is None:
            bundle_dir = Path(tmp) / "bundle"
            start = time.perf_counter()
            manifest = export_bundle(model, bundle_dir)
            export_info = {"seconds": round(time.perf_counter() - start, 1),
                           "verification_passed": manifest["verification"]["passed"]}
        bundle = load_bundle(bundle_dir)
        if bundle.config.to_dict() != cfg.to_dict():
            raise SystemExit(f"{bundle_dir} was exported with another config than --config {args.config}")
        int8_dir = Path(tmp) / "bundle_int8"
        shutil.copytree(bundle_dir, int8_dir)
        quantize_encoders(int8_dir, graph_specs(cfg))
        int8_bundle = load_bundle(int8_dir)
        sessions = {key: (open_session(bundle, key, "cpu", args.threads), _ort_basic(bundle, key, args.threads),
                          open_session(int8_bundle, key, "cpu", args.threads))
                    for key in ("video_encoder", "text_encoder")}
        rng = np.random.default_rng(0)
        f, size = cfg.max_frames, cfg.clip.image_size
        cases = []
        for v in VIDEO_BATCHES:
            frames = rng.standard_normal((v, f, 3, size, size), dtype=np.float32)
            mask = np.ones((v, f), np.float32)
            cases.append((f"video_encoder_{v * f}_frames", "video_encoder", v * f, "frames_per_s",
                          lambda fr=frames, mk=mask: model.encode_video(torch.from_numpy(fr), torch.from_numpy(mk)),
                          {"frames": frames, "video_mask": mask}))
        ids = rng.integers(1, cfg.clip.vocab_size - 2, (TEXT_BATCH, cfg.max_words)).astype(np.int64)
        ids[:, 0] = cfg.clip.vocab_size - 2  # SOT
        ids[:, -1] = cfg.clip.vocab_size - 1  # EOT (the highest id: the EOT feature is taken there)
        cases.append((f"text_encoder_{TEXT_BATCH}_texts", "text_encoder", TEXT_BATCH, "texts_per_s",
                      lambda: model.encode_text(torch.from_numpy(ids)), {"input_ids": ids}))

        results = {}
        for name, key, items, unit, torch_fn, feeds in cases:
            ort_all, ort_basic, ort_int8 = sessions[key]
            print(f"[encoders] {name} ...", file=sys.stderr, flush=True)
            with torch.inference_mode():
                times = _interleaved({"torch_eager": torch_fn, "onnxruntime": lambda s=ort_all: s.run(feeds),
                                      "onnxruntime_basic_opt": lambda s=ort_basic: s.run(feeds),
                                      "onnxruntime_int8": lambda s=ort_int8: s.run(feeds)}, args.repeats)
                want = torch_fn()
            got, got8 = ort_all.run(feeds), ort_int8.run(feeds)
            first = (want.video if key == "video_encoder" else want.sentence).numpy().astype(np.float64)
            out_role = "video" if key == "video_encoder" else "sentence"
            diff = float(np.abs(got[out_role] - first).max())
            q = got8[out_role].astype(np.float64)
            cosine = (q * first).sum(-1) / np.linalg.norm(q, axis=-1) / np.linalg.norm(first, axis=-1)
            med = {k: statistics.median(v) for k, v in times.items()}
            results[name] = {
                "items_per_call": items, "unit": unit,
                **{f"{k}_median_s": round(v, 4) for k, v in med.items()},
                **{f"{k}_{unit}": round(items / v, 2) for k, v in med.items()},
                "speedup_onnxruntime_over_torch": round(med["torch_eager"] / med["onnxruntime"], 2),
                "speedup_basic_opt_over_torch": round(med["torch_eager"] / med["onnxruntime_basic_opt"], 2),
                "speedup_int8_over_torch": round(med["torch_eager"] / med["onnxruntime_int8"], 2),
                "max_abs_diff_first_output": diff, "runs": args.repeats,
                "int8_first_output": {"output": out_role, "min_cosine_to_torch": round(float(cosine.min()), 6),
                                      "max_abs_over_scale": float(np.abs(q - first).max() / np.abs(first).max())},
            }
    result = {
        "benchmark": "encoders", "config": args.config, "machine": machine,
        "load_average_after": common.load_average(), "export": export_info, "cases": results,
        "contention": common.contention(monitor, args.threads),
        "target_speedup": TARGET,
        "meets_target": {k: v["speedup_onnxruntime_over_torch"] >= TARGET for k, v in results.items()},
        "meets_target_int8": {k: v["speedup_int8_over_torch"] >= TARGET for k, v in results.items()},
        "summary": [f"{k}: torch {v['torch_eager_' + v['unit']]:.1f} "
                    f"vs onnxruntime {v['onnxruntime_' + v['unit']]:.1f} "
                    f"{v['unit'].replace('_per_s', '/s')} -> {v['speedup_onnxruntime_over_torch']:.2f}x "
                    f"(basic graph optimisation {v['speedup_basic_opt_over_torch']:.2f}x); int8 bundle "
                    f"{v['onnxruntime_int8_' + v['unit']]:.1f} -> {v['speedup_int8_over_torch']:.2f}x, "
                    f"{v['int8_first_output']['output']} min cosine "
                    f"{v['int8_first_output']['min_cosine_to_torch']:.4f} "
                    f"(target {TARGET}x)"
                    for k, v in results.items()],
    }
    common.write_summarised(args.output, result)


if __name__ == "__main__":
    main()
