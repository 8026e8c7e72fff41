"""Behaviour of the UCoFiA model pieces on tiny random models."""
from __future__ import annotations

import json

import pytest
import torch

import ucofia
from ucofia.checkpoints import CheckpointError, load_checkpoint, save_checkpoint, weights_fingerprint
from ucofia.config import ConfigError, UCoFiAConfig, tiny_config
from ucofia.patch_shift import patch_shift, shift_token_sets
from ucofia.selector import hard_topk_indices, perturbed_topk_indicators


def _inputs(cfg: UCoFiAConfig, texts: int = 3, videos: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 400, (texts, cfg.max_words), generator=g)
    for row, length in enumerate(range(5, 5 + texts)):
        ids[row, 0] = 49406
        ids[row, length] = 49407
        ids[row, length + 1:] = 0
    frames = torch.randn(videos, cfg.max_frames, 3, cfg.clip.image_size, cfg.clip.image_size, generator=g)
    mask = torch.ones(videos, cfg.max_frames)
    mask[-1, cfg.max_frames // 2:] = 0
    frames[-1, cfg.max_frames // 2:] = 0
    return ids, (ids > 0).long(), frames, mask


@pytest.mark.parametrize("tokens,left,right", [
    (50, list(range(1, 50, 7)), list(range(4, 50, 7))),
    (197, list(range(1, 197, 28)), list(range(4, 197, 28))),
    (17, list(range(1, 17, 2)), list(range(4, 17, 2))),
])
def test_patch_shift_sets_match_reference_table(tokens, left, right):
    assert shift_token_sets(tokens, 7) == (left, right)


def test_patch_shift_moves_only_the_shifted_positions():
    frames, tokens = 4, 17
    x = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1).expand(frames, tokens, 2).clone()
    out = patch_shift(x, frames, 7).reshape(frames, tokens, 2)
    left, right = shift_token_sets(tokens, 7)
    for t in range(frames):
        for p in range(tokens):
            expected = t
            if p in left and t >= 1:
                expected = t - 1
            if p in right and t <= frames - 2:
                expected = t + 1
            assert out[t, p, 0].item() == expected


def test_hard_topk_sorted_by_position():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.7]])
    assert hard_topk_indices(scores, 3).tolist() == [[1, 3, 4]]


def test_perturbed_topk_is_hard_topk_for_tiny_sigma_and_has_gradient():
    torch.manual_seed(0)
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.7]], requires_grad=True)
    ind = perturbed_topk_indicators(scores, 2, samples=50, sigma=1e-6)
    assert ind.argmax(-1).tolist() == [[1, 3]]
    ind.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("variant", ["eval", "train"])
