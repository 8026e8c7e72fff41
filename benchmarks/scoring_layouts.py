"""Benchmark: layouts of the patch-word level on the CPU, side by side, against its GEMM floor.

Issue 28 asks for a batch of T queries against a tile of V videos to be scored with one GEMM per
tile and for the patch-word level to come close to the float32 GEMM floor. The exported scorer
graph already takes the whole text batch: one [V*P, D] x [D, T*L] product per call, the
frame-sentence level one [T, D] x [D, V*F] product, the ISA pools over the [V, P, T, L] result
(``ucofia/isa.py``). What remains open is how to cut the work into calls and where the GEMM runs.
This script measures, interleaved round by round in one process (no torch: the graphs are
exported first, in a parent process), the same T x V problem as:

* ``graph t x v / c``: ``runtime.scoring.score_matrix`` with the patch-word-only scorer graph in
  tiles of t texts x v videos, c concurrent graph calls (c single-threaded sessions' worth of
  threads; c = 1: one call with all ``--threads`` threads); ``t x v / c split``: the same with the
  session the runtime opens (``runtime.backends.selection.cpu_scorer_session``), whose text side
  (normalise, project, / tau) runs once per call instead of once per tile;
* ``numpy_gemm+pools t x v`` (and ``onnxruntime_gemm+pools``): the text side (normalise, project,
  / tau) once per text, then per tile the score product in numpy (its BLAS; or a single-threaded
  onnxruntime MatMul) and the four ISA pools in an onnxruntime graph that
  takes the [v, P, t, L] scores as its input (what a scorer split into "GEMM outside, pools inside"
  would do); ``--threads`` tiles at once;
* the floor: the level's FLOPs (score product + mixing products) at the best sustained rate of a
  plain float32 GEMM, of the whole problem's shape [T*L, D] x [D, V*P] or of a layout's own tile
  product: numpy, onnxruntime with ``--threads`` threads, ``--threads`` concurrent
  single-threaded onnxruntime runs on column blocks (``common.MatmulProbe``).

Every layout's scores are checked against the first one's (max abs difference / scale).

    .venv/bin/python benchmarks/scoring_layouts.py -o benchmarks/results/scoring_layouts_vit_b32.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

DEFAULT_PLANS = ("4x128x2", "4x128x2s", "2x256x2", "2x256x2s", "8x64x2", "16x64x2", "32x32x2", "32x256x1")


# ---- export (parent, torch) -------------------------------------------------------------------
def export_graphs(cfg_name: str, work: Path) -> None:
    """The patch-word-only scorer graph (the contract's inputs, the level in all three outputs),
    the pools-only graph (input: scores / tau [V, P, T, L]) and the text-side weight, one model."""
    import torch
    from torch import nn

    from ucofia import isa

    cfg = common.config(cfg_name)
    model = common.random_model(cfg)
    for param in model.parameters():
        param.requires_grad_(False)
    tau = cfg.isa_temperature

    class PatchWord(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, sentence, words, video, frame_features, patches):
            m = self.model
            sims = isa.patch_word(words, patches, m.local_mat_weight, None, m.word_mat_weight,
                                  m.pixel_mat_weight, m.pixel_mat_weight2, m.word_mat_weight2, tau)
            # the other inputs stay in the graph (contract) through one element each: summing all of
            # frame_features was 2.8 % of this graph's time (onnxruntime profile, 4 x 128 tile)
            zeros = sims * 0.0 + 0.0 * (sentence[:1, :1] + video[:1, :1] + frame_features[:1, 0, :1]).sum()
            return zeros, zeros, sims

    class Pools(nn.Module):
        """isa.patch_word after its score product (the same ops, the same order)."""

        def forward(self, fine):
            m = model
            word_level = isa._scaled_pool(fine, m.word_mat_weight, tau)
            sent_to_patch = isa._scaled_pool(word_level.transpose(1, 2), m.pixel_mat_weight2, tau)
            patch_level = isa._scaled_pool(fine.permute(0, 2, 3, 1), m.pixel_mat_weight, tau)
            video_to_word = isa._scaled_pool(patch_level, m.word_mat_weight2, tau)
            return ((sent_to_patch + video_to_word) * (tau / 2)).t()

    if cfg.scorer_variant == "train":
        raise SystemExit("the layouts are measured on the eval variant (no local_mat_weight1)")
    common.export_scorer(model, work / "patch_word.onnx", PatchWord())
    sample = torch.randn(3, cfg.num_pixels, 2, cfg.max_words)
    torch.onnx.export(Pools().eval(), (sample,), str(work / "pools.onnx"), input_names=["fine"],
                      output_names=["patch_word"], dynamic_axes={"fine": {0: "V", 2: "T"}}, opset_version=17,
                      dynamo=False)
    np.save(work / "text_matrix.npy", (model.local_mat_weight / tau).numpy())
    (work / "config.json").write_text(json.dumps(cfg.to_dict()))


# ---- measurement (child, no torch) ------------------------------------------------------------
def _plan(plan: str) -> tuple[int, int, int]:
    """(texts, videos, concurrent calls) of a ``--plans`` entry TxVxC[s]."""
    t, v, runs = (int(x) for x in plan.rstrip("s").split("x"))
    return t, v, runs


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as runtime.backends.ort
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(args, work: Path) -> dict:
    from dataclasses import replace

    from runtime.backends import fpenv
    from runtime.backends.ort import OrtSession
    from runtime.backends.selection import cpu_scorer_session
    from runtime.bundle.contract import SCORER, graph_specs
    from runtime.scoring import ArrayVideos, Scorer, TextFeatures, score_matrix
    from ucofia.config import UCoFiAConfig

    cfg = UCoFiAConfig.from_dict(json.loads((work / "config.json").read_text()))
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    n_text, n_video, threads = args.texts, args.videos, args.threads
    rng = np.random.default_rng(0)
    text = TextFeatures(rng.standard_normal((n_text, d), dtype=np.float32),
                        rng.standard_normal((n_text, l, d), dtype=np.float32))
    videos = ArrayVideos({"video": rng.standard_normal((n_video, d), dtype=np.float32),
                          "frame_features": rng.standard_normal((n_video, f, d), dtype=np.float32),
                          "patches": (0.1 * rng.standard_normal((n_video, p, d))).astype(np.float32)})
    spec = replace(graph_specs(cfg)[SCORER], file=work / "patch_word.onnx")
    pool = ThreadPoolExecutor(threads)
    layouts = {}

    for plan in args.plans:
        whole = not plan.endswith("s")
        t, v, runs = _plan(plan)
        # "s": the session the runtime opens, its text side cut out (runtime.backends.text_side)
        session = (OrtSession(spec, "cpu", threads=max(1, threads // runs), concurrency=runs) if whole
                   else cpu_scorer_session(spec, runs))
        if not whole and session.text_side is None:
            raise SystemExit(f"{spec.file}: the runtime did not split this graph")
        scorer = Scorer(session, cfg)
        scorer.plan_tiles = lambda n_t, n_v, mb, t=t, v=v: (t, v)  # this layout's tiles
        name = f"graph {t}x{v}/{runs}" + ("" if whole else " split")
        layouts[name] = lambda s=scorer: score_matrix(s, text, videos)["patch_word"]

    pools = _session(work / "pools.onnx", 1)
    matmul = common.matmul_session(1)
    text_matrix = np.load(work / "text_matrix.npy")

    def split(t: int, v: int, gemm: str) -> np.ndarray:
        # text side once per text (in the graph it runs per tile)
        words = text.words / np.linalg.norm(text.words, axis=-1, keepdims=True)
        keys = (words.reshape(-1, d) @ text_matrix).reshape(n_text, l, d)
        out = np.empty((n_text, n_video), np.float32)

        def tile(t0: int, v0: int) -> None:
            t1, v1 = min(t0 + t, n_text), min(v0 + v, n_video)
            lhs, rhs = videos.arrays["patches"][v0:v1].reshape(-1, d), keys[t0:t1].reshape(-1, d)
            scores = (lhs @ rhs.T if gemm == "numpy"
                      else matmul.run(None, {"a": lhs, "b": np.ascontiguousarray(rhs.T)})[0])
            fine = scores.reshape(v1 - v0, p, t1 - t0, l)
            with fpenv.flushing():  # as the runtime's sessions: subnormals flushed on this thread too
                out[t0:t1, v0:v1] = pools.run(None, {"fine": fine})[0]

        list(pool.map(lambda tv: tile(*tv), [(a, b) for b in range(0, n_video, v) for a in range(0, n_text, t)]))
        return out

    for plan in args.split_plans:
        t, v = (int(x) for x in plan.split("x"))
        for gemm in ("numpy", "onnxruntime"):
            layouts[f"{gemm}_gemm+pools {t}x{v}/{threads}"] = lambda t=t, v=v, g=gemm: split(t, v, g)

    # the floor: the whole problem's product, and every graph layout's own tile product split over
    # its concurrent calls ([v * P, D] x [D, t * L] each), whichever runs fastest
    tiles = {common.tile_product_shape(cfg, (t, v), runs) for t, v, runs in map(_plan, args.plans)}
    probe = common.MatmulProbe(threads, shape=(n_text * l, d, n_video * p), extra_shapes=tuple(sorted(tiles)))
    first = None
    agreement = {}
    for name, fn in layouts.items():  # warm-up and agreement
        got = fn()
        if first is None:
            first = got
        agreement[name] = float(np.abs(got - first).max() / max(1.0, float(np.abs(first).max())))
    seconds = {name: [] for name in layouts}
    cpu = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, fn in layouts.items():
            cpu0, start = time.process_time(), time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu0)
        probe.run()
    rates = probe.rates()
    flops = 2.0 * n_text * n_video * l * p * (d + p + l)
    floor_s = flops / (rates["best_gflops"] * 1e9)
    base = np.array(seconds[next(iter(seconds))])
    cpu_base = np.array(cpu[next(iter(cpu))])
    out = {}
    for name, times in seconds.items():
        med = float(np.median(times))
        # paired within each round (the layouts of a round ran back to back): load that drifts
        # over the rounds cancels out of these, not out of the medians of the times themselves
        paired = np.array(times) / base
        out[name] = {"seconds_median": round(med, 4), "seconds_min": round(min(times), 4),
                     "us_per_pair": round(med / (n_text * n_video) * 1e6, 2),
                     "over_floor": round(med / floor_s, 3),
                     "over_first_layout_paired_median": round(float(np.median(paired)), 3),
                     "over_first_layout_paired_quartiles": [round(float(q), 3)
                                                            for q in np.quantile(paired, [0.25, 0.75])],
                     # CPU seconds of the process: what other processes take from the cores does not
                     # count, so on a busy machine this is the steadier comparison (single-threaded
                     # onnxruntime calls do not spin; a multi-threaded call's spin-waits do count)
                     "cpu_seconds_median": round(float(np.median(cpu[name])), 4),
                     "cpu_over_first_layout_paired_median": round(float(np.median(np.array(cpu[name]) / cpu_base)),
                                                                  3),
                     "max_abs_diff_over_scale_vs_first": agreement[name]}
    return {"matmul_rate": rates, "floor_seconds": round(floor_s, 4), "layouts": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--texts", type=int, default=32, help="texts (one reference batch by default)")
    parser.add_argument("--videos", type=int, default=512)
    parser.add_argument("--threads", type=int, default=common.available_cpus())
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--plans", nargs="+", default=list(DEFAULT_PLANS),
                        help="graph layouts TEXTSxVIDEOSxCONCURRENT_CALLS; a trailing s: the session the "
                             "runtime opens, its text side cut out (runtime.backends.text_side)")
    parser.add_argument("--split-plans", nargs="*", default=["4x128"], help="numpy GEMM + pools graph: TEXTSxVIDEOS")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args, args.measure)))
        return
    machine = common.machine({"threads": args.threads})
    monitor = common.CpuMonitor()
    with tempfile.TemporaryDirectory(prefix="ucofia-layouts-") as tmp:
        export_graphs(args.config, Path(tmp))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # numpy's BLAS single-threaded: the split layout runs --threads tiles at once, one per core;
        # the floor's numpy GEMM then uses one core (the onnxruntime ones use --threads)
        cmd = [sys.executable, __file__, "--measure", tmp, "--config", args.config, "--texts", str(args.texts),
               "--videos", str(args.videos), "--threads", str(args.threads), "--rounds", str(args.rounds),
               "--plans", *args.plans, "--split-plans", *args.split_plans]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    contention = common.contention(monitor, args.threads)
    if contention["contended"]:  # (the shared note speaks of torch sides; here there are none)
        contention["note"] = (f"other processes kept {contention['other_processes_cores_busy']} of the cores busy on "
                              f"average: every layout and the floor ran in alternation, round by round, so their "
                              f"ratios saw the same load; absolute times are pessimistic")
    result = {"benchmark": "scoring_layouts", "config": args.config, "texts": args.texts, "videos": args.videos,
              "threads": args.threads, "rounds": args.rounds, "numpy_blas_threads": 1, "machine": machine,
              "load_average_after": common.load_average(), "contention": contention, **measured}
    rate = measured["matmul_rate"]
    lines = [f"floor {measured['floor_seconds'] * 1e3:.0f} ms ({rate['best_gflops']:.0f} GFLOP/s, "
             f"{rate['best_method']} on {rate['best_shape_m_k_n']})"]
    lines += [f"{name}: {v['seconds_median'] * 1e3:.0f} ms = {v['over_floor']:.2f}x the floor, "
              f"{v['over_first_layout_paired_median']:.3f}x the first layout (paired, quartiles "
              f"{v['over_first_layout_paired_quartiles'][0]:.3f}-{v['over_first_layout_paired_quartiles'][1]:.3f}; "
              f"CPU seconds {v['cpu_over_first_layout_paired_median']:.3f}x; "
              f"diff {v['max_abs_diff_over_scale_vs_first']:.1e})" for name, v in measured["layouts"].items()]
    if result["contention"]["contended"]:
        lines.append("NOTE: " + result["contention"]["note"])
    result["summary"] = lines
    common.write_result(args.output, result)
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
