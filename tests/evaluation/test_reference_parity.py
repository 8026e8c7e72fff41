"""Parity with the public UCoFiA reference (commit 6098be2) on tiny random checkpoints.

The fixtures under tests/fixtures/reference/<name>/ were produced by running the reference itself
(see make_reference_fixtures.py and README.md there): a reference ``pytorch_model.bin`` (its
state_dict, float32), the inputs, and what the reference computed from them with a hard
(sigma = 0) top-k. Here the same checkpoint is loaded with ``ucofia.load_reference_checkpoint``
and every stage is compared.
"""
from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from data_paths import REPO_ROOT, TEST_FIXTURES

torch = pytest.importorskip("torch")

from evaluation import retrieval_metrics  # noqa: E402

FIXTURES = TEST_FIXTURES / "reference"
REPO = REPO_ROOT
NAMES = ("eval_l2", "train_l2", "eval_l12_shift")
LEVELS = ("video_sentence", "frame_sentence", "patch_word")
LOSS_BATCH = 4

FEATURE_ATOL = 1e-4
SIM_ATOL = 2e-4
LOSS_ATOL = 1e-5

MODEL_MISSING = not (REPO / "ucofia" / "checkpoints.py").is_file()
needs_model = pytest.mark.skipif(MODEL_MISSING, reason="ucofia/checkpoints.py (the model) has not landed yet")


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _load_fixture(name: str):
    folder = FIXTURES / name
    meta = json.loads((folder / "meta.json").read_text())
    inputs = dict(np.load(folder / "inputs.npz"))
    expected = dict(np.load(folder / "expected.npz"))
    return folder, meta, inputs, expected


@cache
def run_ours(name: str) -> dict:
    """Load the reference checkpoint with ucofia and compute everything the fixture holds."""
    import ucofia

    folder, _meta, inp, _ = _load_fixture(name)
    model = ucofia.load_reference_checkpoint(folder / "pytorch_model.bin")
    model.eval()
    out: dict = {"model": model}
    with torch.no_grad():
        text = model.encode_text(torch.from_numpy(inp["input_ids"]), torch.from_numpy(inp["attention_mask"]))
        bank_text = model.encode_text(torch.from_numpy(inp["bank_input_ids"]),
                                      torch.from_numpy(inp["bank_attention_mask"]))
        video = model.encode_video(torch.from_numpy(inp["video"]), torch.from_numpy(inp["video_mask"]))
        sims = model.level_similarities(text, video)
        bank_sims = model.level_similarities(bank_text, video)
        video_bias = {k: ucofia.sinkhorn_video_bias(bank_sims[k], n_iters=4) for k in LEVELS}
        text_bias = {k: ucofia.sinkhorn_text_bias(sims[k], n_iters=4) for k in LEVELS}
        out.update(
            text=text, bank_text=bank_text, video=video, sims=sims, bank_sims=bank_sims,
            video_bias=video_bias, text_bias=text_bias,
            fused=ucofia.fuse(sims, video_bias), fused_nobias=ucofia.fuse(sims),
            loss=model.contrastive_loss({k: v[:LOSS_BATCH] for k, v in sims.items()}),
        )
    return out


# ---- fixture integrity (no model needed) ------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_self_consistent(name):
    _folder, meta, inp, exp = _load_fixture(name)
    assert meta["reference"]["commit"] == "6098be2"
    cfg = meta["config"]
    t, v = inp["input_ids"].shape[0], inp["video"].shape[0]
    f, k, d = cfg["max_frames"], cfg["top_k"], cfg["embed_dim"]
    # EOT is the row maximum, padding is zero, padded frames are all-zero
    ids, mask = inp["input_ids"], inp["attention_mask"]
    assert (ids.argmax(1) == mask.sum(1) - 1).all() and (ids[mask == 0] == 0).all()
    assert (inp["video"][inp["video_mask"] == 0] == 0).all() and (inp["video_mask"] == 0).any()
    # the selected tokens start with each frame's CLS feature
    patches = exp["patches"].reshape(v, f, k + 1, d)
    np.testing.assert_array_equal(patches[:, :, 0], exp["frames"])
    idx = exp["patch_indices"]
    assert idx.shape == (v, f, k) and idx.dtype == np.int64 and (np.diff(idx, axis=-1) > 0).all()
    fused = sum(exp[f"sim_{lv}"] + exp[f"video_bias_{lv}"][None] for lv in LEVELS) / 3
    np.testing.assert_allclose(fused, exp["fused"], atol=1e-5)
    assert exp["sim_video_sentence"].shape == (t, v)


