"""GPU check: the runtime's GPU backends on exported engines, benchmarks 1-2 (encoders, scoring) on a
CUDA device, plus float16/bfloat16 errors.

One script, meant for a lent GPU machine with a few minutes of time (under 8 minutes on an H100:
a time budget skips what is left when it runs out, saying so). Run from the repository root (it
puts the root on sys.path, no install needed)::

    python benchmarks/gpu_check.py --out gpu_results/            # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check   # dry run
    .venv/bin/python benchmarks/gpu_check.py --device cpu --sections engines --out /tmp/gpu_check

It runs what the machine has and says what it skipped and why: the ``engines`` section needs
torch (to export) and, for its GPU parts, TensorRT (``ucofia[tensorrt]``) and/or onnxruntime-gpu
(docs/install.md, "GPU install"); the torch sections need a CUDA build of torch (``--device cpu``
runs them on the CPU as a dry run).

0. engines (``benchmarks/gpu_runtime.py``): exports the tiny config to float32 and float16 bundles,
   with TensorRT engines when TensorRT and a GPU are there (small encoder profiles, so that calls
   are split and padded; the export verifies every engine against onnxruntime), then in a
   subprocess where ``import torch`` fails runs every graph through ``TensorRTSession`` and
   onnxruntime's CUDA provider on batch sizes that force splitting and padding, compares with the
   CPU, checks that 200 calls grow no device memory, and times scoring N x N (default 1000)
   against the CPU.

What the other sections measure (ViT-B/32 geometry, random weights; --quick: tiny geometry, small sizes):

1. precision: the device's fp32 vs float16 and bfloat16 autocast on the same inputs -- video
   encoder outputs (video, frame, patch features; patch top-k selections that differ), text
   encoder outputs, and the three similarity levels on 1000 x 1000 random features (max abs
   error over scale, top-1 agreement, top-10 overlap).
2. scoring (1000 x 1000, 32 words, 48 patches, D 512): the model's scorer over tiles with video
   features computed once (fp32, fp16/bf16 autocast) vs the faithful re-implementation of the
   reference evaluation loop (benchmarks/scoring.py: 32 x 32 batches, temporal transformer
   recomputed per pair of batches) on the same device, and the runtime's onnxruntime CPU scorer
   on this machine's cores.
3. encoders: torch eager on the device (fp32, TF32 matmuls, fp16 and bf16 autocast) vs
   onnxruntime on the CPU (the bundle exported here, unverified to save time -- the export tests
   verify it): video encoder at 12 and 48 frames per call and at a large batch, text encoder at
   64 texts.

Writes ``gpu_check.json`` into ``--out`` and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import common  # noqa: E402
import numpy as np  # noqa: E402

from ucofia.config import LEVELS  # noqa: E402

PRECISIONS = ("fp16", "bf16")
SECTIONS = ("engines", "precision_encoders", "scoring", "encoders")
# the engines section's profiles: small encoder profiles force splitting and padding; the scorer keeps
# the export's default tile profile (64 texts x 1024 videos), what scoring runs with in deployment
ENGINE_TEXTS, ENGINE_VIDEOS = (2, 4, 8), (2, 2, 4)


class Budget:
    """Wall-clock budget: sections check ``left()`` and are skipped (recorded) when it is spent."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def _tf32(enabled: bool) -> None:
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled


def _err(ref: np.ndarray, got: np.ndarray) -> dict:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    scale = max(float(np.abs(ref).max()), 1e-12)
    return {"max_abs": float(np.abs(got - ref).max()), "max_abs_over_scale": float(np.abs(got - ref).max() / scale),
            "finite": bool(np.isfinite(got).all())}


def _ranking(ref: np.ndarray, got: np.ndarray, k: int = 10) -> dict:
    top_r, top_g = np.argsort(-ref, 1)[:, :k], np.argsort(-got, 1)[:, :k]
    return {"same_top1": float((ref.argmax(1) == got.argmax(1)).mean()),
            f"mean_top{k}_overlap": float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_r, top_g)]))}


