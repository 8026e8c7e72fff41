"""runtime.scoring / runtime.bundle / runtime.backends on a hand-built bundle (no torch)."""
from __future__ import annotations

import json
import shutil
import threading
import time
import weakref

import numpy as np
import pytest

from runtime import scoring
from runtime.backends import open_session, resolve_backend
from runtime.bundle import load_bundle
from runtime.errors import BackendError, BundleError


def _features(cfg, n_text, n_video, seed=0):
    rng = np.random.default_rng(seed)
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    text = scoring.TextFeatures(rng.standard_normal((n_text, d), dtype=np.float32),
                                rng.standard_normal((n_text, l, d), dtype=np.float32))
    videos = scoring.ArrayVideos({"video": rng.standard_normal((n_video, d), dtype=np.float32),
                                  "frame_features": rng.standard_normal((n_video, f, d), dtype=np.float32),
                                  "patches": rng.standard_normal((n_video, p, d), dtype=np.float32)})
    return text, videos


def test_tiled_equals_untiled(scorer, monkeypatch):
    text, videos = _features(scorer.config, 23, 37)
    whole = scorer.score_tile(text, videos.features(0, len(videos)))
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: (5, 7))
    tiled = scoring.score_matrix(scorer, text, videos)
    for level in scoring.LEVELS:
        np.testing.assert_allclose(tiled[level], whole[level], rtol=1e-6, atol=1e-6)


def test_topk_matches_full_ranking(scorer, monkeypatch):
    text, videos = _features(scorer.config, 11, 29, seed=1)
    rng = np.random.default_rng(2)
    biases = {lv: rng.standard_normal(29).astype(np.float32) for lv in scoring.LEVELS}
    full = scoring.score_matrix(scorer, text, videos)
    fused = scoring.fuse(full, biases)
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: (4, 6))
    top = scoring.score_topk(scorer, text, videos, 5, biases)
    want = np.argsort(-fused, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top.indices, want)
    # tile shapes differ between the two calls: float sums may round differently (atol)
    np.testing.assert_allclose(top.fused, np.take_along_axis(fused, want, 1), rtol=1e-6, atol=1e-6)
    for lv in scoring.LEVELS:
        np.testing.assert_allclose(top.levels[lv], np.take_along_axis(full[lv], want, 1), rtol=1e-6, atol=1e-6)


def test_topk_larger_than_gallery(scorer):
    text, videos = _features(scorer.config, 2, 3)
    top = scoring.score_topk(scorer, text, videos, 10)
    assert top.indices.shape == (2, 3) and (top.indices >= 0).all()


def test_concurrent_tiles_equal_sequential(scorer, monkeypatch):
    text, videos = _features(scorer.config, 9, 41, seed=3)
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, t, v, m: (2, 5))
    sequential, concurrent = (scoring.Scorer(scorer.session, scorer.config) for _ in range(2))
    sequential.concurrency, concurrent.concurrency = 1, 3
    a, b = scoring.score_matrix(sequential, text, videos), scoring.score_matrix(concurrent, text, videos)
    for level in scoring.LEVELS:
        np.testing.assert_array_equal(a[level], b[level])
    ta, tb = scoring.score_topk(sequential, text, videos, 4), scoring.score_topk(concurrent, text, videos, 4)
    np.testing.assert_array_equal(ta.indices, tb.indices)
    np.testing.assert_array_equal(ta.fused, tb.fused)


