"""Benchmark: ucofia-run's tiled scorer (onnxruntime, exported scorer graph) vs the reference loop.

The reference evaluation (eval_t2v ``_run_on_single_gpu``) loops over batches of
``batch_size_val`` (32) texts x 32 videos and, for every such pair of batches, re-runs the
temporal transformer (seqTransf) on the 32 videos' frame features before computing the three
levels in torch. The baseline here reproduces that loop structure with the project's torch model
(whose level functions match the reference to float precision): per tile it calls
``model._temporal`` + ``model.score``. ucofia-run instead stores the video features at index time
and scores tiles sized by a memory budget with the exported scorer graph.

Both sides see the same random features, so the scores are compared too. The reference side can
be timed on a slice of the texts (``--reference-texts``): its cost is linear in the number of text
batches, and the result is scaled to the full matrix.

    .venv/bin/python benchmarks/runtime_scoring.py --config vit_b32 --texts 1000 --videos 1000 \
        --reference-texts 64 -o benchmarks/results/runtime_scoring.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE_BATCH = 32  # batch_size_val of the published runs


def _model_and_bundle(config: str, work: Path):
    import torch

    import ucofia
    from export.graphs import graph_modules
    from export.onnx_export import export_graph
    from export.specs import graph_specs
    from ucofia.config import tiny_config, vit_b32_config

    cfg = {"tiny": tiny_config, "vit_b32": vit_b32_config}[config]()
    model = ucofia.build_model(cfg, seed=0)
    # randomise the ISA matrices (identity at init) so that every parameter matters
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("word_mat_weight", "word_mat_weight2", "pixel_mat_weight", "pixel_mat_weight2",
                     "frame_logit_weight", "local_mat_weight", "global_mat_weight", "global_mat_weight_1"):
            param = getattr(model, name)
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    spec = graph_specs(cfg)["scorer"]
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    args = (torch.randn(2, d), torch.randn(2, l, d), torch.randn(3, d), torch.randn(3, f, d), torch.randn(3, p, d))
    path = work / "scorer.onnx"
    export_graph(graph_modules(model)["scorer"], args, path, spec)
    return model, cfg, path, spec


def _features(cfg, n_text: int, n_video: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    return {
        "sentence": rng.standard_normal((n_text, d), dtype=np.float32),
        "words": rng.standard_normal((n_text, l, d), dtype=np.float32),
        "frames_raw": rng.standard_normal((n_video, f, d), dtype=np.float32),
        "patches": (0.1 * rng.standard_normal((n_video, p, d))).astype(np.float32),
        "video_mask": (np.arange(f)[None, :] < rng.integers(f // 2, f + 1, n_video)[:, None]).astype(np.float32),
    }


def reference_loop(model, feats: dict[str, np.ndarray], n_text: int) -> tuple[np.ndarray, float]:
    """The reference's 32 x 32 batch loop (seqTransf re-run per tile); returns fused [n_text, V], seconds."""
    import torch

    from ucofia.sinkhorn import LEVELS

    t = {k: torch.from_numpy(v) for k, v in feats.items()}
    n_video = t["frames_raw"].shape[0]
    rows = []
    start = time.perf_counter()
    with torch.no_grad():
        for t0 in range(0, n_text, REFERENCE_BATCH):
            sl = slice(t0, min(t0 + REFERENCE_BATCH, n_text))
            row = []
            for v0 in range(0, n_video, REFERENCE_BATCH):
                vl = slice(v0, min(v0 + REFERENCE_BATCH, n_video))
                video = model._temporal(t["frames_raw"][vl], t["video_mask"][vl])
                sims = model.score(t["sentence"][sl], t["words"][sl], video, t["frames_raw"][vl], t["patches"][vl])
                row.append(sum(sims[lv] for lv in LEVELS) / len(LEVELS))
            rows.append(torch.cat(row, dim=1))
    seconds = time.perf_counter() - start
    return torch.cat(rows).numpy(), seconds


def runtime_scoring(model, cfg, scorer_path: Path, spec, feats: dict[str, np.ndarray], memory_mb: float,
                    threads: int | None) -> tuple[np.ndarray, float, float, tuple[int, int]]:
    """ucofia-run's path: video features computed once (index time), then tiled scorer calls."""
    import torch

    from runtime.backends import OrtSession
    from runtime.bundle import GraphSpec, TensorSpec
    from runtime.scoring import ArrayVideos, Scorer, TextFeatures, fuse, score_matrix

    start = time.perf_counter()
    with torch.no_grad():  # index time: the temporal encoder runs once per video
        video = model._temporal(torch.from_numpy(feats["frames_raw"]), torch.from_numpy(feats["video_mask"])).numpy()
    index_seconds = time.perf_counter() - start

    def specs(items, roles):
        return {role: TensorSpec(t.name, t.dtype, t.shape) for role, t in zip(roles, items)}

    graph = GraphSpec("scorer", scorer_path,
                      specs(spec.inputs, ("sentence", "words", "video", "frame_features", "patches")),
                      specs(spec.outputs, ("video_sentence", "frame_sentence", "patch_word")))
    scorer = Scorer(OrtSession(graph, "cpu", threads=threads), cfg)
    text = TextFeatures(feats["sentence"], feats["words"])
    videos = ArrayVideos({"video": video, "frame_features": feats["frames_raw"], "patches": feats["patches"]})
    scorer.score_tile(text.rows(0, 2), videos.features(0, 3))  # warm-up (session init)
    start = time.perf_counter()
    levels = score_matrix(scorer, text, videos, memory_mb)
    seconds = time.perf_counter() - start
    return fuse(levels, None), seconds, index_seconds, scorer.plan_tiles(len(text), len(videos), memory_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--reference-texts", type=int, default=64,
                        help="texts the reference loop is timed on (scaled to --texts); 0 = all")
    parser.add_argument("--memory-mb", type=float, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model, cfg, scorer_path, spec = _model_and_bundle(args.config, Path(tmp))
        feats = _features(cfg, args.texts, args.videos)
        n_ref = args.reference_texts or args.texts
        ref_fused, ref_seconds = reference_loop(model, feats, n_ref)
        fused, seconds, index_seconds, tiles = runtime_scoring(model, cfg, scorer_path, spec, feats,
                                                               args.memory_mb, args.threads)
    ref_full = ref_seconds * args.texts / n_ref
    diff = float(np.abs(fused[:n_ref] - ref_fused).max())
    same_top1 = float((fused[:n_ref].argmax(1) == ref_fused.argmax(1)).mean())
    result = {
        "benchmark": "runtime_scoring", "config": args.config, "texts": args.texts, "videos": args.videos,
        "reference_loop": {"texts_timed": n_ref, "seconds_timed": round(ref_seconds, 3),
                           "seconds_scaled_to_full": round(ref_full, 2), "torch_threads": torch.get_num_threads(),
                           "batch": REFERENCE_BATCH},
        "ucofia_run": {"seconds": round(seconds, 2), "video_feature_seconds": round(index_seconds, 3),
                       "memory_mb": args.memory_mb, "tile": list(tiles),
                       "us_per_pair": round(seconds / (args.texts * args.videos) * 1e6, 2)},
        "speedup": round(ref_full / seconds, 2),
        "max_abs_fused_difference": diff, "same_top1_fraction": same_top1,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        from ucofia.io_utils import atomic_write_text

        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
