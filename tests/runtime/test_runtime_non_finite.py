"""NaN/inf out of a graph is never stored or ranked silently: a video whose features are not finite
is listed as failed (the rest of its batch is indexed), a query whose features are not finite and
a non-finite similarity are errors naming the text (no torch involved)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import make_clip

from runtime import scoring
from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.errors import QueryError, RuntimeUserError
from runtime.index import GalleryIndex, IndexWriter
from runtime.ingest import local as ingest
from runtime.text import TextEncoder


@pytest.fixture(scope="module")
def bundle(fake_bundle):
    return load_bundle(fake_bundle)


class PoisonRow:
    """A graph session whose ``output`` gets a NaN in ``row`` on its first call."""

    def __init__(self, session, output: str, row: int) -> None:
        self.session, self.output, self.row, self.calls = session, output, row, 0

    def run(self, inputs):
        out = self.session.run(inputs)
        self.calls += 1
        if self.calls == 1:
            out[self.output][self.row].flat[0] = np.nan
        return out


def test_video_with_non_finite_features_is_failed_not_stored(bundle, tmp_path, monkeypatch):
    clips = [(f"clip{i}", make_clip(tmp_path / f"clip{i}.mp4", seconds=1, seed=i)) for i in range(3)]
    monkeypatch.setattr(ingest, "open_session", lambda *a, **k: PoisonRow(open_session(*a, **k), "patches", 1))
    report = ingest.IngestReport()
    with IndexWriter(tmp_path / "idx", bundle) as writer:
        ingest.encode_videos(writer, bundle, clips, backend="cpu", batch_size=2, workers=1, processes=False,
                             threads=1, report=report)
    assert report.indexed == 2 and [vid for vid, _ in report.failed] == ["clip1"]
    gallery = GalleryIndex(tmp_path / "idx")
    assert sorted(gallery.ids) == ["clip0", "clip2"]
    assert all(np.isfinite(a).all() for a in gallery.features(0, len(gallery)).values())
    failed = [json.loads(line) for line in (tmp_path / "idx" / "failed.jsonl").read_text().splitlines()]
    assert [r["id"] for r in failed] == ["clip1"]
    assert "non-finite" in failed[0]["error"] and str(clips[1][1]) in failed[0]["error"]
    assert "float32" in failed[0]["error"]  # the fix is named


class BigRow(PoisonRow):
    """A graph session whose ``output`` gets a value beyond the float16 range in ``row`` on its first call."""

    def run(self, inputs):
        out = self.session.run(inputs)
        self.calls += 1
        if self.calls == 1:
            out[self.output][self.row].flat[0] = 1e5
        return out


@pytest.mark.parametrize("store, failed", [("float16", ["clip1"]), ("int8", []), ("float32", [])])
def test_video_beyond_what_the_store_holds_is_failed_not_stored(store, failed, bundle, tmp_path, monkeypatch):
    """patches of 1e5 cannot be float16 (the float16 store refuses the video, naming the fix); int8
    scales them and float32 holds them."""
    clips = [(f"clip{i}", make_clip(tmp_path / f"clip{i}.mp4", seconds=1, seed=i)) for i in range(3)]
    monkeypatch.setattr(ingest, "open_session", lambda *a, **k: BigRow(open_session(*a, **k), "patches", 1))
    report = ingest.IngestReport()
    with IndexWriter(tmp_path / "idx", bundle, store) as writer:
        ingest.encode_videos(writer, bundle, clips, backend="cpu", batch_size=3, workers=1, processes=False,
                             threads=1, report=report)
    assert [vid for vid, _ in report.failed] == failed and report.indexed == 3 - len(failed)
    assert sorted(GalleryIndex(tmp_path / "idx").ids) == sorted({"clip0", "clip1", "clip2"} - set(failed))
    for _, error in report.failed:
        assert "beyond the float16 range for clip1" in error and "--store float32" in error


def test_query_with_non_finite_features_is_an_error_naming_it(bundle):
    encoder = TextEncoder(bundle, "cpu")
    encoder.session = PoisonRow(encoder.session, "words", 2)
    with pytest.raises(QueryError, match=r"non-finite features .* for caption 3;"):
        encoder.encode(["a car", "a dog", "a cat", "a bird"], what="caption")


def test_non_finite_similarity_is_an_error_naming_text_and_row(bundle, monkeypatch):
    cfg = bundle.config
    rng = np.random.default_rng(0)
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    text = scoring.TextFeatures(rng.standard_normal((6, d), dtype=np.float32),
                                rng.standard_normal((6, l, d), dtype=np.float32))
    patches = rng.standard_normal((9, p, d), dtype=np.float32)
    patches[7] = np.inf  # a damaged stored feature: every score of gallery row 7 is NaN/inf
    videos = scoring.ArrayVideos({"video": rng.standard_normal((9, d), dtype=np.float32),
                                  "frame_features": rng.standard_normal((9, f, d), dtype=np.float32),
                                  "patches": patches})
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: (4, 5))
    scorer = scoring.Scorer(open_session(bundle, "scorer", "cpu"), cfg)
    with pytest.raises(RuntimeUserError, match=r"non-finite patch_word similarity .* text 1 and gallery row 7"):
        scoring.score_matrix(scorer, text, videos)
    with pytest.raises(RuntimeUserError, match="gallery row 7"):
        scoring.score_topk(scorer, text, videos, 3)
    patches[7] = 0.5  # finite again: scores come back
    assert np.isfinite(scoring.score_matrix(scorer, text, videos)["patch_word"]).all()
