"""``ucofia export`` / ``export.export_bundle``: bundles whose ONNX graphs match PyTorch.

Tiny configs throughout; each export (with its built-in verification) takes a few seconds.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from data_paths import REPO_ROOT
from export_helpers import DEVICE, FakeTRT

import ucofia
from export import export_bundle
from export.bundle import TrtCompatibilityError
from export.graphs import ScorerGraph
from export.manifest import VOCAB_FILE, vocab_source
from export.onnx_export import ExportError, export_graph
from export.samples import sample_token_ids, sample_videos
from export.trt_check import Issue, TrtCheckReport
from export.verify import FP16_TOLERANCES, FP32_TOLERANCES, Tolerances, VerificationError, ort_session
from runtime.bundle.contract import SCORER, TEXT_ENCODER, VIDEO_ENCODER, graph_specs
from ucofia.checkpoints import weights_fingerprint
from ucofia.cli import main as cli
from ucofia.config import UCoFiAConfig, tiny_config

REPO = REPO_ROOT
# smallest first: one reference import is enough here (parity itself is tested elsewhere)
REFERENCE_FIXTURES = sorted((REPO / "tests" / "fixtures" / "reference").glob("*/pytorch_model.bin"),
                            key=lambda p: p.stat().st_size)


def _leftovers(parent: Path, name: str) -> list[Path]:
    """Temporary siblings atomic_directory would leave behind on a bug."""
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def tiny(tiny_export):
    """A tiny eval-variant model exported through the CLI from our checkpoint format (the session's
    ``tiny_export``, tests/conftest.py)."""
    return tiny_export.model, tiny_export.bundle, tiny_export.manifest, tiny_export.output


def _max_err(got: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.abs(got.astype(np.float64) - ref.double().numpy()).max())


def _check_bundle_against_torch(model, bundle: Path, manifest: dict, texts: int, valid: list[int],
                                tol: Tolerances) -> None:
    """Run the bundle's graphs (names/dtypes from the manifest) at new sizes; compare with PyTorch."""
    gen = torch.Generator().manual_seed(99)
    ids = sample_token_ids(model, texts, gen)
    videos = sample_videos(model, valid, gen, min_margin=FP32_TOLERANCES.tie_margin)
    dtype = manifest["dtype"]
    graphs = manifest["graphs"]

    def run(key, arrays):
        entry = graphs[key]
        sess = ort_session(bundle / entry["file"], dtype)
        assert len(entry["inputs"]) == len(arrays)
        feeds = {t["name"]: a.numpy().astype(t["dtype"]) for t, a in zip(entry["inputs"], arrays)}
        return [np.asarray(o, np.float32) for o in sess.run([t["name"] for t in entry["outputs"]], feeds)]

    with torch.no_grad():
        text = model.encode_text(ids)
        video = model.encode_video(videos.frames, videos.video_mask)
        sims = model.level_similarities(text, video)
    sentence, words = run(TEXT_ENCODER, [ids])
    vid, frames, patches = run(VIDEO_ENCODER, [videos.frames, videos.video_mask])
    assert sentence.shape == (texts, model.config.embed_dim) and words.shape == (texts, model.config.max_words,
                                                                                  model.config.embed_dim)
    assert patches.shape == (len(valid), model.config.num_pixels, model.config.embed_dim)
    for got, ref in ((sentence, text.sentence), (words, text.words), (vid, video.video), (frames, video.frames),
                     (patches, video.patches)):
        assert _max_err(got, ref) <= tol.features * max(1.0, float(ref.abs().max()))
    out = run(SCORER, [torch.from_numpy(x) for x in (sentence, words, vid, frames, patches)])
    assert len(out) == 3
    for got, name in zip(out, ("video_sentence", "frame_sentence", "patch_word")):
        assert got.shape == (texts, len(valid))
        ref = sims[name]
        assert _max_err(got, ref) <= tol.similarities * max(1.0, float(ref.abs().max())), name


