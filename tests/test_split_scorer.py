"""The split-int8 scorer (CPU fast path): the int8 splitting maths, its exported graphs, and the
runtime's choice and use of them. Tiny configs; the speed is measured in benchmarks/scoring.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import ucofia
from export import export_bundle
from export.specs import SPLIT_GRAPH_KEYS, SPLIT_SCORER
from runtime import backends, scoring
from runtime.bundle import load_bundle
from runtime.errors import BackendError, BundleError
from ucofia import split_int8
from ucofia.config import tiny_config


# ---- the splitting maths ---------------------------------------------------------------------
def test_split_rows_reconstructs_each_row_to_16_bits():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=gen, dtype=torch.float64) * torch.logspace(-3, 3, 64, dtype=torch.float64)[:, None]
    hi, lo, scale = split_int8.split_rows(x)
    for part in (hi, lo):
        assert torch.equal(part, part.round()) and part.abs().max() <= split_int8.INT8_MAX
    # the largest magnitude of each row maps to +-127 exactly
    assert torch.equal(hi.abs().amax(dim=-1), torch.full((64,), 127.0, dtype=torch.float64))
    back = scale[:, None] * (hi + lo / split_int8.SLICE_BASE)
    bound = 0.5 / split_int8.SLICE_BASE * scale[:, None] * (1 + 1e-9)
    assert ((back - x).abs() <= bound).all()
    # ... which is ~2^-16 of the row's largest magnitude
    assert float(((back - x).abs().amax(dim=-1) / x.abs().amax(dim=-1)).max()) < 2 ** -15


def test_split_rows_zero_rows_and_dtypes():
    x = torch.zeros(3, 8)
    x[1, 2] = -5.0
    hi, lo, scale = split_int8.split_rows(x)
    assert scale.tolist() == pytest.approx([1.0, 5.0 / 127, 1.0], rel=1e-6)
    assert hi[0].abs().sum() == 0 and lo[2].abs().sum() == 0 and hi[1, 2] == -127
    left_hi, left_hilo, _ = split_int8.split_left(x)
    right_hi, right_lohi, _ = split_int8.split_right(x)
    assert left_hi.dtype == torch.uint8 and left_hilo.shape == (3, 16) and int(left_hi[0, 0]) == 128
    assert right_hi.dtype == torch.int8 and right_lohi.shape == (3, 16)
    assert torch.equal(right_lohi[:, 8:], right_hi) and torch.equal(left_hilo[:, :8], left_hi)


def test_split_product_is_close_to_float64_and_needs_its_cross_terms():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(200, 64, generator=gen) * 0.1
    b = torch.randn(40, 64, generator=gen)
    exact = a.double() @ b.double().t()
    left, right = split_int8.split_left(a), split_int8.split_right(b)
    got = split_int8.split_product(*left, *right).double()
    scale = float(exact.abs().max())
    assert float((got - exact).abs().max()) < 1e-4 * scale
    # the hi . hi term alone is ~100x worse: the cross product is what carries the precision
    high_only = (left[0].double() - 128) @ right[0].double().t() * left[2].double()[:, None] * right[2].double()
    assert float((high_only - exact).abs().max()) > 1e-3 * scale


# ---- export ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    model = ucofia.build_model(tiny_config(), seed=5).eval()
    manifest = export_bundle(model, root / "bundle")
    return model, root / "bundle", manifest


def test_export_writes_and_verifies_the_split_graphs(exported):
    model, bundle, manifest = exported
    for key in SPLIT_GRAPH_KEYS:
        assert (bundle / manifest["graphs"][key]["file"]).is_file()
    section = manifest["split_scorer"]
    assert section["graphs"] == list(SPLIT_GRAPH_KEYS) and section["providers"] == ["CPUExecutionProvider"]
    assert 0 < section["max_abs_vs_float32_scorer"] < 2e-4 * 10
    checks = [c for c in manifest["verification"]["checks"] if c["graph"] == SPLIT_SCORER]
    assert checks and all(c["passed"] for c in checks)
    assert {c["output"] for c in checks} >= {"video_sentence", "frame_sentence", "patch_word",
                                            "patch_word vs float32 scorer"}
    # the float graphs' TensorRT check does not see the onnxruntime-only graphs
    assert not any(SPLIT_SCORER in json.dumps(issue) for issue in manifest["trt_check"].get("issues", []))


def test_export_without_split_scorer_and_fp16_bundles_have_none(tmp_path):
    model = ucofia.build_model(tiny_config(), seed=6)
    manifest = export_bundle(model, tmp_path / "plain", split_scorer=False, verify=False)
    assert manifest["split_scorer"] is None and not set(SPLIT_GRAPH_KEYS) & set(manifest["graphs"])
    assert not any(p.name.startswith("scorer_split") for p in (tmp_path / "plain").iterdir())
    manifest16 = export_bundle(model, tmp_path / "half", fp16=True, verify=False)
    assert manifest16["split_scorer"] is None and "scorer_split" not in manifest16["graphs"]
    assert load_bundle(tmp_path / "half").has_split_scorer is False


# ---- runtime ---------------------------------------------------------------------------------
def _features(cfg, n_text, n_video, seed=0):
    rng = np.random.default_rng(seed)
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    text = scoring.TextFeatures(rng.standard_normal((n_text, d), dtype=np.float32),
                                rng.standard_normal((n_text, l, d), dtype=np.float32))
    videos = scoring.ArrayVideos({"video": rng.standard_normal((n_video, d), dtype=np.float32),
                                  "frame_features": rng.standard_normal((n_video, f, d), dtype=np.float32),
                                  "patches": 0.3 * rng.standard_normal((n_video, p, d), dtype=np.float32)})
    return text, videos


def test_runtime_split_scores_match_float_scores(exported, monkeypatch):
    _, bundle_dir, _ = exported
    bundle = load_bundle(bundle_dir)
    assert bundle.has_split_scorer
    text, videos = _features(bundle.config, 21, 45)
    monkeypatch.setattr(scoring, "SPLIT_PREP_ROWS", 8)  # several preparation calls per block
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: (4, 16))
    plain = scoring.score_matrix(scoring.open_scorer(bundle, "cpu", mode="float"), text, videos)
    fast_scorer = scoring.open_scorer(bundle, "cpu", mode="split-int8")
    assert fast_scorer.mode == "split-int8"
    fast = scoring.score_matrix(fast_scorer, text, videos)
    for level in scoring.LEVELS:
        scale = max(1.0, float(np.abs(plain[level]).max()))
        assert np.abs(fast[level] - plain[level]).max() <= 2e-4 * scale, level
    assert np.abs(fast["patch_word"] - plain["patch_word"]).max() > 0  # really the other graph
    # one graph call on the whole gallery gives the tiled result
    whole = fast_scorer.score(text, videos.features(0, len(videos)))
    np.testing.assert_allclose(whole["patch_word"], fast["patch_word"], rtol=1e-5, atol=1e-6)


def test_auto_mode_follows_the_cpu_and_the_bundle(exported, tmp_path, monkeypatch):
    _, bundle_dir, _ = exported
    bundle = load_bundle(bundle_dir)
    monkeypatch.setattr(scoring, "cpu_has_int8_matrix_units", lambda: True)
    assert scoring.resolve_scorer_mode("auto", bundle, "cpu") == "split-int8"
    assert scoring.resolve_scorer_mode("auto", bundle, "cuda") == "float"
    assert scoring.resolve_scorer_mode("float", bundle, "cpu") == "float"
    monkeypatch.setattr(scoring, "cpu_has_int8_matrix_units", lambda: False)
    assert scoring.resolve_scorer_mode("auto", bundle, "cpu") == "float"
    assert scoring.resolve_scorer_mode("split-int8", bundle, "cpu") == "split-int8"
    with pytest.raises(BackendError, match="CPU provider only"):
        scoring.resolve_scorer_mode("split-int8", bundle, "cuda")
    with pytest.raises(BackendError, match="unknown scorer"):
        scoring.resolve_scorer_mode("int4", bundle, "cpu")
    # a bundle without the graphs: auto falls back, an explicit request says how to get them
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for key in SPLIT_GRAPH_KEYS:
        (old / manifest["graphs"].pop(key)["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    old_bundle = load_bundle(old)
    monkeypatch.setattr(scoring, "cpu_has_int8_matrix_units", lambda: True)
    assert scoring.resolve_scorer_mode("auto", old_bundle, "cpu") == "float"
    with pytest.raises(BackendError, match="re-export"):
        scoring.open_scorer(old_bundle, "cpu", mode="split-int8")


def test_bundle_naming_a_missing_split_graph_is_refused(exported, tmp_path):
    _, bundle_dir, manifest = exported
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / manifest["graphs"][SPLIT_SCORER]["file"]).unlink()
    with pytest.raises(BundleError, match="scorer_split"):
        load_bundle(broken)


def test_cpu_flag_detection_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_tile amx_int8\n")
    assert backends.cpu_has_int8_matrix_units(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert not backends.cpu_has_int8_matrix_units(str(info))
    assert backends.cpu_flags(str(tmp_path / "missing")) == set()
