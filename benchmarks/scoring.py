"""Benchmark: ucofia-run's tiled scorer vs a faithful re-implementation of the reference's
evaluation loop, on the same random features at MSR-VTT 1k-A size (1000 x 1000, ViT-B/32).

Reference side (torch, ``torch.set_num_threads(--threads)``): the loop of the reference's
``eval_epoch``/``_run_on_single_gpu`` + ``_loose_similarity`` (eval variant, seqTransf),
re-expressed here with the same operations and layouts: batches of 32 texts x 32 videos; for
EVERY pair of batches the temporal transformer runs again on the 32 videos' frame features, the
video/frame/sentence/word features are normalised again, and the three levels are computed --
the patch-word scores as one [32*L, D] x [D, 32*P] product viewed [t, L, v, P] with its four
softmaxes, two of them over the word axis through permutes; each pair's three [32, 32] results
go to numpy and are concatenated per row of batches, as the reference does. The weights are the
project model's (random init, ISA matrices perturbed so that every parameter matters).

Runtime side (no torch in its process): the video-level feature (temporal transformer + pooling)
is computed once per video at index time (timed separately, torch in the parent), then
``runtime.scoring.score_matrix`` scores all 1000 x 1000 pairs with the exported scorer graph
through ``runtime.backends.open_session`` (onnxruntime CPU, ``--threads`` concurrent
single-threaded tile calls). A second run uses a graph with only the patch-word level (the other
two outputs are zeros) through the same path, so that level's time and GFLOP/s can be set against
this machine's float32 matmul floor: the level's FLOPs at the best sustained rate of a plain
float32 GEMM, timed after every text batch, so that it sees the same load, on two shapes: the
level's own, [32 * L, D] x [D, V * P] (the score product of one text batch against the whole
gallery), and the runtime's tile product, [v * P, D] x [D, t * L] per concurrent call (the faster
of the two on the machines measured so far). Each is run with numpy (its BLAS), onnxruntime's
MatMul with ``--threads`` threads and ``--threads`` threads of single-threaded onnxruntime runs on
column blocks, each method repeating its product for a dose of a quarter second
(``common.MatmulProbe``); the best of the six is the floor.

Each side runs in its own subprocess, so its peak RSS (VmHWM) is its own; "scoring memory" is the
peak minus the RSS once its inputs were loaded. The subprocesses are driven batch by batch and
interleaved -- reference text batch i (32 texts x all videos), then the runtime on the same 32
texts (all levels, then patch-word only), then one matmul-rate probe (a process of its own), then
batch i + 1 -- so that load changes on a shared machine hit all sides alike; each side's time is
the sum over its batches.

The reference code itself (``--reference-tree DIR``, an extracted checkout of the public
reference, github.com/Ziyang412/UCoFiA): a third side imports the reference's eval_t2v tree at run
time, as the parity-fixture generator does (``reference_code.py``: same run-time patches), and
runs its own ``main_ucofia._run_on_single_gpu`` -- one call per text batch over all video batches,
``model.get_similarity_logits`` per pair, exactly as ``eval_epoch`` -- on the same features. Its
weights are the benchmark's random weights written into a reference checkpoint, and every other
side gets its weights by importing that checkpoint (``ucofia.load_reference_checkpoint``): the
scorer graph of ``ucofia-run`` is exported from the imported model, so the level values of the
reference code, the re-implementation and ``ucofia-run`` are compared as well as timed.

Subnormal floats: softmax(x / 0.01) produces them, and x86 CPUs handle them in microcode (10-100x
slower per operation). The reference runs twice: with ``torch.set_flush_denormal(True)`` (the
fair, fast baseline the speed-up is quoted against) and as published (no flushing) on a few text
batches, scaled. onnxruntime flushes them (``session.set_denormal_as_zero``, runtime.backends).

    .venv/bin/python benchmarks/scoring.py -o benchmarks/results/scoring_vit_b32.json
    .venv/bin/python benchmarks/scoring.py --config tiny --texts 200 --videos 200   # quick check
    .venv/bin/python benchmarks/scoring.py --reference-tree /tmp/UCoFiA \
        -o benchmarks/results/scoring_vit_b32_reference_code.json    # + the reference's own loop
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

REFERENCE_BATCH = 32  # the reference's batch_size_val for MSR-VTT
REFERENCE_CHECKPOINT = "reference_model.bin"
ISA_WEIGHTS = common.ISA_WEIGHTS
HEAD_PREFIXES = ("frame_position_embeddings.", "transformerClip.") + ISA_WEIGHTS
from ucofia.config import LEVELS  # noqa: E402

_config = common.config
# Targets of issue 28: the whole scorer vs the reference's loop, and the patch-word level's time
# over its float32 GEMM floor (both at 1000 x 1000, 2 threads).
SPEEDUP_TARGET = 15.0
PATCH_WORD_FLOOR_TARGET = 1.2


def patch_word_flops(cfg, n_text: int, n_video: int) -> float:
    """FLOPs of the patch-word level's matrix products: the [T*L, D] x [D, V*P] score product and
    the two mixing products over the patch (P x P) and word (L x L) axes."""
    pairs = float(n_text) * n_video * cfg.max_words * cfg.num_pixels
    return 2.0 * pairs * (cfg.embed_dim + cfg.num_pixels + cfg.max_words)


# ---- setup (parent process, torch) ---------------------------------------------------------
def make_features(cfg, n_text: int, n_video: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random encoder outputs: raw sentence/word/frame features ~ N(0, 1), raw patch tokens
    ~ N(0, 0.1^2), video masks with 6..12 real frames."""
    rng = np.random.default_rng(seed)
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    return {
        "sentence": rng.standard_normal((n_text, d), dtype=np.float32),
        "words": rng.standard_normal((n_text, l, d), dtype=np.float32),
        "frames": rng.standard_normal((n_video, f, d), dtype=np.float32),
        "patches": (0.1 * rng.standard_normal((n_video, p, d))).astype(np.float32),
        "video_mask": (np.arange(f)[None, :] < rng.integers(f // 2, f + 1, n_video)[:, None]).astype(np.float32),
    }


def setup(args, work: Path) -> dict:
    """Weights, graphs and features into ``work``; returns what the parent measured doing it."""
    import torch
    from torch import nn

    from ucofia import isa

    cfg = _config(args.config)
    model = common.random_model(cfg)
    imported = None
    if args.reference_tree:
        model, imported = _through_reference_checkpoint(args.reference_tree, model, work)
    heads = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    heads["logit_scale"] = model.clip.logit_scale.detach().clone()
    torch.save(heads, work / "heads.pt")
    (work / "config.json").write_text(json.dumps(cfg.to_dict()))

    class PatchWordOnly(nn.Module):
        """The scorer graph with only the patch-word level computed (others zeros)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, sentence, words, video, frame_features, patches):
            m = self.model
            sims = isa.patch_word(words, patches, m.local_mat_weight, getattr(m, "local_mat_weight1", None),
                                  m.word_mat_weight, m.pixel_mat_weight, m.pixel_mat_weight2, m.word_mat_weight2,
                                  m.config.isa_temperature)
            # the other inputs stay in the graph (contract) through one element each: summing all of
            # frame_features was 2.8 % of this graph's time (onnxruntime profile, 4 x 128 tile)
            zeros = sims * 0.0 + 0.0 * (sentence[:1, :1] + video[:1, :1] + frame_features[:1, 0, :1]).sum()
            return zeros, zeros, sims

    start = time.perf_counter()
    common.export_scorer(model, work / "scorer.onnx")
    common.export_scorer(model, work / "patch_word_only.onnx", PatchWordOnly())
    export_seconds = time.perf_counter() - start

    feats = make_features(cfg, args.texts, args.videos)
    for name, array in feats.items():
        np.save(work / f"{name}.npy", array)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with torch.no_grad():  # index time: once per video
        video = model._temporal(torch.from_numpy(feats["frames"]), torch.from_numpy(feats["video_mask"])).numpy()
    index_seconds = time.perf_counter() - start
    np.save(work / "video.npy", video)
    return {"export_seconds": round(export_seconds, 2), "video_feature_seconds": round(index_seconds, 3),
            "reference_checkpoint": imported}


def _through_reference_checkpoint(tree: Path, model, work: Path):
    """Write ``model``'s scorer weights into the reference's own model, save that as a reference
    checkpoint and import it back with ``ucofia.load_reference_checkpoint``: the imported model is
    what the other sides use, so all sides hold the same values by construction of the importer."""
    import reference_code
    import torch

    import ucofia

    ns = reference_code.load(tree)
    reference = reference_code.build_model(ns, model.config)
    copied = reference_code.copy_heads(model.state_dict(), reference)
    torch.save(reference.state_dict(), work / REFERENCE_CHECKPOINT)
    imported = ucofia.load_reference_checkpoint(work / REFERENCE_CHECKPOINT)
    state = imported.state_dict()
    for name in copied:  # the importer must hand back exactly what was written
        if not torch.equal(state[name], model.state_dict()[name]):
            raise SystemExit(f"ucofia.load_reference_checkpoint changed {name}")
    return imported, {"tree": str(Path(tree).resolve()), "parameters_copied": len(copied),
                      "imported_with": "ucofia.load_reference_checkpoint"}


# ---- reference side (subprocess, torch) ----------------------------------------------------
class ReferenceHeads:
    """What the reference's similarity function uses: frame position embeddings, the seqTransf
    temporal transformer, the ISA matrices and CLIP's logit scale (nothing else in memory)."""

    def __init__(self, cfg, state: dict) -> None:
        import torch
        from torch import nn

        from ucofia.temporal import TemporalTransformer

        self.pos = nn.Embedding(cfg.frame_positions, cfg.embed_dim)
        self.pos.weight.data.copy_(state["frame_position_embeddings.weight"])
        self.temporal = TemporalTransformer(cfg.embed_dim, cfg.temporal_layers, cfg.temporal_heads)
        self.temporal.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                                       if k.startswith("transformerClip.")})
        self.temporal.eval()
        self.w = {name: state[name] for name in ISA_WEIGHTS}
        self.logit_scale = state["logit_scale"]
        self.tau = cfg.isa_temperature
        self.timers = {"temporal": 0.0, "video_sentence+frame_sentence": 0.0, "patch_word": 0.0}
        self.torch = torch

    def to(self, device) -> ReferenceHeads:
        """Move every weight to ``device`` (the GPU check runs the loop on CUDA)."""
        self.pos.to(device)
        self.temporal.to(device)
        self.w = {k: v.to(device) for k, v in self.w.items()}
        self.logit_scale = self.logit_scale.to(device)
        return self

    def pair(self, sentence, words, frames, video_mask, patches):
        """One (text batch, video batch) call of the reference's loose similarity."""
        torch, tau, w = self.torch, self.tau, self.w
        t0 = time.perf_counter()
        n_video, n_frames = frames.shape[:2]
        positions = torch.arange(n_frames, device=frames.device).unsqueeze(0).expand(n_video, -1)
        hidden = self.temporal(frames + self.pos(positions), video_mask) + frames
        video = hidden / hidden.norm(dim=-1, keepdim=True)
        mask = video_mask.unsqueeze(-1)
        count = mask.sum(dim=1)
        count[count == 0.0] = 1.0
        video = (video * mask).sum(dim=1) / count
        video = video / video.norm(dim=-1, keepdim=True)
        t1 = time.perf_counter()
        frame_feats = frames / frames.norm(dim=-1, keepdim=True)
        sent = sentence / sentence.norm(dim=-1, keepdim=True)
        word_feats = words / words.norm(dim=-1, keepdim=True)
        scale = self.logit_scale.exp()
        vs = scale * torch.matmul(torch.matmul(sent, w["global_mat_weight"]),
                                  torch.matmul(video, w["global_mat_weight_1"]).t())
        fs_scores = torch.matmul(sent, frame_feats.permute(0, 2, 1))  # [v, t, F]
        fs_attn = torch.softmax(torch.matmul(torch.softmax(fs_scores / tau, dim=-1), w["frame_logit_weight"]) / tau,
                                dim=-1)
        fs = scale * torch.sum(fs_scores * fs_attn, dim=-1).t()
        t2 = time.perf_counter()
        n_text, n_words, dim = word_feats.shape
        n_pix = patches.shape[1]
        fine = torch.matmul(torch.matmul(word_feats.view(-1, dim), w["local_mat_weight"]),
                            patches.view(-1, dim).t()).view(n_text, n_words, n_video, n_pix)
        word_attn = torch.softmax(torch.matmul(torch.softmax(fine / tau, dim=1).permute(0, 2, 3, 1),
                                               w["word_mat_weight"]) / tau, dim=-1)
        word_level = torch.sum(word_attn.permute(0, 3, 1, 2) * fine, dim=1)  # [t, v, P]
        pix_attn = torch.softmax(torch.matmul(torch.softmax(fine / tau, dim=-1), w["pixel_mat_weight"]) / tau, dim=-1)
        frame_level = torch.sum(pix_attn * fine, dim=-1)  # [t, L, v]
        s2p_attn = torch.softmax(torch.matmul(torch.softmax(word_level / tau, dim=-1), w["pixel_mat_weight2"]) / tau,
                                 dim=-1)
        sent_to_patch = torch.sum(s2p_attn * word_level, dim=-1)
        v2w_attn = torch.softmax(torch.matmul(torch.softmax(frame_level / tau, dim=1).permute(0, 2, 1),
                                              w["word_mat_weight2"]) / tau, dim=-1)
        video_to_word = torch.sum(v2w_attn.permute(0, 2, 1) * frame_level, dim=1)
        pw = (sent_to_patch + video_to_word) / 2
        t3 = time.perf_counter()
        self.timers["temporal"] += t1 - t0
        self.timers["video_sentence+frame_sentence"] += t2 - t1
        self.timers["patch_word"] += t3 - t2
        return vs, fs, pw