# ---- the CLI bundle -------------------------------------------------------------------------
@pytest.mark.slow
def test_manifest_follows_the_contract(tiny):
    model, bundle, manifest, output = tiny
    cfg = model.config
    assert manifest["format"] == "ucofia.bundle/1"
    assert UCoFiAConfig.from_dict(manifest["config"]) == cfg
    assert manifest["fingerprint"] == weights_fingerprint(model)
    assert manifest["dtype"] == "float32" and manifest["opset"] == 17 and manifest["tensorrt"] is None
    d, l, f, p, s = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels, cfg.clip.image_size
    assert manifest["graphs"] == {
        "text_encoder": {"file": "text_encoder.onnx",
                         "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["T", l]}],
                         "outputs": [{"name": "sentence", "dtype": "float32", "shape": ["T", d]},
                                     {"name": "words", "dtype": "float32", "shape": ["T", l, d]}]},
        "video_encoder": {"file": "video_encoder.onnx",
                          "inputs": [{"name": "frames", "dtype": "float32", "shape": ["V", f, 3, s, s]},
                                     {"name": "video_mask", "dtype": "float32", "shape": ["V", f]}],
                          "outputs": [{"name": "video", "dtype": "float32", "shape": ["V", d]},
                                      {"name": "frame_features", "dtype": "float32", "shape": ["V", f, d]},
                                      {"name": "patches", "dtype": "float32", "shape": ["V", p, d]}]},
        "scorer": {"file": "scorer.onnx",
                   "inputs": [{"name": "sentence", "dtype": "float32", "shape": ["T", d]},
                              {"name": "words", "dtype": "float32", "shape": ["T", l, d]},
                              {"name": "video", "dtype": "float32", "shape": ["V", d]},
                              {"name": "frame_features", "dtype": "float32", "shape": ["V", f, d]},
                              {"name": "patches", "dtype": "float32", "shape": ["V", p, d]}],
                   "outputs": [{"name": n, "dtype": "float32", "shape": ["T", "V"]}
                               for n in ("video_sentence", "frame_sentence", "patch_word")]},
    }
    pre = manifest["preprocessing"]
    assert pre["image_size"] == s and pre["mean"] == list(cfg.image_mean) and pre["std"] == list(cfg.image_std)
    assert (pre["frames"], pre["feature_framerate"], pre["slice_framepos"]) == (f, cfg.feature_framerate,
                                                                              cfg.slice_framepos)
    tok = manifest["tokenizer"]
    assert tok["vocab_file"] == VOCAB_FILE and tok["max_words"] == l
    assert (tok["sot_id"], tok["eot_id"]) == (49406, 49407)
    assert (bundle / VOCAB_FILE).read_bytes() == vocab_source().read_bytes()
    assert {"torch", "open_clip", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["trt_check"]["ok"] and manifest["trt_check"]["issues"] == []
    assert manifest["warnings"] == []
    ver = manifest["verification"]
    assert ver["passed"] and ver["dtype"] == "float32"
    assert all(c["max_abs"] <= 1e-4 for c in ver["checks"])
    # per-graph checks gate; the end-to-end chain is reported only
    assert {c["graph"] for c in ver["checks"] if not c["gated"]} == {"end_to_end"}
    assert all(s["mismatches"] == 0 for s in ver["patch_selection"])
    # the verification table is printed
    assert "ONNX vs PyTorch" in output and "patch_word" in output and "wrote" in output


@pytest.mark.slow
def test_graph_files_have_named_dynamic_axes(tiny):
    _, bundle, manifest, _ = tiny
    for entry in manifest["graphs"].values():
        proto = onnx.load(str(bundle / entry["file"]))
        declared = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                    for v in list(proto.graph.input) + list(proto.graph.output)}
        for tensor in entry["inputs"] + entry["outputs"]:
            assert declared[tensor["name"]] == tensor["shape"]


