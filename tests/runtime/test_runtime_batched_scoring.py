"""Batched queries in the exported scorer: a tile of T texts x V videos gives, for every pair, the
score that pair gets scored alone (T = V = 1 calls) and the PyTorch model's levels.

The scorer graph computes each tile's patch-word and frame-sentence products as one GEMM over all
its texts and videos and pools over the batch; a mix-up between the text axis and the word or frame
axis (or between texts of a tile in the runtime) leaves T = 1 calls right and only shows in a batch.
Hence the comparison against single pairs, with T and V that the tile sizes do not divide and videos
with ragged masks (1 .. F real frames, as short clips and time windows give).
"""
from __future__ import annotations

import numpy as np
import pytest

from runtime import scoring
from runtime.backends import open_session
from runtime.bundle import load_bundle

pytestmark = pytest.mark.slow  # the tiny export is shared by the session; the first user pays for it

TEXTS = 7
# real frames per video: full, 1, ragged in between, and two fully padded-at-the-end windows
VALID_FRAMES = (12, 1, 5, 12, 3, 9, 2, 12, 7, 4, 11)
TILE = (3, 4)  # divides neither 7 texts nor 11 videos: every tile edge is exercised
# tiles of other shapes run GEMMs of other shapes (other blockings, summation orders): a few float32
# ulps after the ISA's division by its 0.01 temperature
PAIR_RTOL = 1e-6


@pytest.fixture(scope="module")
def features(tiny_export):
    """Text features of TEXTS captions and video features of len(VALID_FRAMES) videos with ragged
    masks, from the tiny model (the graphs' inputs), and the model's own level matrices."""
    torch = pytest.importorskip("torch")
    from export.samples import sample_token_ids, sample_videos

    model = tiny_export.model
    gen = torch.Generator().manual_seed(5)
    valid = [min(v, model.config.max_frames) for v in VALID_FRAMES]
    with torch.no_grad():
        text = model.encode_text(sample_token_ids(model, TEXTS, gen))
        sample = sample_videos(model, valid, gen)
        video = model.encode_video(sample.frames, sample.video_mask)
        levels = model.level_similarities(text, video)
    texts = scoring.TextFeatures(text.sentence.numpy(), text.words.numpy())
    videos = scoring.ArrayVideos({"video": video.video.numpy(), "frame_features": video.frames.numpy(),
                                  "patches": video.patches.numpy()})
    return texts, videos, {lv: value.numpy() for lv, value in levels.items()}


@pytest.fixture(scope="module")
def scorer(tiny_export):
    bundle = load_bundle(tiny_export.bundle)
    return scoring.Scorer(open_session(bundle, "scorer", "cpu", threads=2), bundle.config)


def _single_pairs(scorer: scoring.Scorer, texts: scoring.TextFeatures, videos: scoring.ArrayVideos
                  ) -> dict[str, np.ndarray]:
    """Every (text, video) pair in a graph call of its own: T = V = 1."""
    out = {lv: np.empty((len(texts), len(videos)), np.float32) for lv in scoring.LEVELS}
    for t in range(len(texts)):
        for v in range(len(videos)):
            tile = scorer.score_tile(texts.rows(t, t + 1), scorer.prepare(videos.features(v, v + 1)))
            for lv in scoring.LEVELS:
                out[lv][t, v] = tile[lv][0, 0]
    return out


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float) -> None:
    for lv in scoring.LEVELS:
        scale = max(1.0, float(np.abs(want[lv]).max()))
        err = float(np.abs(got[lv] - want[lv]).max())
        assert err <= rtol * scale, f"{lv}: max abs difference {err:.3g} > {rtol:g} x scale {scale:.3g}"


def test_batched_tiles_equal_single_pairs(scorer, features, monkeypatch):
    texts, videos, _ = features
    pairs = _single_pairs(scorer, texts, videos)
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: TILE)
    _assert_close(scoring.score_matrix(scorer, texts, videos), pairs, PAIR_RTOL)


def test_one_call_for_all_queries_equals_single_pairs(scorer, features):
    """All texts x all videos in ONE graph call (the widest batch the graph can take)."""
    texts, videos, _ = features
    whole = scorer.score_tile(texts, scorer.prepare(videos.features(0, len(videos))))
    _assert_close(whole, _single_pairs(scorer, texts, videos), PAIR_RTOL)


def test_batched_topk_ranks_like_single_pairs(scorer, features, monkeypatch):
    texts, videos, _ = features
    pairs = _single_pairs(scorer, texts, videos)
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: TILE)
    top = scoring.score_topk(scorer, texts, videos, k=len(videos))
    fused = scoring.fuse(pairs, None)
    np.testing.assert_allclose(top.fused, -np.sort(-fused, axis=1), rtol=PAIR_RTOL, atol=PAIR_RTOL)
    np.testing.assert_allclose(np.take_along_axis(fused, top.indices, 1), top.fused, rtol=PAIR_RTOL,
                               atol=PAIR_RTOL)


def test_batched_tiles_match_the_pytorch_levels(scorer, features, monkeypatch):
    """The same batch against the model's own levels (torch, all pairs at once): the export's
    verification tolerance for float32 graphs."""
    from export.verify import FP32_TOLERANCES

    texts, videos, torch_levels = features
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: TILE)
    _assert_close(scoring.score_matrix(scorer, texts, videos), torch_levels, FP32_TOLERANCES.similarities)