# ---- sections --------------------------------------------------------------------------------
def inputs(cfg, n_video: int, n_text: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    f, size = cfg.max_frames, cfg.clip.image_size
    ids = rng.integers(1, cfg.clip.vocab_size - 2, (n_text, cfg.max_words)).astype(np.int64)
    ids[:, 0], ids[:, -1] = cfg.clip.vocab_size - 2, cfg.clip.vocab_size - 1
    return {"frames": rng.standard_normal((n_video, f, 3, size, size), dtype=np.float32),
            "video_mask": (np.arange(f)[None] < rng.integers(f // 2, f + 1, n_video)[:, None]).astype(np.float32),
            "input_ids": ids}


def encoder_precision(model, cfg, device: str, quick: bool) -> dict:
    """fp16 / bf16 autocast vs fp32 encoder outputs on the device."""
    import torch

    data = inputs(cfg, 2 if quick else 4, 8 if quick else 64, seed=1)
    frames = torch.from_numpy(data["frames"]).to(device)
    mask = torch.from_numpy(data["video_mask"]).to(device)
    ids = torch.from_numpy(data["input_ids"]).to(device)
    out = {}
    with torch.inference_mode():
        _tf32(False)
        ref_v, ref_t = model.encode_video(frames, mask), model.encode_text(ids)
        for precision in PRECISIONS:
            try:
                with _autocast(device, precision):
                    v, t = model.encode_video(frames, mask), model.encode_text(ids)
            except Exception as exc:  # e.g. a dtype this device's autocast lacks
                out[precision] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            sel = (v.patch_indices == ref_v.patch_indices).all(dim=-1).float().mean().item()
            out[precision] = {
                "video": _err(ref_v.video.float().cpu().numpy(), v.video.float().cpu().numpy()),
                "frames": _err(ref_v.frames.float().cpu().numpy(), v.frames.float().cpu().numpy()),
                "patches": _err(ref_v.patches.float().cpu().numpy(), v.patches.float().cpu().numpy()),
                "frames_with_same_patch_selection": sel,
                "sentence": _err(ref_t.sentence.float().cpu().numpy(), t.sentence.float().cpu().numpy()),
                "words": _err(ref_t.words.float().cpu().numpy(), t.words.float().cpu().numpy()),
            }
    return out


def score_tiled(model, feats: dict, device: str, precision: str, text_tile: int) -> dict:
    """The model's three levels over text tiles x all videos (video features precomputed)."""
    import torch

    levels = {lv: [] for lv in LEVELS}
    with torch.inference_mode(), _autocast(device, precision):
        for t0 in range(0, feats["sentence"].shape[0], text_tile):
            sims = model.score(feats["sentence"][t0:t0 + text_tile], feats["words"][t0:t0 + text_tile],
                               feats["video"], feats["frames"], feats["patches"])
            for lv in LEVELS:
                levels[lv].append(sims[lv].float())
    return {lv: torch.cat(v) for lv, v in levels.items()}


def scoring(model, cfg, device: str, n: int, quick: bool, work: Path, threads: int, budget: Budget) -> dict:
    """Tiled scorer (fp32/fp16/bf16) vs the reference loop on the device; ORT CPU scorer; errors."""
    import scoring as sb
    import torch

    host = sb.make_features(cfg, n, n)
    feats = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
    with torch.inference_mode():
        feats["video"] = model._temporal(feats["frames"], feats["video_mask"])
    text_tile = min(n, 250)
    out: dict = {"texts": n, "videos": n, "text_tile": text_tile}
    _tf32(False)
    results = {}
    for precision in ("fp32", "tf32") + PRECISIONS:
        _tf32(precision == "tf32")
        try:
            seconds = _time(lambda: score_tiled(model, feats, device, precision, text_tile), device, 2 if quick else 3)
            results[precision] = score_tiled(model, feats, device, precision, text_tile)
            out[f"tiled_{precision}_seconds"] = round(seconds, 4)
            out[f"tiled_{precision}_pairs_per_second"] = round(n * n / seconds, 1)
        except Exception as exc:
            out[f"tiled_{precision}_error"] = f"{type(exc).__name__}: {exc}"
    _tf32(False)
    ref32 = {lv: v.cpu().numpy() for lv, v in results["fp32"].items()}
    out["errors_vs_fp32"] = {}
    for precision in ("tf32",) + PRECISIONS:
        if precision in results:
            got = {lv: v.cpu().numpy() for lv, v in results[precision].items()}
            fused_r, fused_g = (sum(d[lv] for lv in LEVELS) / 3 for d in (ref32, got))
            out["errors_vs_fp32"][precision] = {**{lv: {**_err(ref32[lv], got[lv]), **_ranking(ref32[lv], got[lv])}
                                                   for lv in LEVELS}, "fused": _ranking(fused_r, fused_g)}

    # the reference loop on the device (fp32), as benchmarks/scoring.py runs it on the CPU
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(sb.HEAD_PREFIXES)}
    state["logit_scale"] = model.clip.logit_scale.detach().cpu()
    heads = sb.ReferenceHeads(cfg, state).to(device)
    t = {k: feats[k] for k in ("sentence", "words", "frames", "patches", "video_mask")}
    batch = sb.REFERENCE_BATCH

    def reference_loop() -> dict:
        rows = {lv: [] for lv in LEVELS}
        with torch.inference_mode():
            for a in range(0, n, batch):
                row = {lv: [] for lv in LEVELS}
                for c in range(0, n, batch):
                    sims = heads.pair(t["sentence"][a:a + batch], t["words"][a:a + batch], t["frames"][c:c + batch],
                                      t["video_mask"][c:c + batch], t["patches"][c:c + batch])
                    for lv, value in zip(LEVELS, sims):
                        row[lv].append(value.cpu().numpy())
                for lv in LEVELS:
                    rows[lv].append(np.concatenate(row[lv], axis=-1))
        return {lv: np.concatenate(v) for lv, v in rows.items()}

    if budget.left() > 30:
        start = time.perf_counter()
        ref = reference_loop()
        _sync(device)
        out["reference_loop_seconds"] = round(time.perf_counter() - start, 3)
        out["speedup_tiled_fp32_over_reference_loop"] = round(
            out["reference_loop_seconds"] / out["tiled_fp32_seconds"], 1)
        out["reference_loop_vs_tiled_fp32"] = {lv: _err(ref[lv], ref32[lv]) for lv in LEVELS}
    else:
        out["reference_loop"] = "skipped: time budget"

    # the runtime's onnxruntime CPU scorer on the same features
    if budget.left() > 40:
        from runtime.backends import open_session
        from runtime.scoring import ArrayVideos, Scorer, TextFeatures, score_matrix

        common.export_scorer(model.cpu(), work / "scorer.onnx")
        model.to(device)
        scorer = Scorer(open_session(common.scorer_bundle(work, cfg), "scorer", "cpu", threads), cfg)
        text = TextFeatures(host["sentence"], host["words"])
        videos = ArrayVideos({"video": feats["video"].cpu().numpy(), "frame_features": host["frames"],
                              "patches": host["patches"]})
        start = time.perf_counter()
        levels = score_matrix(scorer, text, videos)
        out["onnxruntime_cpu_seconds"] = round(time.perf_counter() - start, 3)
        out["onnxruntime_cpu_concurrent_tiles"] = scorer.concurrency
        out["onnxruntime_cpu_vs_device_fp32"] = {lv: _err(ref32[lv], levels[lv]) for lv in LEVELS}
        out["device_fp32_speedup_over_onnxruntime_cpu"] = round(
            out["onnxruntime_cpu_seconds"] / out["tiled_fp32_seconds"], 1)
    else:
        out["onnxruntime_cpu"] = "skipped: time budget"
    return out


def encoders(model, cfg, device: str, quick: bool, work: Path, threads: int, budget: Budget) -> dict:
    """torch eager on the device (fp32/tf32/fp16/bf16) vs onnxruntime CPU, frames/s and texts/s."""
    import torch

    videos_per_call = (1, 4) + (() if quick else (32,))
    data = inputs(cfg, max(videos_per_call), 64 if not quick else 16, seed=2)
    out: dict = {}
    repeats = 2 if quick else 5
    with torch.inference_mode():
        for precision in ("fp32", "tf32") + PRECISIONS:
            _tf32(precision == "tf32")
            res = {}
            try:
                for v in videos_per_call:
                    fr = torch.from_numpy(data["frames"][:v]).to(device)
                    mk = torch.from_numpy(data["video_mask"][:v]).to(device)
                    with _autocast(device, precision):
                        s = _time(lambda: model.encode_video(fr, mk), device, repeats)
                    res[f"video_{v * cfg.max_frames}_frames_per_s"] = round(v * cfg.max_frames / s, 1)
                ids = torch.from_numpy(data["input_ids"]).to(device)
                with _autocast(device, precision):
                    s = _time(lambda: model.encode_text(ids), device, repeats)
                res[f"text_{len(ids)}_texts_per_s"] = round(len(ids) / s, 1)
            except Exception as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"
            out[f"torch_{device.split(':')[0]}_{precision}"] = res
        _tf32(False)
    if budget.left() < 60:
        out["onnxruntime_cpu"] = "skipped: time budget"
        return out
    from export import export_bundle
    from runtime.backends import open_session
    from runtime.bundle import load_bundle

    start = time.perf_counter()
    export_bundle(model.cpu(), work / "bundle", verify=False, force=True)
    model.to(device)
    out["export_seconds_unverified"] = round(time.perf_counter() - start, 1)
    bundle = load_bundle(work / "bundle")
    res = {}
    venc = open_session(bundle, "video_encoder", "cpu", threads)
    for v in videos_per_call[:2]:
        feeds = {"frames": data["frames"][:v], "video_mask": data["video_mask"][:v]}
        res[f"video_{v * cfg.max_frames}_frames_per_s"] = round(
            v * cfg.max_frames / _time(lambda: venc.run(feeds), "cpu", 3), 2)
    tenc = open_session(bundle, "text_encoder", "cpu", threads)
    res[f"text_{len(data['input_ids'])}_texts_per_s"] = round(
        len(data["input_ids"]) / _time(lambda: tenc.run({"input_ids": data["input_ids"]}), "cpu", 3), 2)
    out[f"onnxruntime_cpu_{threads}_threads"] = res
    return out


def engines(work: Path, n: int, budget: Budget) -> dict:
    """Export fp32/fp16 tiny bundles (with engines where TensorRT runs) and run gpu_runtime.py on them
    with torch blocked."""
    import subprocess

    from export import export_bundle
    from export.tensorrt_build import AxisRange, TrtBuildOptions
    from runtime.backends.tensorrt_engines import TensorRTError, import_tensorrt

    out: dict = {"skipped": {}}
    try:
        import_tensorrt()
        from export.tensorrt_build import device_info

        out["tensorrt_device"] = device_info()
        trt = True
    except TensorRTError as exc:
        out["skipped"]["tensorrt_engines"] = str(exc).splitlines()[0]
        trt = False
    options = TrtBuildOptions(texts=AxisRange(*ENGINE_TEXTS), videos=AxisRange(*ENGINE_VIDEOS))
    model = common.random_model(common.config("tiny"))
    bundles = []
    for dtype in ("float32", "float16"):
        if budget.left() < 60:
            out["skipped"][dtype] = "time budget"
            continue
        path = work / f"tiny_{dtype}"
        start = time.perf_counter()
        try:
            manifest = export_bundle(model, path, fp16=dtype == "float16", trt=trt, trt_options=options,
                                     allow_small_vocab=True, force=True)
        except Exception as exc:  # a failed engine verification is a result too
            out[f"export_{dtype}"] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
            continue
        section = manifest.get("tensorrt") or {}
        out[f"export_{dtype}"] = {"seconds": round(time.perf_counter() - start, 1),
                                  "engines": bool(section), "engine_verification": section.get("verification")}
        bundles.append(path)
    if not bundles:
        return out
    result = work / "gpu_runtime.json"
    cmd = [sys.executable, str(HERE / "gpu_runtime.py"), *map(str, bundles), "--out", str(result), "--size", str(n),
           "--block-torch"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, budget.left()))
    if done.returncode != 0:
        out["runtime"] = {"error": done.stderr[-3000:]}
        return out
    out["runtime"] = json.loads(result.read_text())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_check.json")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny geometry and small sizes (a dry run)")
    parser.add_argument("--size", type=int, default=None, help="texts = videos for scoring (default 1000; quick 96)")
    parser.add_argument("--threads", type=int, default=common.available_cpus(), help="onnxruntime CPU threads")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    args = parser.parse_args()
    budget = Budget(args.budget_s)
    wanted = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown --sections {unknown}; choose from {', '.join(SECTIONS)}")

    import torch

    skipped_device = None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        skipped_device = ("torch sees no CUDA device (torch.cuda.is_available() is False): the torch sections "
                          "need a CUDA build of torch on a GPU machine (--device cpu runs them as a dry run)")
        print(f"[gpu_check] {skipped_device}", file=sys.stderr)
    torch.set_num_threads(args.threads)
    cfg = common.config("tiny" if args.quick else "vit_b32")
    n = args.size or (96 if args.quick else 1000)
    info = {"device": args.device, "quick": args.quick, "config": "tiny" if args.quick else "vit_b32",
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "machine": common.machine()}
    if args.device.startswith("cuda") and not skipped_device:
        props = torch.cuda.get_device_properties(torch.device(args.device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = "onnxruntime not installed"
    torch_sections = [name for name in wanted if name != "engines"]
    model = common.random_model(cfg).to(args.device) if torch_sections and not skipped_device else None
    result: dict = {"benchmark": "gpu_check", "info": info}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ucofia-gpu-") as tmp:
        sections = (("engines", lambda: engines(Path(tmp) / "engines", n, budget)),
                    ("precision_encoders", lambda: encoder_precision(model, cfg, args.device, args.quick)),
                    ("scoring",
                     lambda: scoring(model, cfg, args.device, n, args.quick, Path(tmp), args.threads, budget)),
                    ("encoders",
                     lambda: encoders(model, cfg, args.device, args.quick, Path(tmp), args.threads, budget)))
        for name, fn in sections:
            if name not in wanted:
                continue
            if name != "engines" and skipped_device:
                result[name] = f"skipped: {skipped_device}"
                continue
            if budget.left() <= 0:
                result[name] = "skipped: time budget"
                continue
            print(f"[gpu_check] {name} (t={budget.elapsed():.0f}s) ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                result[name] = fn()
            except Exception as exc:  # keep what the other sections measured
                result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(f"[gpu_check] {name} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    result["seconds_total"] = round(budget.elapsed(), 1)
    result["summary"] = summary(result)
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(result["summary"]))
    print(f"wrote {path}", file=sys.stderr)


def engines_summary(e: dict) -> list[str]:
    lines = [f"engines: skipped {k}: {v}" for k, v in e.get("skipped", {}).items()]
    for dtype in ("float32", "float16"):
        export = e.get(f"export_{dtype}")
        if isinstance(export, dict):
            verified = (export.get("engine_verification") or {}).get("passed")
            done = (export["error"] if "error" in export else
                    f"{export['seconds']} s, engines {export['engines']}, verified against onnxruntime {verified}")
            lines.append(f"engines: export {dtype}: {done}")
    runtime = e.get("runtime") or {}
    if "error" in runtime:
        lines.append(f"engines: runtime worker failed: {runtime['error'][-500:]}")
    for path, b in runtime.get("bundles", {}).items():
        for backend, why in b.get("skipped", {}).items():
            lines.append(f"engines: {Path(path).name} {backend} skipped: {why}")
        for backend in ("tensorrt", "cuda"):
            if backend in b:
                r = b[backend]
                if "error" in r:
                    lines.append(f"engines: {Path(path).name} {backend}: {r['error']}")
                    continue
                ok = all(c["within_tolerance"] for g in r["compare"].values() for c in g["cases"])
                lines.append(f"engines: {Path(path).name} {backend}: within tolerance of the CPU {ok}; 200 calls "
                             f"grow device memory by {r['memory']['device_memory_growth_bytes']} B")
        s = b.get("scoring", {})
        lines.append(f"engines: {Path(path).name} scoring {s.get('n')}^2: " + ", ".join(
            f"{k} {v['seconds']} s" for k, v in s.items() if isinstance(v, dict)))
    return lines


def summary(r: dict) -> list[str]:
    lines = [f"device {r['info'].get('gpu', r['info']['device'])}, torch {r['info']['torch']}, "
             f"{r['seconds_total']} s in all"]
    if isinstance(r.get("engines"), dict):
        lines += engines_summary(r["engines"])
    s = r.get("scoring")
    if isinstance(s, dict) and "tiled_fp32_seconds" in s:
        line = f"scoring {s['texts']}x{s['videos']}: tiled fp32 {s['tiled_fp32_seconds']:.3f} s"
        for p in ("tf32",) + PRECISIONS:
            if f"tiled_{p}_seconds" in s:
                line += f", {p} {s[f'tiled_{p}_seconds']:.3f} s"
        if "reference_loop_seconds" in s:
            line += (f"; reference loop {s['reference_loop_seconds']:.2f} s "
                     f"({s['speedup_tiled_fp32_over_reference_loop']}x)")
        if "onnxruntime_cpu_seconds" in s:
            line += f"; onnxruntime CPU {s['onnxruntime_cpu_seconds']:.2f} s"
        lines.append(line)
        for p, e in s.get("errors_vs_fp32", {}).items():
            lines.append(f"  {p} vs fp32: " + ", ".join(
                f"{lv} err/scale {e[lv]['max_abs_over_scale']:.1e} top1 {e[lv]['same_top1']:.3f}" for lv in LEVELS)
                + f", fused top1 {e['fused']['same_top1']:.3f}")
    elif s is not None:
        lines.append(f"scoring: {s if isinstance(s, str) else s.get('error')}")
    p = r.get("precision_encoders")
    if isinstance(p, dict):
        for prec, e in p.items():
            if "error" in e:
                lines.append(f"encoders {prec}: {e['error']}")
            else:
                lines.append(f"encoders {prec} vs fp32: video {e['video']['max_abs_over_scale']:.1e}, patches "
                             f"{e['patches']['max_abs_over_scale']:.1e}, same patch selection "
                             f"{e['frames_with_same_patch_selection']:.3f}, "
                             f"sentence {e['sentence']['max_abs_over_scale']:.1e}")
    enc = r.get("encoders")
    if isinstance(enc, dict):
        for k, v in enc.items():
            if isinstance(v, dict):
                lines.append(f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items()))
    return lines


if __name__ == "__main__":
    main()