@pytest.mark.slow
def test_bundle_matches_torch_at_new_sizes(tiny):
    model, bundle, manifest, _ = tiny
    # export traced T=3, V=2 and verification used T=1/5, V=1/3: use T=2, V=4 (two padded videos)
    f = model.config.max_frames
    _check_bundle_against_torch(model, bundle, manifest, 2, [f, 3, f, 1], FP32_TOLERANCES)
    _check_bundle_against_torch(model, bundle, manifest, 7, [f], FP32_TOLERANCES)


@pytest.mark.slow
def test_runtime_loader_accepts_the_bundle(tiny):
    try:
        from runtime.bundle import load_bundle
    except ImportError as exc:  # the runtime is another engineer's package
        pytest.skip(f"runtime.bundle not importable: {exc}")
    _, bundle_dir, manifest, _ = tiny
    loaded = load_bundle(bundle_dir)
    assert loaded.fingerprint == manifest["fingerprint"] and loaded.dtype == "float32"


@pytest.mark.slow
def test_existing_output_needs_force(tiny, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "missing"), "-o", str(out)])
    assert result.exit_code != 0 and "--force" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    model = tiny[0]
    with pytest.raises(FileExistsError, match="force"):
        export_bundle(model, out)


@pytest.mark.parametrize("kind", ["garbage_file", "empty_dir", "missing"])
def test_unknown_checkpoint_format_is_refused(tmp_path, kind):
    ckpt = tmp_path / "ckpt"
    if kind == "garbage_file":
        ckpt.write_bytes(b"this is not a checkpoint")
    elif kind == "empty_dir":
        ckpt.mkdir()
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "bundle")])
    assert result.exit_code != 0
    assert "cannot load" in result.output and str(ckpt) in result.output
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_bad_opset_and_profile_flags(tiny, tmp_path):
    with pytest.raises(ExportError, match="opset 12"):
        export_bundle(tiny[0], tmp_path / "b", opset=12)
    result = CliRunner().invoke(cli, ["export", "x", "-o", str(tmp_path / "b"), "--opt-texts", "99"])
    assert result.exit_code != 0 and "min <= opt <= max" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_trt_without_tensorrt_fails_fast(tiny, tmp_path, monkeypatch):
    from export import tensorrt_build

    def missing():
        raise tensorrt_build.TensorRTError("TensorRT is not installed (test)")

    monkeypatch.setattr(tensorrt_build, "import_tensorrt", missing)
    with pytest.raises(tensorrt_build.TensorRTError, match="not installed"):
        export_bundle(tiny[0], tmp_path / "b", trt=True)
    assert not (tmp_path / "b").exists()


def test_export_package_import_is_light():
    code = "import sys, export, runtime.bundle.contract; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---- failures leave nothing behind ----------------------------------------------------------
@pytest.mark.slow
def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    model = ucofia.build_model(tiny_config(), seed=5)
    out = tmp_path / "bundle"
    with pytest.raises(VerificationError, match="beyond the tolerances") as info:
        export_bundle(model, out, tolerances=Tolerances(features=1e-12, similarities=1e-12, tie_margin=1e-5))
    assert not info.value.report.passed and info.value.report.failures()
    assert not out.exists() and _leftovers(tmp_path, "bundle") == []
    # an existing bundle survives a failed --force export untouched (failing early this time)
    from export import bundle as bundle_module

    def broken_export(*args, **kwargs):
        raise ExportError("simulated exporter failure")

    monkeypatch.setattr(bundle_module, "export_graph", broken_export)
    out.mkdir()
    (out / "manifest.json").write_text("old")
    with pytest.raises(ExportError, match="simulated"):
        export_bundle(model, out, force=True)
    assert (out / "manifest.json").read_text() == "old" and _leftovers(tmp_path, "bundle") == []


