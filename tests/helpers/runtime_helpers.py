"""Test helpers for the runtime: a hand-built bundle of small ONNX graphs (no torch, no export).

The fake graphs honour the bundle contract's names, shapes and dtypes with simple maths, so the
runtime's plumbing (bundle loading, backends, tiling, index, search, CLI) is tested on its own.
End-to-end tests with a bundle exported from the real tiny model live beside them.

Also: synthetic indexes and small clips, ``run_cli`` (``ucofia-run`` in this process) and
``run_cli_process`` (in a subprocess, where isolation is the point), and an import blocker for
subprocesses (``import_blocker``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from cli_helpers import CliResult, invoke
from onnx import TensorProto, helper, numpy_helper

from ucofia.config import UCoFiAConfig, tiny_config

OPSET = 17
PROG_NAME = "python -m runtime.cli"  # the program name click shows in usage lines, as in a subprocess
VOCAB_ROWS = 97  # token ids are reduced modulo this before the embedding lookup


def vocab_file() -> Path:
    """The CLIP BPE vocabulary shipped with open_clip (located without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _vinfo(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _text_graph(cfg: UCoFiAConfig, rng: np.random.Generator) -> onnx.GraphProto:
    d, l = cfg.embed_dim, cfg.max_words
    emb = rng.standard_normal((VOCAB_ROWS, d)).astype(np.float32)
    pos = rng.standard_normal((l, d)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Mod", ["input_ids", "rows"], ["ids_mod"]),
        helper.make_node("Gather", ["emb", "ids_mod"], ["tok"]),
        helper.make_node("Add", ["tok", "pos"], ["words"]),
        helper.make_node("ReduceMean", ["words"], ["sentence"], axes=[1], keepdims=0),
    ]
    return helper.make_graph(
        nodes, "text_encoder", [_vinfo("input_ids", TensorProto.INT64, ["T", l])],
        [_vinfo("sentence", TensorProto.FLOAT, ["T", d]), _vinfo("words", TensorProto.FLOAT, ["T", l, d])],
        [_const("rows", np.array(VOCAB_ROWS, dtype=np.int64)), _const("emb", emb), _const("pos", pos)])


def _video_graph(cfg: UCoFiAConfig, rng: np.random.Generator) -> onnx.GraphProto:
    d, f, p, h = cfg.embed_dim, cfg.max_frames, cfg.num_pixels, cfg.clip.image_size
    proj = rng.standard_normal((3, d)).astype(np.float32)
    patch_mix = (1 + 0.5 * rng.standard_normal((p, d))).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["frames"], ["rgb"], axes=[3, 4], keepdims=0),  # [V,F,3]
        helper.make_node("MatMul", ["rgb", "proj"], ["frame_features"]),  # [V,F,D]
        helper.make_node("Tanh", ["frame_features"], ["ff_t"]),
        helper.make_node("Tile", ["ff_t", "reps"], ["tiled"]),  # [V,P,D]
        helper.make_node("Mul", ["tiled", "patch_mix"], ["patches"]),
        helper.make_node("Unsqueeze", ["video_mask", "ax2"], ["mask3"]),
        helper.make_node("Mul", ["frame_features", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "ax1"], ["summed"], keepdims=0),
        helper.make_node("LpNormalization", ["summed"], ["video"], axis=-1, p=2),
    ]
    return helper.make_graph(
        nodes, "video_encoder",
        [_vinfo("frames", TensorProto.FLOAT, ["V", f, 3, h, h]), _vinfo("video_mask", TensorProto.FLOAT, ["V", f])],
        [_vinfo("video", TensorProto.FLOAT, ["V", d]), _vinfo("frame_features", TensorProto.FLOAT, ["V", f, d]),
         _vinfo("patches", TensorProto.FLOAT, ["V", p, d])],
        [_const("proj", proj), _const("patch_mix", patch_mix),
         _const("reps", np.array([1, p // f, 1], dtype=np.int64)),
         _const("ax1", np.array([1], dtype=np.int64)), _const("ax2", np.array([2], dtype=np.int64))])


def _pairwise_patch_word() -> list[onnx.NodeProto]:
    """patch_word from the full [t*L, v, P] word-patch similarity tensor, softmax-pooled over
    patches and averaged over words: like the real scorer's ISA level, its working memory grows
    with t * v * L * P (three float32 copies of that tensor)."""
    return [
        helper.make_node("Reshape", ["words", "rows_d"], ["w2"]),  # [T*L, D]
        helper.make_node("Reshape", ["patches", "rows_d"], ["p2"]),  # [V*P, D]
        helper.make_node("Transpose", ["p2"], ["p2_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["w2", "p2_t"], ["wp"]),  # [T*L, V*P]
        helper.make_node("Reshape", ["wp", "keep_split_p"], ["wvp"]),  # [T*L, V, P]
        helper.make_node("Softmax", ["wvp"], ["attn"], axis=-1),
        helper.make_node("Mul", ["attn", "wvp"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "ax2"], ["pooled"], keepdims=0),  # [T*L, V]
        helper.make_node("Transpose", ["pooled"], ["pooled_t"], perm=[1, 0]),  # [V, T*L]
        helper.make_node("Reshape", ["pooled_t", "keep_split_l"], ["vtl"]),  # [V, T, L]
        helper.make_node("ReduceMean", ["vtl"], ["vt"], axes=[2], keepdims=0),
        helper.make_node("Transpose", ["vt"], ["patch_word"], perm=[1, 0]),
    ]


def _scorer_graph(cfg: UCoFiAConfig, rng: np.random.Generator, pairwise: bool = False) -> onnx.GraphProto:
    """Level 1: e^2 * (s_hat G)(v G1)^T (bilinear, like the real scorer); level 2: pooled dot;
    level 3: pooled dot, or with ``pairwise`` the softmax-pooled word x patch tensor."""
    d, f, l, p = cfg.embed_dim, cfg.max_frames, cfg.max_words, cfg.num_pixels
    g = (np.eye(d) + 0.3 * rng.standard_normal((d, d))).astype(np.float32)
    g1 = (np.eye(d) + 0.3 * rng.standard_normal((d, d))).astype(np.float32)
    nodes = [
        helper.make_node("LpNormalization", ["sentence"], ["s_hat"], axis=-1, p=2),
        helper.make_node("MatMul", ["s_hat", "g"], ["sg"]),
        helper.make_node("MatMul", ["video", "g1"], ["vg"]),
        helper.make_node("Transpose", ["vg"], ["vg_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["sg", "vg_t"], ["vs_raw"]),
        helper.make_node("Mul", ["vs_raw", "scale"], ["video_sentence"]),
        helper.make_node("ReduceMax", ["frame_features"], ["fmax"], axes=[1], keepdims=0),
        helper.make_node("LpNormalization", ["fmax"], ["f_hat"], axis=-1, p=2),
        helper.make_node("Transpose", ["f_hat"], ["f_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["s_hat", "f_t"], ["fs_raw"]),
        helper.make_node("Mul", ["fs_raw", "scale"], ["frame_sentence"]),
    ]
    if pairwise:
        nodes += _pairwise_patch_word()
    else:
        nodes += [helper.make_node("ReduceMean", ["words"], ["wmean"], axes=[1], keepdims=0),
                  helper.make_node("ReduceMean", ["patches"], ["pmean"], axes=[1], keepdims=0),
                  helper.make_node("Transpose", ["pmean"], ["p_t"], perm=[1, 0]),
                  helper.make_node("MatMul", ["wmean", "p_t"], ["patch_word"])]
    shapes = [_const("rows_d", np.array([-1, d], dtype=np.int64)),
              _const("keep_split_p", np.array([0, -1, p], dtype=np.int64)),
              _const("keep_split_l", np.array([0, -1, l], dtype=np.int64)),
              _const("ax2", np.array([2], dtype=np.int64))] if pairwise else []
    return helper.make_graph(
        nodes, "scorer",
        [_vinfo("sentence", TensorProto.FLOAT, ["T", d]), _vinfo("words", TensorProto.FLOAT, ["T", l, d]),
         _vinfo("video", TensorProto.FLOAT, ["V", d]), _vinfo("frame_features", TensorProto.FLOAT, ["V", f, d]),
         _vinfo("patches", TensorProto.FLOAT, ["V", p, d])],
        [_vinfo(n, TensorProto.FLOAT, ["T", "V"]) for n in ("video_sentence", "frame_sentence", "patch_word")],
        [_const("g", g), _const("g1", g1), _const("scale", np.array(np.exp(2.0), dtype=np.float32)), *shapes])


def _io(graph: onnx.GraphProto) -> dict:
    def spec(v: onnx.ValueInfoProto) -> dict:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        dtype = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}[v.type.tensor_type.elem_type]
        return {"name": v.name, "dtype": dtype, "shape": dims}
    return {"inputs": [spec(v) for v in graph.input], "outputs": [spec(v) for v in graph.output]}


def build_fake_bundle(out: Path, cfg: UCoFiAConfig | None = None, seed: int = 0,
                      pairwise_patch_word: bool = False) -> Path:
    """Write a contract-conforming bundle of small hand-built graphs into ``out``
    (``pairwise_patch_word``: a scorer whose working memory grows like the real one's)."""
    cfg = cfg or tiny_config()
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    graphs = {"text_encoder": _text_graph(cfg, rng), "video_encoder": _video_graph(cfg, rng),
              "scorer": _scorer_graph(cfg, rng, pairwise_patch_word)}
    digest = hashlib.sha256()
    entries = {}
    for key, graph in graphs.items():
        _save(graph, out / f"{key}.onnx")
        digest.update((out / f"{key}.onnx").read_bytes())
        entries[key] = {"file": f"{key}.onnx", **_io(graph)}
    shutil.copy(vocab_file(), out / "bpe_simple_vocab_16e6.txt.gz")
    manifest = {
        "format": "ucofia.bundle/1", "config": cfg.to_dict(), "fingerprint": digest.hexdigest(),
        "dtype": "float32", "opset": OPSET, "graphs": entries, "preprocessing": {},
        "tokenizer": {"vocab_file": "bpe_simple_vocab_16e6.txt.gz", "max_words": cfg.max_words,
                      "sot_id": 49406, "eot_id": 49407, "model_vocab_size": cfg.clip.vocab_size},
        "versions": {"fake": True}, "verification": {}, "tensorrt": None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def random_rows(cfg: UCoFiAConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Features of ``n`` videos as the video encoder gives them (random normal; every frame valid)."""
    return {"video": rng.standard_normal((n, cfg.embed_dim), dtype=np.float32),
            "frame_features": rng.standard_normal((n, cfg.max_frames, cfg.embed_dim), dtype=np.float32),
            "patches": rng.standard_normal((n, cfg.num_pixels, cfg.embed_dim), dtype=np.float32),
            "video_mask": np.ones((n, cfg.max_frames), np.float32)}


def random_queries(cfg: UCoFiAConfig, n: int, seed: int):
    """Features of ``n`` text queries as the text encoder gives them (random normal)."""
    from runtime.scoring import TextFeatures

    rng = np.random.default_rng(seed)
    return TextFeatures(rng.standard_normal((n, cfg.embed_dim), dtype=np.float32),
                        rng.standard_normal((n, cfg.max_words, cfg.embed_dim), dtype=np.float32))


def random_biases(root: Path, bundle, rows: int, seed: int, scale: float = 0.5) -> Path:
    """Random SK biases (normal, ``scale``) for the ``rows`` videos of the index at ``root``."""
    from runtime.index import IndexWriter
    from ucofia.config import LEVELS

    values = np.random.default_rng(seed).normal(0, scale, (len(LEVELS), rows)).astype(np.float32)
    with IndexWriter(root, bundle) as writer:
        writer.set_biases(values, {"bank": {"path": "synthetic"}})
    return root


def synthetic_index(root: Path, bundle, videos: int, shard: int = 1000, seed: int = 0,
                    unit_video: bool = False) -> Path:
    """An index at ``root`` for ``bundle`` (a loaded Bundle) holding ``videos`` rows of random
    features (ids v0, v1, ...), written in shards of ``shard`` rows; no video is decoded.
    ``unit_video``: video features of length 1, as the model's video encoder makes them."""
    from runtime.index import IndexWriter

    cfg = bundle.config
    rng = np.random.default_rng(seed)
    with IndexWriter(root, bundle) as writer:
        for start in range(0, videos, shard):
            n = min(shard, videos - start)
            rows = random_rows(cfg, n, rng)
            if unit_video:
                rows["video"] /= np.linalg.norm(rows["video"], axis=1, keepdims=True)
            writer.add_batch([f"v{i}" for i in range(start, start + n)], rows)
    return root


def synthetic_windows(root: Path, bundle, windows: dict[str, int], window: float = 10.0, seed: int = 0,
                      shard: int = 16) -> Path:
    """An index of time windows at ``root`` for ``bundle`` (a loaded Bundle): file ``name`` of
    ``windows`` gets that many windows of ``window`` seconds, back to back (stride = window), with
    random features, in shards of ``shard`` rows; entries as ``ucofia-run index --window`` writes
    them (docs/index-format-windows.md). No video is decoded."""
    from runtime.index import IndexWriter
    from runtime.windows import window_id
    from ucofia.data.windows import Span

    cfg = bundle.config
    rng = np.random.default_rng(seed)
    entries = []
    for name, count in windows.items():
        for w in range(count):
            span = Span(int(w * window * 1000), int((w + 1) * window * 1000))
            entries.append({"id": window_id(name, span), "file_id": name, "start": span.start, "end": span.end,
                            "window": window, "stride": window, "duration_s": count * window, "frames": 1})
    with IndexWriter(root, bundle) as writer:
        for start in range(0, len(entries), shard):
            batch = entries[start:start + shard]
            n = len(batch)
            writer.add_batch([e["id"] for e in batch], random_rows(cfg, n, rng), batch)
    return root


def make_clip(path: Path, seconds: float, size: tuple[int, int] = (48, 40), fps: int = 3, seed: int = 0) -> Path:
    """A small H.264 test clip written with PyAV (random coloured frames)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(max(1, int(seconds * fps))):
            image = np.full((size[1], size[0], 3), rng.integers(0, 255, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def copy_clips(clips: Path, folder: Path, numbers, name: str = "clip{}.mp4") -> Path:
    """Copy ``clip{i}.mp4`` of the session's ``clips`` folder (tests/runtime/conftest.py) for each i of
    ``numbers`` into ``folder`` (created), named ``name.format(i)``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in numbers:
        shutil.copyfile(clips / f"clip{i}.mp4", folder / name.format(i))
    return folder


def run_cli(*args: str) -> CliResult:
    """Run ``ucofia-run ARGS`` in this process (click's CliRunner on ``runtime.cli.main``, see
    ``cli_helpers.invoke``): exit code, stdout and stderr (kept apart) as a subprocess would give
    them, without starting Python again. Use :func:`run_cli_process` where a separate process is the
    point: a crash point or kill (``UCOFIA_CRASH_AT``), blocked imports, other environment variables."""
    from runtime.cli import main

    return invoke(main, args, PROG_NAME)


def run_cli_process(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m runtime.cli ARGS`` in a subprocess (optionally with a custom env or cwd): for
    tests where process isolation is the point (crash points kill the process, import blockers,
    environment variables read at startup)."""
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


TORCH_MODULES = ("torch", "torchvision", "open_clip")
_BLOCKER = """
import sys

BLOCKED = {blocked!r}


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: ucofia-run must not import it here")
        return None


sys.meta_path.insert(0, _Blocked())
"""


def import_blocker(folder: Path, blocked: tuple[str, ...] = TORCH_MODULES) -> Path:
    """Write ``folder/sitecustomize.py``: in every Python started with ``folder`` first on
    PYTHONPATH (subprocesses and Ray workers inherit it), importing any of ``blocked`` raises
    ImportError ("... is blocked"). Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_BLOCKER.format(blocked=tuple(blocked)))
    return folder