def test_fixture_checkpoints_hold_reference_keys():
    state = torch.load(FIXTURES / "eval_l12_shift" / "pytorch_model.bin", map_location="cpu",
                       weights_only=True)
    for block in (10, 11):
        assert f"clip.visual.transformer.resblocks.{block}.attn.net.in_proj_weight" in state
    assert "clip.visual.transformer.resblocks.9.attn.in_proj_weight" in state
    assert all(v.dtype == torch.float32 for v in state.values())


# ---- parity ---------------------------------------------------------------------------------
@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_text_features(name):
    exp = _load_fixture(name)[3]
    ours = run_ours(name)
    np.testing.assert_allclose(_np(ours["text"].sentence), exp["sentence"], atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(_np(ours["text"].words), exp["words"], atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(_np(ours["bank_text"].sentence), exp["bank_sentence"], atol=FEATURE_ATOL, rtol=0)


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_patch_indices(name):
    exp = _load_fixture(name)[3]
    idx = run_ours(name)["video"].patch_indices
    assert idx is not None, "VideoFeatures.patch_indices is not filled"
    np.testing.assert_array_equal(_np(idx).astype(np.int64), exp["patch_indices"])


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_patch_scores(name):
    """The scorer's tanh scores (input of the top-k), read with a hook on the reference-named
    ``visual_token_selector.score_predictor`` module: the selection alone hides small scorer errors."""
    _, _, inp, exp = _load_fixture(name)
    model = run_ours(name)["model"]
    scorer = getattr(getattr(model, "visual_token_selector", None), "score_predictor", None)
    if scorer is None:
        pytest.skip("the model has no visual_token_selector.score_predictor module to hook")
    seen = []
    handle = scorer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            model.encode_video(torch.from_numpy(inp["video"]), torch.from_numpy(inp["video_mask"]))
    finally:
        handle.remove()
    assert len(seen) == 1
    scores = _np(seen[0]).reshape(exp["patch_scores"].shape[0], exp["patch_scores"].shape[1], -1)
    np.testing.assert_allclose(scores[..., 1:], exp["patch_scores"], atol=FEATURE_ATOL, rtol=0)


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_video_features(name):
    exp = _load_fixture(name)[3]
    video = run_ours(name)["video"]
    np.testing.assert_allclose(_np(video.frames), exp["frames"], atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(_np(video.patches), exp["patches"], atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(_np(video.video), exp["video"], atol=FEATURE_ATOL, rtol=0)


@needs_model
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", NAMES)
def test_level_similarities(name, level):
    exp = _load_fixture(name)[3]
    ours = run_ours(name)
    np.testing.assert_allclose(_np(ours["sims"][level]), exp[f"sim_{level}"], atol=SIM_ATOL, rtol=0)
    np.testing.assert_allclose(_np(ours["bank_sims"][level]), exp[f"bank_sim_{level}"], atol=SIM_ATOL, rtol=0)


@needs_model
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", NAMES)
def test_sinkhorn_biases(name, level):
    exp = _load_fixture(name)[3]
    ours = run_ours(name)
    np.testing.assert_allclose(_np(ours["video_bias"][level]), exp[f"video_bias_{level}"], atol=SIM_ATOL, rtol=0)
    # text bias as eval_v2t computes it (second SK output on the transposed [T,B] bank)
    np.testing.assert_allclose(_np(ours["text_bias"][level]), exp[f"text_bias_{level}"], atol=SIM_ATOL, rtol=0)


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_fused(name):
    exp = _load_fixture(name)[3]
    ours = run_ours(name)
    np.testing.assert_allclose(_np(ours["fused_nobias"]), exp["fused_nobias"], atol=SIM_ATOL, rtol=0)
    np.testing.assert_allclose(_np(ours["fused"]), exp["fused"], atol=SIM_ATOL, rtol=0)


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_loss(name):
    exp = _load_fixture(name)[3]
    assert float(_np(run_ours(name)["loss"])) == pytest.approx(float(exp["loss"]), abs=LOSS_ATOL)


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_metrics_of_fused_square_block(name):
    exp = _load_fixture(name)[3]
    square = _np(run_ours(name)["fused"])[:LOSS_BATCH]
    keys = ("R1", "R5", "R10", "MdR", "MnR")
    for direction in ("t2v", "v2t"):
        got = retrieval_metrics(square, direction=direction)
        assert [got[k] for k in keys] == exp[f"metrics_{direction}_square"].tolist(), direction


@needs_model
@pytest.mark.parametrize("name", NAMES)
def test_model_config_follows_checkpoint(name):
    meta = _load_fixture(name)[1]
    cfg = run_ours(name)["model"].config
    assert cfg.scorer_variant == meta["variant"]
    assert cfg.clip.vision_layers == meta["config"]["vision_layers"]
    assert cfg.clip.text_layers == meta["config"]["text_layers"]
    assert cfg.temporal_layers == meta["config"]["temporal_layers"]
    assert cfg.patch_shift_active == bool(meta["config"]["patch_shift_blocks"])