# ---- variants -------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_variant_export_and_mode_restored(tmp_path):
    model = ucofia.build_model(tiny_config(scorer_variant="train"), seed=7).train()
    manifest = export_bundle(model, tmp_path / "bundle")
    assert model.training, "export_bundle must restore the caller's train/eval mode"
    model.eval()
    assert manifest["config"]["scorer_variant"] == "train" and manifest["verification"]["passed"]
    f = model.config.max_frames
    _check_bundle_against_torch(model, tmp_path / "bundle", manifest, 4, [f, 2], FP32_TOLERANCES)


@pytest.mark.slow
def test_patch_shift_runs_inside_the_video_graph(tmp_path):
    cfg = tiny_config(clip={"vision_layers": 12})
    assert cfg.patch_shift_active
    model = ucofia.build_model(cfg, seed=11)
    manifest = export_bundle(model, tmp_path / "bundle")
    assert manifest["verification"]["passed"]
    gen = torch.Generator().manual_seed(5)
    f = cfg.max_frames
    videos = sample_videos(model, [f, f // 2], gen, min_margin=FP32_TOLERANCES.tie_margin)
    sess = ort_session(tmp_path / "bundle" / "video_encoder.onnx", "float32")
    frames = sess.run(["frame_features"], {"frames": videos.frames.numpy(), "video_mask": videos.video_mask.numpy()})[0]
    unshifted = copy.deepcopy(model)
    unshifted.config = cfg.replace(patch_shift_blocks=())
    with torch.no_grad():
        with_shift = model.encode_video(videos.frames, videos.video_mask).frames
        without = unshifted.encode_video(videos.frames, videos.video_mask).frames
    assert _max_err(frames, with_shift) < 1e-4
    assert _max_err(frames, without) > 1e-3, "the exported graph ignores the patch shift"


@pytest.mark.slow
def test_fp16_bundle_with_fake_tensorrt(tmp_path, monkeypatch):
    from trt_runtime_fakes import FakeCudaMemory

    from export import tensorrt_build
    from runtime.backends import tensorrt_session

    fake = FakeTRT(version="11.4.0", has_fp16=False)
    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(tensorrt_build, "device_info", lambda: dict(DEVICE))
    monkeypatch.setattr(tensorrt_session, "CudaMemory", FakeCudaMemory)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = ucofia.build_model(tiny_config(), seed=13)
    bundle = tmp_path / "bundle"
    manifest = export_bundle(model, bundle, fp16=True, trt=True)
    assert manifest["dtype"] == "float16"
    # the timing cache outlives the temporary build directory: a re-export finds it
    cache = tensorrt_build.default_timing_cache("11.4.0", DEVICE)
    assert manifest["tensorrt"]["timing_cache"]["path"] == str(cache) and cache.read_bytes() == b"+++"
    assert str(cache).startswith(str(tmp_path / "cache")) and not list(bundle.glob("*.cache"))
    ver = manifest["verification"]
    assert ver["passed"] and ver["tolerances"]["features"] == FP16_TOLERANCES.features
    # the float16 engines ran against onnxruntime with the float16 tolerances
    engines = manifest["tensorrt"]["verification"]
    assert engines["passed"] and engines["tolerances"] == ver["tolerances"]
    assert max(c["max_rel"] for c in ver["checks"] if c["gated"]) < 5e-3  # measured ~1.6e-3
    for key, entry in manifest["graphs"].items():
        dtypes = {t["name"]: t["dtype"] for t in entry["inputs"] + entry["outputs"]}
        assert set(dtypes.values()) == ({"int64", "float16"} if key == TEXT_ENCODER else {"float16"})
        proto = onnx.load(str(bundle / entry["file"]))
        inferred = onnx.shape_inference.infer_shapes(proto)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 list(inferred.graph.value_info) + list(inferred.graph.input)}
        types.update({i.name: i.data_type for i in proto.graph.initializer})
        for node in proto.graph.node:  # float32 islands
            if node.op_type in ("LayerNormalization", "Softmax", "TopK"):
                assert types[node.input[0]] != onnx.TensorProto.FLOAT16, (key, node.name)
        assert entry["file"].replace(".onnx", ".plan") == manifest["tensorrt"]["engines"][key]["file"]
        assert (bundle / manifest["tensorrt"]["engines"][key]["file"]).is_file()
    assert manifest["tensorrt"]["gpu"] == DEVICE["gpu"] and "strongly typed" in manifest["tensorrt"]["precision"]
    assert manifest["versions"]["tensorrt"] == "11.4.0"
    assert manifest["onnxruntime"]["cpu_disabled_optimizers"] == ["NchwcTransformer"]
    f = model.config.max_frames
    _check_bundle_against_torch(model, bundle, manifest, 3, [f, 4], FP16_TOLERANCES)


@pytest.mark.slow
def test_trt_check_errors_abort_a_trt_export(tmp_path, monkeypatch):
    from export import bundle as bundle_module
    from export import tensorrt_build

    monkeypatch.setattr(tensorrt_build, "import_tensorrt", FakeTRT)
    monkeypatch.setattr(tensorrt_build, "device_info", lambda: dict(DEVICE))
    bad = TrtCheckReport([Issue("video_encoder", "/selector/TopK", "TopK", "error", "K must be constant")])
    monkeypatch.setattr(bundle_module, "check_graphs", lambda graphs, trt_version=None: bad)
    model = ucofia.build_model(tiny_config(), seed=1)
    with pytest.raises(TrtCompatibilityError, match="TopK"):
        export_bundle(model, tmp_path / "bundle", trt=True, verify=False)
    assert not (tmp_path / "bundle").exists() and _leftovers(tmp_path, "bundle") == []


@pytest.mark.slow
def test_dynamo_exporter_scorer(tmp_path):
    model = ucofia.build_model(tiny_config(), seed=2)
    spec = graph_specs(model.config)[SCORER]
    gen = torch.Generator().manual_seed(0)
    ids = sample_token_ids(model, 3, gen)
    videos = sample_videos(model, [model.config.max_frames, 5], gen)
    with torch.no_grad():
        text = model.encode_text(ids)
        video = model.encode_video(videos.frames, videos.video_mask)
    args = (text.sentence, text.words, video.video, video.frames, video.patches)
    export_graph(ScorerGraph(model).eval(), args, tmp_path / "scorer.onnx", spec, opset=18, exporter="dynamo")
    sess = ort_session(tmp_path / "scorer.onnx", "float32")
    # other T and V than traced
    feats = (text.sentence[:2], text.words[:2], video.video[:1], video.frames[:1], video.patches[:1])
    assert len(spec.inputs) == len(feats)
    got = sess.run(None, {t.name: x.numpy() for t, x in zip(spec.inputs.values(), feats)})
    with torch.no_grad():
        ref = model.score(*feats)
    assert len(got) == len(spec.output_names) == 3
    for out, name in zip(got, spec.output_names):
        assert out.shape == (2, 1)
        assert _max_err(out, ref[name]) < 2e-4


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_FIXTURES, reason="no reference fixture tests/fixtures/reference/*/pytorch_model.bin")
def test_reference_checkpoint_exports(tmp_path):
    path = REFERENCE_FIXTURES[0]
    model = ucofia.load_model(path)
    assert model.config.clip.vocab_size == 128  # the fixtures' toy vocabulary: refused unless asked for
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 1 and "128 token embeddings" in result.output and not (tmp_path / "bundle").exists()
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "bundle"), "--allow-small-vocab"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["verification"]["passed"] and manifest["source"]["checkpoint"] == str(path)
    assert manifest["tokenizer"]["model_vocab_size"] == 128
    assert any("vocabulary" in w for w in manifest["warnings"]) and "warning" in result.output
    assert manifest["fingerprint"] == weights_fingerprint(model)
    f = model.config.max_frames
    _check_bundle_against_torch(model, tmp_path / "bundle", manifest, 2, [f, 3], FP32_TOLERANCES)