def test_cpu_scorer_session_runs_tiles_concurrently(bundle):
    assert open_session(bundle, "scorer", "cpu", threads=3).concurrency == 3
    assert open_session(bundle, "text_encoder", "cpu", threads=3).concurrency == 1
    scorer = scoring.Scorer(open_session(bundle, "scorer", "cpu", threads=2), bundle.config)
    t, v = scorer.plan_tiles(1, 1000, 1024)  # one query: the videos are split over both runs
    assert t == 1 and v < 1000 and -(-1000 // v) >= 2


def test_fuse_adds_each_level_its_own_bias():
    levels = dict(zip(scoring.LEVELS, (np.full((2, 2), 1.0, np.float32), np.full((2, 2), 2.0, np.float32),
                                       np.array([[3.0, 4.0], [5.0, 6.0]], np.float32))))
    biases = dict(zip(scoring.LEVELS, (np.array([0.0, 3.0], np.float32), np.array([10.0, 20.0], np.float32),
                                       np.array([100.0, 200.0], np.float32))))
    np.testing.assert_allclose(scoring.fuse(levels, None), [[2, 7 / 3], [8 / 3, 3]], rtol=1e-6)
    # (1 + 0 + 2 + 10 + 3 + 100) / 3 = 116 / 3, (1 + 3 + 2 + 20 + 4 + 200) / 3 = 230 / 3, ...
    np.testing.assert_allclose(scoring.fuse(levels, biases), [[116 / 3, 230 / 3], [118 / 3, 232 / 3]], rtol=1e-6)


class _Metered:
    """Wraps a scorer session: runs overlap (a short sleep), and every call records the bytes then
    in flight: the planned working memory of the calls running at once plus the video feature
    blocks still alive (tracked with weakref.finalize on the arrays the source handed out)."""

    def __init__(self, session, config, runs):
        self.session, self.spec, self.concurrency = session, session.spec, runs
        self.pair = scoring.PAIR_TENSOR_COPIES * config.max_words * config.num_pixels * 4
        self.lock = threading.Lock()
        self.running = self.blocks = self.peak = 0

    def max_rows(self, role):
        return None

    def block_alive(self, nbytes):
        with self.lock:
            self.blocks += nbytes

    def block_dropped(self, nbytes):
        with self.lock:
            self.blocks -= nbytes

    def run(self, inputs):
        work = len(inputs["sentence"]) * len(inputs["video"]) * self.pair
        with self.lock:
            self.running += work
            self.peak = max(self.peak, self.running + self.blocks)
        try:
            time.sleep(0.002)
            return self.session.run(inputs)
        finally:
            with self.lock:
                self.running -= work


class _TrackedVideos(scoring.ArrayVideos):
    def __init__(self, arrays, meter):
        super().__init__(arrays)
        self.meter = meter

    def features(self, start, stop):
        block = {role: np.array(a) for role, a in super().features(start, stop).items()}
        nbytes = sum(a.nbytes for a in block.values())
        self.meter.block_alive(nbytes)
        weakref.finalize(block["video"], self.meter.block_dropped, nbytes)
        return block


@pytest.mark.parametrize("runs, backend, budgets", [(1, "cuda", (1, 3)), (4, "cuda", (1, 3)),
                                                     (4, "cpu", (2, 64))])
def test_everything_in_flight_fits_the_memory_budget(bundle, runs, backend, budgets):
    """The planner counts every concurrent run and every video block alive, not one tile."""
    cfg = bundle.config
    meter = _Metered(open_session(bundle, "scorer", "cpu", threads=1), cfg, runs)
    meter.backend = backend  # "cpu": cache-sized tiles when they fit
    scorer = scoring.Scorer(meter, cfg)
    text, videos = _features(cfg, 6, 400, seed=5)
    for memory_mb in budgets:
        meter.peak = 0
        t, v = scorer.plan_tiles(6, 400, memory_mb)
        assert t * v >= 4, "budget too small to tell anything"
        scoring.score_topk(scorer, text, _TrackedVideos(videos.arrays, meter), 3, memory_mb=memory_mb)
        assert 0 < meter.peak <= memory_mb * 2**20, (runs, memory_mb, t, v, meter.peak)
        assert meter.blocks == 0


def test_plan_tiles_limits(scorer):
    assert scorer.plan_tiles(3, 5, 1024) == (3, 5)  # everything fits in one call
    assert scorer.plan_tiles(1000, 100000, 1e-3) == (1, 1)  # below one pair: the smallest tile
    with pytest.raises(ValueError, match="memory-mb"):
        scorer.plan_tiles(3, 5, 0)


def test_bundle_errors_name_file_and_field(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle.root, copy)
    (copy / "scorer.onnx").unlink()
    with pytest.raises(BundleError, match="scorer.onnx"):
        load_bundle(copy)
    shutil.copy(bundle.root / "scorer.onnx", copy / "scorer.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["fingerprint"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'fingerprint'"):
        load_bundle(copy)
    manifest["fingerprint"] = "a" * 64
    manifest["format"] = "ucofia.bundle/99"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unsupported bundle format"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_backend_resolution(bundle):
    assert resolve_backend("cpu", bundle) == "cpu"
    assert resolve_backend("auto", bundle) in ("cpu", "cuda")  # no engines in this bundle
    with pytest.raises(BackendError, match="no TensorRT engines"):
        resolve_backend("tensorrt", bundle)
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_backend("tpu", bundle)


def test_inputs_cast_to_manifest_dtypes(bundle):
    session = open_session(bundle, "text_encoder", "cpu")
    out = session.run({"input_ids": np.arange(64, dtype=np.int32).reshape(2, 32)})  # int32 -> int64
    assert out["sentence"].dtype == np.float32 and out["words"].shape == (2, 32, bundle.config.embed_dim)
