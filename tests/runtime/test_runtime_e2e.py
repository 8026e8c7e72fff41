"""End to end on a bundle exported from the real tiny model: ucofia-run's stored features, search
scores, biases and two-stage ranking agree with the torch model (ucofia) on the same inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import make_clip, run_cli

torch = pytest.importorskip("torch")

import ucofia  # noqa: E402
from runtime import scoring, search  # noqa: E402
from runtime.backends import open_session  # noqa: E402
from runtime.bundle import load_bundle  # noqa: E402
from runtime.index import GalleryIndex  # noqa: E402
from runtime.text import TextEncoder  # noqa: E402
from ucofia.data.tokenizer import ClipTokenizer  # noqa: E402
from ucofia.data.video import VideoSpec, decode_video  # noqa: E402

N_VIDEOS = 6
BANK = ["a red car drives on the road", "a dog runs in the park", "a woman is cooking", "two men play football",
        "a cat sleeps on a sofa", "a person sings a song"]
QUERIES = ["a red car", "someone cooking food in a kitchen", "football"]
ATOL = 1e-4

pytestmark = pytest.mark.slow  # the session's exported bundle (tiny_export) and the torch model


@pytest.fixture(scope="module")
def model(tiny_export):
    """``build_model(tiny_config(), seed=0)``: the session's ``tiny_export`` (tests/conftest.py)."""
    return tiny_export.model


@pytest.fixture(scope="module")
def bundle_dir(tiny_export):
    return tiny_export.bundle


@pytest.fixture(scope="module")
def built(bundle_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_index")
    videos = root / "videos"
    videos.mkdir()
    for i in range(N_VIDEOS):
        make_clip(videos / f"video{i}.mp4", seconds=2 + 2 * i, size=(64, 48), seed=100 + i)
    bank = root / "bank.txt"
    bank.write_text("\n".join(BANK) + "\n")
    index = root / "index"
    result = run_cli("index", "--bundle", str(bundle_dir), "--videos", str(videos), "--bank", str(bank),
                     "-o", str(index), "-q", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    return root, index


def _torch_text(model, texts):
    ids, mask = ClipTokenizer().tokenize(texts, model.config.max_words)
    with torch.no_grad():
        return model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))


def _torch_videos(model, folder):
    spec = VideoSpec.from_config(model.config)
    decoded = [decode_video(folder / f"video{i}.mp4", spec) for i in range(N_VIDEOS)]
    frames = np.stack([d.to_model_input(spec) for d in decoded])
    mask = np.stack([d.video_mask for d in decoded]).astype(np.float32)
    with torch.no_grad():
        return model.encode_video(torch.from_numpy(frames), torch.from_numpy(mask))


def test_index_features_match_torch(model, built):
    root, index = built
    gallery = GalleryIndex(index)
    assert gallery.ids == [f"video{i}" for i in range(N_VIDEOS)]
    stored = gallery.features(0, len(gallery), roles=("video", "frame_features", "patches", "video_mask"))
    want = _torch_videos(model, root / "videos")
    np.testing.assert_allclose(stored["video"], want.video.numpy(), atol=ATOL)
    np.testing.assert_allclose(stored["frame_features"], want.frames.numpy(), atol=ATOL)
    np.testing.assert_allclose(stored["patches"], want.patches.numpy(), atol=ATOL)
    np.testing.assert_array_equal(stored["video_mask"], want.video_mask.numpy())