def _serve(load, run_batch, finish) -> None:
    """Line protocol with the parent: print readiness, then answer "run I" / "finish" commands
    with one JSON line each, so that the parent can interleave the sides batch by batch."""
    state = load()
    extra = state.get("ready", {}) if isinstance(state, dict) else {}
    print(json.dumps({"ready": True, "rss_inputs_loaded_mib": round(common.rss_mib(), 1), **extra}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            print(json.dumps(run_batch(state, int(cmd[1]))), flush=True)
        elif cmd[0] == "finish":
            print(json.dumps(finish(state)), flush=True)
            return


def side_reference(args, work: Path) -> None:
    import torch

    from ucofia.config import UCoFiAConfig

    def load():
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(bool(args.ftz))
        cfg = UCoFiAConfig.from_dict(json.loads((work / "config.json").read_text()))
        heads = ReferenceHeads(cfg, torch.load(work / "heads.pt", weights_only=True))
        t = {k: torch.from_numpy(np.load(work / f"{k}.npy"))
             for k in ("sentence", "words", "frames", "patches", "video_mask")}
        n_video = t["frames"].shape[0]
        with torch.no_grad():  # warm-up: one pair of batches
            heads.pair(t["sentence"][:REFERENCE_BATCH], t["words"][:REFERENCE_BATCH], t["frames"][:REFERENCE_BATCH],
                       t["video_mask"][:REFERENCE_BATCH], t["patches"][:REFERENCE_BATCH])
        heads.timers = dict.fromkeys(heads.timers, 0.0)
        return {"heads": heads, "t": t, "rows": {}, "seconds": 0.0, "cpu": 0.0,
                "video_batches": [(i, min(i + REFERENCE_BATCH, n_video)) for i in range(0, n_video, REFERENCE_BATCH)]}

    def run_batch(st, i: int) -> dict:
        t, heads = st["t"], st["heads"]
        a, b = i * REFERENCE_BATCH, min((i + 1) * REFERENCE_BATCH, t["sentence"].shape[0])
        cpu0, start = time.process_time(), time.perf_counter()
        row = {lv: [] for lv in LEVELS}
        with torch.no_grad():
            for c, d in st["video_batches"]:
                sims = heads.pair(t["sentence"][a:b], t["words"][a:b], t["frames"][c:d], t["video_mask"][c:d],
                                  t["patches"][c:d])
                for lv, value in zip(LEVELS, sims):
                    row[lv].append(value.cpu().detach().numpy())
        st["rows"][i] = {lv: np.concatenate(row[lv], axis=-1) for lv in LEVELS}
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        st["seconds"] += seconds
        st["cpu"] += cpu
        return {"batch": i, "texts": b - a, "seconds": seconds, "cpu": cpu}

    def finish(st) -> dict:
        done = sorted(st["rows"])
        np.savez(work / f"reference_ftz{int(args.ftz)}.npz",
                 **{lv: np.concatenate([st["rows"][i][lv] for i in done]) for lv in LEVELS})
        texts = sum(st["rows"][i][LEVELS[0]].shape[0] for i in done)
        timers = st["heads"].timers
        return {
            "flush_denormal": bool(args.ftz), "torch_threads": torch.get_num_threads(),
            "text_batches_timed": len(done), "texts_timed": texts, "video_batches": len(st["video_batches"]),
            "seconds_timed": round(st["seconds"], 3), "cpu_seconds_timed": round(st["cpu"], 2),
            "share_of_time": {k: round(v / st["seconds"], 3) for k, v in timers.items()},
            "seconds_by_part_timed": {k: round(v, 3) for k, v in timers.items()},
            "peak_rss_mib": round(common.peak_rss_mib(), 1), "torch_imported": True,
        }

    _serve(load, run_batch, finish)


# ---- reference code side (subprocess, torch, the reference's own modules) -------------------
def side_reference_code(args, work: Path) -> None:
    """The reference's ``_run_on_single_gpu`` on the benchmark's features: per text batch, one call
    with that batch against every video batch, as ``eval_epoch`` runs it for its rows."""
    import reference_code
    import torch

    from ucofia.config import UCoFiAConfig

    def load():
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(bool(args.ftz))
        cfg = UCoFiAConfig.from_dict(json.loads((work / "config.json").read_text()))
        ns = reference_code.load(args.reference_tree)
        model = reference_code.build_model(ns, cfg)
        model.load_state_dict(torch.load(work / REFERENCE_CHECKPOINT, weights_only=True))
        model.eval()
        t = {k: torch.from_numpy(np.load(work / f"{k}.npy"))
             for k in ("sentence", "words", "frames", "patches", "video_mask")}

        def batches(x):
            return [x[i:i + REFERENCE_BATCH] for i in range(0, x.shape[0], REFERENCE_BATCH)]

        # what eval_epoch collects: text batches (input_mask, segment_ids), [n, 1, D] sentence and
        # [n, L, D] word features; video batches (video_mask,), frame and selected-patch features
        sentence = batches(t["sentence"].unsqueeze(1))
        input_mask = torch.ones(t["words"].shape[:2], dtype=torch.long)
        text_batches = [(m, torch.zeros_like(m)) for m in batches(input_mask)]
        video_batches = [(m,) for m in batches(t["video_mask"])]
        state = {"ns": ns, "model": model, "sentence": sentence, "words": batches(t["words"]),
                 "text_batches": text_batches, "video_batches": video_batches, "frames": batches(t["frames"]),
                 "patches": batches(t["patches"]), "rows": {}, "seconds": 0.0, "cpu": 0.0}
        with torch.no_grad():  # warm-up: one pair of batches
            ns.main._run_on_single_gpu(model, text_batches[:1], video_batches[:1], sentence[:1], state["words"][:1],
                                       state["frames"][:1], state["patches"][:1])
        return state

    def run_batch(st, i: int) -> dict:
        cpu0, start = time.process_time(), time.perf_counter()
        with torch.no_grad():
            sims = st["ns"].main._run_on_single_gpu(st["model"], [st["text_batches"][i]], st["video_batches"],
                                                    [st["sentence"][i]], [st["words"][i]], st["frames"],
                                                    st["patches"])
        st["rows"][i] = {lv: rows[0] for lv, rows in zip(LEVELS, sims)}
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        st["seconds"] += seconds
        st["cpu"] += cpu
        return {"batch": i, "texts": int(st["sentence"][i].shape[0]), "seconds": seconds, "cpu": cpu}

    def finish(st) -> dict:
        done = sorted(st["rows"])
        np.savez(work / "reference_code.npz",
                 **{lv: np.concatenate([st["rows"][i][lv] for i in done]) for lv in LEVELS})
        return {
            "code": "reference eval_t2v main_ucofia._run_on_single_gpu (imported from --reference-tree)",
            "flush_denormal": bool(args.ftz), "torch_threads": torch.get_num_threads(),
            "text_batches_timed": len(done), "texts_timed": sum(st["rows"][i][LEVELS[0]].shape[0] for i in done),
            "video_batches": len(st["video_batches"]), "seconds_timed": round(st["seconds"], 3),
            "cpu_seconds_timed": round(st["cpu"], 2), "peak_rss_mib": round(common.peak_rss_mib(), 1),
            "torch_imported": True,
        }

    _serve(load, run_batch, finish)


# ---- runtime side (subprocess, no torch) ---------------------------------------------------
def _runtime_scorer(work: Path, graph_file: str, threads: int, precision: str = "float32"):
    from runtime.backends import open_session
    from runtime.scoring import Scorer
    from ucofia.config import UCoFiAConfig

    cfg = UCoFiAConfig.from_dict(json.loads((work / "config.json").read_text()))
    bundle = common.scorer_bundle(work, cfg, graph_file)
    # the scorer as a long-lived process (the service) runs it: its text side cut out
    # (runtime.backends.text_side; a one-off 1000 x 1000 evaluation keeps the graph whole, ~3.5 % slower)
    return Scorer(open_session(bundle, "scorer", "cpu", threads, precision=precision, split_text_side=True), cfg)


def _scorer_name(levels: str, precision: str) -> str:
    """``all_levels`` / ``patch_word_only`` for float32 (the keys of earlier results), else with the suffix."""
    return levels if precision == "float32" else f"{levels}_{precision}"


def side_runtime(args, work: Path) -> None:
    from runtime.scoring import ArrayVideos, TextFeatures, score_matrix

    def load():
        arrays = {k: np.load(work / f"{k}.npy") for k in ("sentence", "words", "video", "frames", "patches")}
        text = TextFeatures(arrays["sentence"], arrays["words"])
        videos = ArrayVideos({"video": arrays["video"], "frame_features": arrays["frames"],
                              "patches": arrays["patches"]})
        scorers = {_scorer_name(name, precision): _runtime_scorer(work, graph_file, args.threads, precision)
                   for precision in args.precisions
                   for name, graph_file in (("all_levels", "scorer.onnx"), ("patch_word_only", "patch_word_only.onnx"))}
        for scorer in scorers.values():  # session warm-up
            score_matrix(scorer, text.rows(0, 4), ArrayVideos(videos.features(0, 64)))
        n = len(text)
        scorer = scorers["all_levels"]
        tile = scorer.plan_tiles(REFERENCE_BATCH, len(videos), args.memory_mb)
        return {"ready": {"tile": list(tile), "concurrent_tiles": scorer.concurrency},
                "text": text, "videos": videos, "scorers": scorers,
                "out": {p: {lv: np.empty((n, len(videos)), np.float32) for lv in LEVELS} for p in args.precisions},
                "scratch": {lv: np.empty((REFERENCE_BATCH, len(videos)), np.float32) for lv in LEVELS},
                "totals": {name: [0.0, 0.0] for name in scorers}, "batches": 0}

    def run_batch(st, i: int) -> dict:
        a, b = i * REFERENCE_BATCH, min((i + 1) * REFERENCE_BATCH, len(st["text"]))
        rows = st["text"].rows(a, b)
        report = {"batch": i, "texts": b - a}
        for name, scorer in st["scorers"].items():
            precision = next((p for p in args.precisions if name == _scorer_name("all_levels", p)), None)
            out = ({lv: st["out"][precision][lv][a:b] for lv in LEVELS} if precision is not None
                   else {lv: st["scratch"][lv][: b - a] for lv in LEVELS})
            cpu0, start = time.process_time(), time.perf_counter()
            score_matrix(scorer, rows, st["videos"], args.memory_mb, out=out)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            st["totals"][name][0] += seconds
            st["totals"][name][1] += cpu
            report[name] = seconds
        st["batches"] += 1
        return report

    def finish(st) -> dict:
        for precision, levels in st["out"].items():
            np.savez(work / ("runtime.npz" if precision == "float32" else f"runtime_{precision}.npz"), **levels)
        out = {name: {"seconds": round(s, 3), "cpu_seconds": round(c, 2)} for name, (s, c) in st["totals"].items()}
        # the tile plan reported when the side was ready (tile, concurrent_tiles)
        out.update(**st["ready"], batches=st["batches"], texts=len(st["text"]),
                   peak_rss_mib=round(common.peak_rss_mib(), 1),
                   torch_imported="torch" in sys.modules)
        return out

    _serve(load, run_batch, finish)


def floor_shape(cfg, n_video: int) -> tuple[int, int, int]:
    """(m, k, n) of the patch-word level's score product for one text batch against ``n_video``
    videos: [REFERENCE_BATCH * L, D] x [D, V * P], the GEMM whose rate is the level's floor."""
    return REFERENCE_BATCH * cfg.max_words, cfg.embed_dim, n_video * cfg.num_pixels


def side_probe(args, work: Path) -> None:
    """The machine's sustained matmul rate on the level's own GEMM shape and on the runtime's tile
    product, probed once per text batch (its own process: no memory added to the runtime side's
    figure)."""
    from ucofia.config import UCoFiAConfig

    def load():
        cfg = UCoFiAConfig.from_dict(json.loads((work / "config.json").read_text()))
        tile = tuple(int(x) for x in args.tile.split("x"))
        return common.MatmulProbe(args.threads, shape=floor_shape(cfg, args.videos),
                                  extra_shapes=(common.tile_product_shape(cfg, tile, args.threads),))

    _serve(load, lambda probe, i: probe.run() or {"batch": i}, lambda probe: probe.rates())


# ---- parent ---------------------------------------------------------------------------------
class _Side:
    """One side's subprocess, driven batch by batch."""

    def __init__(self, side: str, work: Path, args, **extra) -> None:
        cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--threads", str(args.threads),
               "--memory-mb", str(args.memory_mb), "--precisions", ",".join(args.precisions)]
        if args.reference_tree:
            cmd += ["--reference-tree", str(args.reference_tree)]
        cmd += ["--videos", str(args.videos)]
        for key, value in extra.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads)}
        self.name = f"{side}{extra}"
        # the side process's stderr: open for as long as that process runs, not one block
        self.log = open(work / f"{side}_{'_'.join(map(str, extra.values()))}.stderr", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            raise SystemExit(f"the {self.name} side died; see its stderr:\n"
                             f"{Path(self.log.name).read_text()[-4000:]}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> dict:
        result = {**self.ready, **self.ask("finish")}
        self.proc.wait()
        return result


def _compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    out = {}
    for lv in LEVELS:
        x, y = a[lv], b[lv][: a[lv].shape[0]]
        scale = max(1.0, float(np.abs(x).max()))
        out[lv] = {"max_abs": float(np.abs(x - y).max()), "max_abs_over_scale": float(np.abs(x - y).max() / scale),
                   "same_top1": float((x.argmax(1) == y.argmax(1)).mean())}
    fa, fb = (sum(d[lv][: a[LEVELS[0]].shape[0]] for lv in LEVELS) / 3 for d in (a, b))
    out["fused_same_top1"] = float((fa.argmax(1) == fb.argmax(1)).mean())
    return out


def _precisions(runtime: dict, lower: dict[str, dict[str, np.ndarray]], ours: dict[str, np.ndarray], pw_s: float,
                rt_s: float, pairs: int) -> dict:
    """Each lower scorer precision beside float32: its times (same batches, interleaved) and how
    far its levels are from float32's (every level, the fused top-1 and top-10)."""
    out = {}
    for precision, levels in lower.items():
        all_s = runtime[_scorer_name("all_levels", precision)]["seconds"]
        pw = runtime[_scorer_name("patch_word_only", precision)]["seconds"]
        versus = _compare(ours, levels)
        fa, fb = (sum(d[lv] for lv in LEVELS) / 3 for d in (ours, levels))
        ta, tb = (np.argsort(-f, axis=1, kind="stable")[:, :10] for f in (fa, fb))
        versus["fused_top10_overlap"] = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ta, tb)]))
        versus["fused_max_abs"] = float(np.abs(fa - fb).max())
        cpu = runtime[_scorer_name("all_levels", precision)]["cpu_seconds"]
        out[precision] = {"seconds": all_s, "cpu_seconds": cpu,
                          "over_float32": round(all_s / rt_s, 3), "pairs_per_second": round(pairs / all_s, 1),
                          "patch_word_seconds": pw, "patch_word_over_float32": round(pw / pw_s, 3),
                          "vs_float32": versus}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=common.available_cpus(),
                        help="cores each side may use (torch threads / concurrent scorer tiles)")
    parser.add_argument("--reference-text-batches", type=int, default=0,
                        help="text batches of 32 the flushed reference is timed on (0 = all: no scaling)")
    parser.add_argument("--unflushed-text-batches", type=int, default=1,
                        help="text batches the reference without denormal flushing is timed on (0 = skip)")
    parser.add_argument("--memory-mb", type=float, default=1024)
    parser.add_argument("--reference-tree", type=Path, default=None,
                        help="an extracted checkout of github.com/Ziyang412/UCoFiA (commit 6098be2): also time the "
                             "reference's own _run_on_single_gpu and compare its level values")
    parser.add_argument("--precisions", type=lambda text: text.split(","), default=["float32"],
                        help="scorer precisions the runtime side runs, comma-separated (float32 first): e.g. "
                             "float32,int8 times `--scorer-precision int8` beside float32 on the same batches and "
                             "compares its levels with float32's")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--side", choices=["reference", "reference_code", "runtime", "probe"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ftz", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--text-batches", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tile", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precisions[0] != "float32" or not set(args.precisions) <= {"float32", "int8"}:
        parser.error(f"--precisions: float32 first, then int8 (got {','.join(args.precisions)})")

    if args.side:
        {"reference": side_reference, "reference_code": side_reference_code, "runtime": side_runtime,
         "probe": side_probe}[args.side](args, args.work)
        return

    machine_before = common.machine({"scorer_concurrent_tiles": args.threads, "reference_torch_threads": args.threads})
    monitor = common.CpuMonitor()
    with tempfile.TemporaryDirectory(prefix="ucofia-scoring-") as tmp:
        work = Path(tmp)
        prep = setup(args, work)
        cfg = _config(args.config)
        n_batches = -(-args.texts // REFERENCE_BATCH)
        n_ref = min(args.reference_text_batches or n_batches, n_batches)
        n_unflushed = min(args.unflushed_text_batches, n_batches)
        print("[scoring] starting the sides ...", file=sys.stderr, flush=True)
        runtime_side = _Side("runtime", work, args)
        tile = "x".join(map(str, runtime_side.ready["tile"]))
        sides = {"runtime": runtime_side, "reference": _Side("reference", work, args, ftz=1),
                 "probe": _Side("probe", work, args, tile=tile)}
        if n_unflushed:
            sides["unflushed"] = _Side("reference", work, args, ftz=0)
        if args.reference_tree:
            sides["reference_code"] = _Side("reference_code", work, args, ftz=1)
        # interleaved batch by batch, so that load changes on a shared machine hit every side alike
        for i in range(n_batches):
            if i < n_unflushed:
                sides["unflushed"].ask(f"run {i}")
            if i < n_ref:
                sides["reference"].ask(f"run {i}")
                if "reference_code" in sides:
                    sides["reference_code"].ask(f"run {i}")
            report = sides["runtime"].ask(f"run {i}")
            sides["probe"].ask(f"run {i}")
            print(f"[scoring] text batch {i + 1}/{n_batches}: runtime {report['all_levels']:.2f} s", file=sys.stderr,
                  flush=True)
        runtime, reference = sides["runtime"].finish(), sides["reference"].finish()
        unflushed = sides["unflushed"].finish() if n_unflushed else None
        ref_code = sides["reference_code"].finish() if "reference_code" in sides else None
        ours = dict(np.load(work / "runtime.npz"))
        lower = {p: dict(np.load(work / f"runtime_{p}.npz")) for p in args.precisions[1:]}
        ref_levels = dict(np.load(work / "reference_ftz1.npz"))
        agreement = _compare(ref_levels, ours)
        code_agreement = None
        if ref_code is not None:
            code_levels = dict(np.load(work / "reference_code.npz"))
            code_agreement = {"reference_code_vs_ucofia_run": _compare(code_levels, ours),
                              "reference_code_vs_reimplementation": _compare(code_levels, ref_levels)}
        rates = sides["probe"].finish()

    n_text, n_video = args.texts, args.videos
    pairs = n_text * n_video

    def full(side: dict) -> float:
        return side["seconds_timed"] * n_text / side["texts_timed"]

    ref_s = full(reference)
    rt_s = runtime["all_levels"]["seconds"]
    pw_s = runtime["patch_word_only"]["seconds"]
    flops = patch_word_flops(cfg, n_text, n_video)
    floor_s = flops / (rates["best_gflops"] * 1e9)
    ref_scoring_mem = reference["peak_rss_mib"] - reference["rss_inputs_loaded_mib"]
    rt_scoring_mem = runtime["peak_rss_mib"] - runtime["rss_inputs_loaded_mib"]
    result = {
        "benchmark": "scoring", "config": args.config, "texts": n_text, "videos": n_video,
        "geometry": {"embed_dim": cfg.embed_dim, "max_words": cfg.max_words, "num_pixels": cfg.num_pixels,
                     "max_frames": cfg.max_frames},
        "features": "raw sentence/word/frame ~ N(0,1), raw patches ~ N(0,0.01), 6-12 real frames; "
                    "ISA matrices identity + N(0, 0.05^2)",
        "machine": machine_before, "load_average_after": common.load_average(),
        "contention": common.contention(monitor, args.threads),
        "matmul_rate": rates,
        "reference_loop": {**reference, "seconds_full": round(ref_s, 2),
                           "scaled": reference["texts_timed"] < n_text,
                           "pairs_per_second": round(pairs / ref_s, 1)},
        "reference_loop_unflushed": None if unflushed is None else {
            **unflushed, "seconds_full_scaled": round(full(unflushed), 1), "scaled": unflushed["texts_timed"] < n_text,
            "slowdown_vs_flushed": round(full(unflushed) / ref_s, 2)},
        "reference_code": None if ref_code is None else {
            **ref_code, "seconds_full": round(full(ref_code), 2), "scaled": ref_code["texts_timed"] < n_text,
            "pairs_per_second": round(pairs / full(ref_code), 1), "weights": prep["reference_checkpoint"]},
        "ucofia_run": {**runtime, "pairs_per_second": round(pairs / rt_s, 1),
                       "index_time_video_feature_seconds": prep["video_feature_seconds"]},
        "patch_word_level": {
            "gflop": round(flops / 1e9, 1), "seconds": pw_s, "achieved_gflops": round(flops / pw_s / 1e9, 1),
            "matmul_floor_seconds": round(floor_s, 2), "seconds_over_floor": round(pw_s / floor_s, 2),
            "floor": "the level's FLOPs (score product and both mixing products) at the best sustained float32 "
                     "GEMM rate measured interleaved on [32 L, D] x [D, V P] and on the runtime's tile product "
                     "(matmul_rate)",
            "target_within": PATCH_WORD_FLOOR_TARGET},
        "ratios": {
            "speedup_vs_reference_loop": round(ref_s / rt_s, 2), "target_speedup": SPEEDUP_TARGET,
            # CPU seconds (process time) of each side, the reference's scaled like its wall time: on a
            # shared machine the two sides may get different shares of the cores, and with one thread
            # per side this ratio is the contention-robust one (with more, it counts torch's spin-waits)
            "speedup_cpu_time": round(reference["cpu_seconds_timed"] * n_text / reference["texts_timed"]
                                      / runtime["all_levels"]["cpu_seconds"], 2),
            "speedup_vs_unflushed_reference": None if unflushed is None else round(full(unflushed) / rt_s, 1),
            "speedup_vs_reference_code": None if ref_code is None else round(full(ref_code) / rt_s, 2),
            "speedup_cpu_time_vs_reference_code": None if ref_code is None else round(
                ref_code["cpu_seconds_timed"] * n_text / ref_code["texts_timed"]
                / runtime["all_levels"]["cpu_seconds"], 2),
            "reference_code_over_reimplementation": None if ref_code is None else round(full(ref_code) / ref_s, 3),
            "peak_rss_runtime_over_reference": round(runtime["peak_rss_mib"] / reference["peak_rss_mib"], 3),
            "scoring_memory_runtime_over_reference": round(rt_scoring_mem / max(ref_scoring_mem, 1e-9), 3),
            "patch_word_seconds_over_matmul_floor": round(pw_s / floor_s, 2),
            "target_patch_word_over_floor": PATCH_WORD_FLOOR_TARGET,
        },
        "scorer_precisions": _precisions(runtime, lower, ours, pw_s, rt_s, pairs),
        "agreement_with_reference_on_timed_rows": agreement,
        "agreement_with_reference_code_on_timed_rows": code_agreement,
    }
    summary = [
        f"reference loop (flushed denormals)"
        f"{' scaled from ' + str(reference['texts_timed']) + ' texts' if result['reference_loop']['scaled'] else ''}: "
        f"{ref_s:.1f} s, {pairs / ref_s:,.0f} pairs/s, peak RSS {reference['peak_rss_mib']:.0f} MiB "
        f"(temporal {reference['share_of_time']['temporal']:.0%}, "
        f"patch-word {reference['share_of_time']['patch_word']:.0%})",
        f"ucofia-run tiled scorer: {rt_s:.1f} s, {pairs / rt_s:,.0f} pairs/s, "
        f"peak RSS {runtime['peak_rss_mib']:.0f} MiB "
        f"-> {ref_s / rt_s:.1f}x faster (target {SPEEDUP_TARGET:g}x; "
        f"{result['ratios']['speedup_cpu_time']:.1f}x in CPU seconds), "
        f"peak RSS x{runtime['peak_rss_mib'] / reference['peak_rss_mib']:.2f}",
        f"patch-word level: {pw_s:.1f} s for {flops / 1e12:.2f} TFLOP = {flops / pw_s / 1e9:.0f} GFLOP/s; matmul rate "
        f"{rates['best_gflops']:.0f} GFLOP/s ({rates['best_method']} on {rates['best_shape_m_k_n']}) "
        f"-> floor {floor_s:.1f} s, "
        f"{pw_s / floor_s:.2f}x the floor (target {PATCH_WORD_FLOOR_TARGET:g}x)",
    ]
    if ref_code is not None:
        worst = max(code_agreement["reference_code_vs_ucofia_run"][lv]["max_abs"] for lv in LEVELS)
        summary.append(
            f"reference code's own _run_on_single_gpu"
            f"{' scaled from ' + str(ref_code['texts_timed']) + ' texts' if ref_code['texts_timed'] < n_text else ''}: "
            f"{full(ref_code):.1f} s, peak RSS {ref_code['peak_rss_mib']:.0f} MiB -> ucofia-run "
            f"{full(ref_code) / rt_s:.1f}x faster; the re-implementation takes {ref_s / full(ref_code):.2f}x its time; "
            f"level values differ from ucofia-run's by at most {worst:.2g}")
    for precision, row in result["scorer_precisions"].items():
        versus = row["vs_float32"]
        summary.append(
            f"--scorer-precision {precision}: all levels {row['seconds']:.1f} s ({row['over_float32']:.2f}x "
            f"float32's {rt_s:.1f} s), patch-word level {row['patch_word_seconds']:.1f} s "
            f"({row['patch_word_over_float32']:.2f}x); vs float32: patch_word max abs "
            f"{versus['patch_word']['max_abs']:.2g}, fused top-1 same for {versus['fused_same_top1']:.1%}, "
            f"top-10 overlap {versus['fused_top10_overlap']:.1%}")
    if result["contention"]["contended"]:
        summary.append("NOTE: " + result["contention"]["note"])
    if unflushed is not None:
        summary.append(f"reference without denormal flushing (scaled from {unflushed['texts_timed']} texts): "
                       f"{full(unflushed):.0f} s ({full(unflushed) / ref_s:.1f}x the flushed reference)")
    result["summary"] = summary
    common.write_result(args.output, result)
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