def test_encoders_and_levels_shapes(variant):
    cfg = tiny_config(scorer_variant=variant)
    model = ucofia.build_model(cfg, seed=0)
    ids, attn, frames, mask = _inputs(cfg)
    with torch.no_grad():
        text = model.encode_text(ids, attn)
        video = model.encode_video(frames, mask)
        sims = model.level_similarities(text, video)
    d = cfg.embed_dim
    assert text.sentence.shape == (3, d) and text.words.shape == (3, cfg.max_words, d)
    assert video.video.shape == (2, d) and video.frames.shape == (2, cfg.max_frames, d)
    assert video.patches.shape == (2, cfg.num_pixels, d)
    assert video.patch_indices.shape == (2, cfg.max_frames, cfg.top_k)
    assert torch.allclose(video.video.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert set(sims) == {"video_sentence", "frame_sentence", "patch_word"}
    for value in sims.values():
        assert value.shape == (3, 2) and torch.isfinite(value).all()


def test_scoring_is_batch_independent():
    """Each (text, video) score depends only on that pair, so tiles can be scored separately."""
    cfg = tiny_config()
    model = ucofia.build_model(cfg, seed=1)
    ids, attn, frames, mask = _inputs(cfg, texts=4, videos=3)
    with torch.no_grad():
        text = model.encode_text(ids, attn)
        video = model.encode_video(frames, mask)
        full = model.level_similarities(text, video)
        part_v = model.encode_video(frames[1:2], mask[1:2])
        part_t = model.encode_text(ids[2:4], attn[2:4])
        part = model.level_similarities(part_t, part_v)
    for level in full:
        assert torch.allclose(full[level][2:4, 1:2], part[level], atol=1e-5)


def test_video_features_ignore_padded_frames_in_level1():
    cfg = tiny_config()
    model = ucofia.build_model(cfg, seed=2)
    _, _, frames, mask = _inputs(cfg)
    with torch.no_grad():
        a = model.encode_video(frames, mask).video
        # The key mask hides padded frames from real ones and the masked mean skips them.
        frames2 = frames.clone()
        frames2[-1, -1] = 5.0
        b = model.encode_video(frames2, mask).video
    assert torch.allclose(a, b, atol=1e-5)


def test_sinkhorn_video_bias_matches_formula():
    torch.manual_seed(0)
    bank = torch.randn(7, 5) * 3
    m = bank.max()
    s = torch.exp(bank - m)
    b = 1 / s.sum(0)
    for _ in range(4):
        a = 1 / (s @ b)
        b = 1 / (a @ s)
    expected = torch.log_softmax(torch.log(b) - m, dim=0)
    assert torch.allclose(ucofia.sinkhorn_video_bias(bank), expected, atol=1e-6)
    assert torch.allclose(ucofia.sinkhorn_text_bias(bank.t()), expected, atol=1e-6)


def test_sinkhorn_rejects_nan():
    bank = torch.zeros(3, 3)
    bank[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ucofia.sinkhorn_video_bias(bank)


def test_fuse_mean_and_bias():
    sims = {k: torch.full((2, 3), float(i)) for i, k in enumerate(["video_sentence", "frame_sentence", "patch_word"])}
    assert torch.allclose(ucofia.fuse(sims), torch.ones(2, 3))
    biases = {k: torch.tensor([0.0, 3.0, 6.0]) for k in sims}
    assert torch.allclose(ucofia.fuse(sims, biases)[0], torch.tensor([1.0, 4.0, 7.0]))


def test_loss_prefers_matching_pairs():
    eye = torch.eye(4) * 10
    good = ucofia.UCoFiA.contrastive_loss(dict.fromkeys(["video_sentence", "frame_sentence", "patch_word"], eye))
    bad = ucofia.UCoFiA.contrastive_loss(dict.fromkeys(["video_sentence", "frame_sentence", "patch_word"], -eye))
    assert good < 0.01 < bad


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_config(scorer_variant="train")
    model = ucofia.build_model(cfg, seed=3)
    save_checkpoint(tmp_path / "ck", model, meta={"step": 7})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta["step"] == 7
    assert loaded.config == cfg
    assert weights_fingerprint(loaded) == weights_fingerprint(model) == meta["fingerprint"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")
    model = ucofia.build_model(tiny_config(), seed=0)
    save_checkpoint(tmp_path / "ck", model)
    # another architecture: same weights, config claims the train variant
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["scorer_variant"] = "train"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        load_checkpoint(tmp_path / "ck")
    # truncated weights
    save_checkpoint(tmp_path / "ck2", model)
    weights = tmp_path / "ck2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "ck2")
    # a non-checkpoint file through the reference loader
    junk = tmp_path / "pytorch_model.bin"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        ucofia.load_reference_checkpoint(junk)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        ucofia.load_reference_checkpoint(empty)


def test_reference_loader_names_missing_keys(tmp_path):
    state = {"clip.visual.conv1.weight": torch.zeros(64, 3, 8, 8)}
    torch.save(state, tmp_path / "partial.bin")
    with pytest.raises(CheckpointError, match="missing CLIP weight"):
        ucofia.load_reference_checkpoint(tmp_path / "partial.bin")


def test_config_validation_and_round_trip(tmp_path):
    cfg = tiny_config()
    cfg.to_json(tmp_path / "c.json")
    assert UCoFiAConfig.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="top_k"):
        tiny_config(top_k=16)
    with pytest.raises(ConfigError, match="unknown config fields"):
        UCoFiAConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_patch_shift_active_only_for_deep_vits():
    assert not tiny_config().patch_shift_active
    assert tiny_config(clip={"vision_layers": 12}).patch_shift_active


def test_importing_ucofia_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ucofia, ucofia.config, ucofia.io_utils; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hard_topk_ties_go_to_lower_positions_in_torch_and_onnx(tmp_path):
    import onnxruntime as ort

    class TopK(torch.nn.Module):
        def forward(self, scores):
            return hard_topk_indices(scores, 3)

    scores = torch.ones(3, 16)
    scores[0, 5] = 0.5
    scores[1, 9] = 2.0
    scores[2, :4] = 0.0
    eager = TopK()(scores)
    assert eager.tolist() == [[0, 1, 2], [0, 1, 9], [4, 5, 6]]
    path = tmp_path / "topk.onnx"
    torch.onnx.export(TopK(), (scores,), str(path), input_names=["s"], output_names=["i"],
                      dynamic_axes={"s": {0: "n"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"s": scores.numpy()})[0].tolist() == eager.tolist()


def test_unreadable_torch_files_get_a_cause_and_a_fix(tmp_path):
    import argparse

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError) as err:
        ucofia.load_reference_checkpoint(junk)
    message = str(err.value)
    assert str(junk) in message and "not a torch.save file" in message and "pytorch_model.bin" in message
    assert "weights_only" not in message  # torch's advice to unpickle unsafely is not passed on
    pickled = tmp_path / "with_object.bin"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1.0)}, pickled)
    with pytest.raises(CheckpointError, match="refusing to unpickle .*argparse.Namespace.*state_dict"):
        ucofia.load_reference_checkpoint(pickled)


def test_damaged_training_state_names_the_file_and_the_way_out(tmp_path):
    model = ucofia.build_model(tiny_config(), seed=0)
    save_checkpoint(tmp_path / "last", model, training_state={"step": torch.tensor(3)})
    state = tmp_path / "last" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:40])
    assert load_checkpoint(tmp_path / "last")[0] is not None  # the weights alone still load
    with pytest.raises(CheckpointError, match=r"training_state\.pt.*step-N.*init_checkpoint"):
        load_checkpoint(tmp_path / "last", with_training_state=True)