def test_search_scores_and_biases_match_torch(model, built, tmp_path):
    root, index = built
    out = tmp_path / "hits.jsonl"
    result = run_cli("search", "--index", str(index), *[a for q in QUERIES for a in ("--query", q)],
                     "--top-k", str(N_VIDEOS), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]

    videos = _torch_videos(model, root / "videos")
    with torch.no_grad():
        bank_sims = model.level_similarities(_torch_text(model, BANK), videos)
        biases = {lv: ucofia.sinkhorn_video_bias(bank_sims[lv], model.config.sk_iterations) for lv in bank_sims}
        sims = model.level_similarities(_torch_text(model, QUERIES), videos)
        fused = ucofia.fuse(sims, biases).numpy()
    stored = GalleryIndex(index).biases()
    for level, bias in biases.items():
        np.testing.assert_allclose(stored[level], bias.numpy(), rtol=1e-4, atol=1e-4)
    for q, row in enumerate(rows):
        got = {h["video_id"]: h for h in row["results"]}
        for v in range(N_VIDEOS):
            hit = got[f"video{v}"]
            assert hit["score"] == pytest.approx(float(fused[q, v]), rel=1e-4, abs=1e-3)
            for level in sims:
                assert hit["levels"][level] == pytest.approx(float(sims[level][q, v]), rel=1e-4, abs=1e-3)
        scores = [h["score"] for h in row["results"]]
        assert scores == sorted(scores, reverse=True)


def test_two_stage_and_tiling_on_exported_scorer(built, monkeypatch):
    _, index = built
    gallery = GalleryIndex(index)
    bundle = load_bundle(gallery.bundle_path)
    feats = TextEncoder(bundle, "cpu").encode(QUERIES)
    scorer = scoring.Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    exhaustive = search.exhaustive(scorer, gallery, feats, k=4)
    staged = search.two_stage(scorer, gallery, feats, k=4, shortlist=len(gallery))
    np.testing.assert_array_equal(staged.indices, exhaustive.indices)
    np.testing.assert_allclose(staged.fused, exhaustive.fused, rtol=1e-5, atol=1e-5)
    whole = scorer.score_tile(feats, gallery.features(0, len(gallery)))
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: (2, 4))
    tiled = scoring.score_matrix(scorer, feats, gallery)
    for level in scoring.LEVELS:
        np.testing.assert_allclose(tiled[level], whole[level], rtol=1e-5, atol=1e-5)


SECOND_CAPTIONS = ["a vehicle on a street", "an animal outdoors", "food being prepared", "a ball game",
                   "a pet resting", "music being performed"]


def test_evaluate_on_exported_bundle(model, built, tmp_path):
    """`ucofia-run evaluate` against metrics computed from the PyTorch model: torch level
    similarities, SK biases (video bias over the index's bank, text bias over the evaluated
    videos) and fusion from ucofia, metrics from evaluation.retrieval_metrics."""
    root, index = built
    captions = BANK + SECOND_CAPTIONS  # two captions per video: the multi-caption protocol
    video_of_text = list(range(N_VIDEOS)) * 2
    ann = tmp_path / "test.csv"
    ann.write_text("key,vid_key,video_id,sentence\n" +
                   "".join(f"ret{i},msr{v},video{v},{c}\n" for i, (v, c) in enumerate(zip(video_of_text, captions))))
    out = tmp_path / "metrics.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(ann), "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["captions"] == 2 * N_VIDEOS and report["protocol"] == "multi-caption"

    from evaluation import retrieval_metrics

    n_iters = model.config.sk_iterations
    videos = _torch_videos(model, root / "videos")
    with torch.no_grad():
        bank = model.level_similarities(_torch_text(model, BANK), videos)
        sims = model.level_similarities(_torch_text(model, captions), videos)
        video_bias = {lv: ucofia.sinkhorn_video_bias(bank[lv], n_iters) for lv in sims}
        text_bias = {lv: ucofia.sinkhorn_text_bias(sims[lv], n_iters) for lv in sims}
        t2v = ucofia.fuse(sims, video_bias).numpy()
        v2t = ucofia.fuse({lv: sims[lv] + text_bias[lv][:, None] for lv in sims}).numpy()
    want = {"t2v": retrieval_metrics(t2v, video_of_text, "t2v"), "v2t": retrieval_metrics(v2t, video_of_text, "v2t")}
    assert report["metrics"] == want
