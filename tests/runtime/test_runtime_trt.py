"""runtime.backends.tensorrt_session.TensorRTSession against a fake TensorRT engine that enforces its
optimisation profile and a fake CUDA driver with streams and per-thread contexts
(tests/helpers/trt_runtime_fakes.py): calls larger than the profile are split, smaller than its
minimum padded, every TensorRT return value is checked, results equal onnxruntime's on the same
graphs; buffers are allocated once and reused, copies go through pinned memory on the session's
stream and outputs are read only after it is synchronised; a call from another thread makes the
context current there."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from runtime_helpers import build_fake_bundle
from trt_runtime_fakes import FakeCudaMemory, add_fake_engines, fake_tensorrt, release_context

from runtime import scoring
from runtime.backends import open_session, resolve_backend, tensorrt_engines, tensorrt_session
from runtime.bundle import load_bundle
from runtime.errors import BackendError
from runtime.text import TextEncoder

DEVICE = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
VERSION = "10.8.0"
TEXTS = (2, 2, 3)  # profile min/opt/max texts: the minimum 2 forces padding of single texts
VIDEOS = (1, 2, 2)


def _setup(tmp_path, monkeypatch, fail=None, scorer=None):
    root = build_fake_bundle(tmp_path / "bundle")
    add_fake_engines(root, TEXTS, VIDEOS, DEVICE, VERSION, fail, scorer)
    engines = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(VERSION, root, engines))
    monkeypatch.setattr(tensorrt_engines, "gpu_device", lambda: dict(DEVICE))
    monkeypatch.setattr(tensorrt_session, "CudaMemory", FakeCudaMemory)
    return load_bundle(root), engines


def _features(cfg, n_text, n_video, seed=0):
    rng = np.random.default_rng(seed)
    d = cfg.embed_dim
    text = scoring.TextFeatures(rng.standard_normal((n_text, d), dtype=np.float32),
                                rng.standard_normal((n_text, cfg.max_words, d), dtype=np.float32))
    videos = {"video": rng.standard_normal((n_video, d), dtype=np.float32),
              "frame_features": rng.standard_normal((n_video, cfg.max_frames, d), dtype=np.float32),
              "patches": rng.standard_normal((n_video, cfg.num_pixels, d), dtype=np.float32)}
    return text, videos


def test_scorer_calls_beyond_the_profile_are_split_and_padded(tmp_path, monkeypatch):
    bundle, engines = _setup(tmp_path, monkeypatch)
    assert resolve_backend("auto", bundle) == "tensorrt"
    session = open_session(bundle, "scorer", "auto")
    assert session.backend == "tensorrt" and session.axes == {"T": (2, 3), "V": (1, 2)}
    assert session.max_rows("sentence") == 3 and session.max_rows("patches") == 2
    text, videos = _features(bundle.config, 7, 5)
    inputs = {"sentence": text.sentence, "words": text.words, **videos}
    got = session.run(inputs)
    want = open_session(bundle, "scorer", "cpu").run(inputs)
    for level in scoring.LEVELS:
        assert got[level].shape == (7, 5)
        np.testing.assert_allclose(got[level], want[level], rtol=1e-6, atol=1e-6)
    runs = engines[-1].executions
    # 7 texts -> 3 + 3 + 1 (padded to the minimum 2); 5 videos -> 2 + 2 + 1
    assert len(runs) == 9
    assert sorted({r["shapes"]["sentence"][0] for r in runs}) == [2, 3]
    assert sorted({r["shapes"]["video"][0] for r in runs}) == [1, 2]
    for r in runs:  # every tensor bound to its own buffer, inputs and outputs alike
        assert set(r["addresses"]) == set(engines[-1].inputs) | set(engines[-1].outputs)
        assert len(set(r["addresses"].values())) == len(r["addresses"])
    # one buffer pair per tensor, allocated for the first (largest) piece and reused by the 8 others
    assert {frozenset(r["addresses"].items()) for r in runs} == {frozenset(runs[0]["addresses"].items())}
    assert session.allocations == len(runs[0]["addresses"]) == session._memory.allocations
    assert session._memory.pageable_copies == 0  # every copy staged through pinned memory
    assert session._memory.synchronizations == len(runs)
    again = session.run(inputs)  # a second call allocates nothing
    assert session.allocations == len(runs[0]["addresses"])
    np.testing.assert_array_equal(again["patch_word"], got["patch_word"])
    with pytest.raises(ValueError, match="inputs disagree on axis 'T'"):
        session.run({**inputs, "words": text.words[:4]})
    assert session._memory.live
    session.close()
    assert not session._memory.live  # every device and pinned buffer was freed


def test_encoders_and_tiled_scoring_on_tensorrt_equal_onnxruntime(tmp_path, monkeypatch):
    bundle, engines = _setup(tmp_path, monkeypatch)
    texts = [f"query number {i} about a red car" for i in range(5)]
    trt_feats = TextEncoder(bundle, "tensorrt").encode(texts)
    cpu_feats = TextEncoder(bundle, "cpu").encode(texts)
    np.testing.assert_allclose(trt_feats.words, cpu_feats.words, rtol=1e-6, atol=1e-6)
    assert all(r["shapes"]["input_ids"][0] <= TEXTS[2] for r in engines[-1].executions)

    trt_scorer = scoring.Scorer(open_session(bundle, "scorer", "tensorrt"), bundle.config)
    cpu_scorer = scoring.Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    # the planner sizes tiles to the engine's profile whatever the memory budget
    assert trt_scorer.plan_tiles(100, 1000, 4096) == (TEXTS[2], VIDEOS[2])
    text, videos = _features(bundle.config, 5, 9, seed=1)
    biases = {lv: np.linspace(-1, 1, 9, dtype=np.float32) * (i + 1) for i, lv in enumerate(scoring.LEVELS)}
    top_trt = scoring.score_topk(trt_scorer, text, scoring.ArrayVideos(videos), 4, biases)
    top_cpu = scoring.score_topk(cpu_scorer, text, scoring.ArrayVideos(videos), 4, biases)
    np.testing.assert_array_equal(top_trt.indices, top_cpu.indices)
    np.testing.assert_allclose(top_trt.fused, top_cpu.fused, rtol=1e-6, atol=1e-6)
    assert all(r["shapes"]["video"][0] <= VIDEOS[2] for r in engines[-1].executions)


def test_video_encoder_on_tensorrt(tmp_path, monkeypatch):
    bundle, _ = _setup(tmp_path, monkeypatch)
    cfg = bundle.config
    rng = np.random.default_rng(3)
    size = cfg.clip.image_size
    inputs = {"frames": rng.random((3, cfg.max_frames, 3, size, size), dtype=np.float32),
              "video_mask": np.ones((3, cfg.max_frames), np.float32)}
    got = open_session(bundle, "video_encoder", "tensorrt").run(inputs)
    want = open_session(bundle, "video_encoder", "cpu").run(inputs)
    for role in ("video", "frame_features", "patches"):
        np.testing.assert_allclose(got[role], want[role], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fail, message", [
    ("shape", r"rejected input 'sentence' of shape \[2, 64\].*profile: \[2, 64\]\.\.\[3, 64\]"),
    ("address", "refused the device address of tensor 'sentence'"),
    ("output_shape", "could not infer the shape of output 'video_sentence'"),
    ("execute", "failed to run the scorer engine"),
])
def test_tensorrt_failures_are_one_line_errors(tmp_path, monkeypatch, fail, message):
    bundle, _ = _setup(tmp_path, monkeypatch, fail={"scorer": fail})
    text, videos = _features(bundle.config, 1, 1)
    session = open_session(bundle, "scorer", "tensorrt")
    with pytest.raises(BackendError, match=message) as info:
        session.run({"sentence": text.sentence, "words": text.words, **videos})
    assert "\n" not in str(info.value)
    assert not session._memory.queue  # copies queued before the error were waited for
    session.close()
    assert not session._memory.live  # nothing leaks on the error path


def test_split_axis_covers_every_row_once():
    for n, low, high in ((7, 2, 3), (1, 2, 3), (6, 1, 3), (64, 1, 16), (5, 5, 5)):
        pieces = tensorrt_session.split_axis(n, low, high)
        assert [i for p in pieces for i in range(p.start, p.stop)] == list(range(n))
        assert all(low <= p.size <= high and p.stop - p.start <= p.size for p in pieces)
        assert all(len(p.rows()) == p.size and p.rows().max() == p.stop - 1 for p in pieces)


def test_buffers_grow_with_the_pieces_and_are_never_reallocated_for_smaller_ones(tmp_path, monkeypatch):
    bundle, _ = _setup(tmp_path, monkeypatch)
    session = open_session(bundle, "scorer", "tensorrt")
    cpu = open_session(bundle, "scorer", "cpu")
    allocations = []
    for n_text, n_video in ((1, 1), (2, 2), (3, 2), (1, 1), (7, 5), (2, 1)):
        text, videos = _features(bundle.config, n_text, n_video, seed=n_text * 10 + n_video)
        inputs = {"sentence": text.sentence, "words": text.words, **videos}
        got, want = session.run(inputs), cpu.run(inputs)
        for level in scoring.LEVELS:
            np.testing.assert_allclose(got[level], want[level], rtol=1e-6, atol=1e-6)
        allocations.append(session.allocations)
    # (1,1) is padded to (2,1): 5 inputs + 3 outputs; (2,2) grows the 3 video inputs and the 3 outputs;
    # (3,2) the 2 text inputs and the 3 outputs; nothing after that, the largest piece
    assert allocations == [8, 14, 19, 19, 19, 19]


def test_outputs_are_read_only_after_the_stream_is_synchronised(tmp_path, monkeypatch):
    """The fake queues copies and executions until synchronize(): a session that read its pinned
    outputs before synchronising would return the previous piece's (or garbage) values."""
    bundle, _ = _setup(tmp_path, monkeypatch)
    session = open_session(bundle, "scorer", "tensorrt")
    memory = session._memory
    real_sync = memory.synchronize
    seen = []

    def synchronize():
        seen.append(len(memory.queue))  # copies + execution + copies back are queued when it is called
        real_sync()

    monkeypatch.setattr(memory, "synchronize", synchronize)
    text, videos = _features(bundle.config, 3, 2)
    inputs = {"sentence": text.sentence, "words": text.words, **videos}
    got = session.run(inputs)
    want = open_session(bundle, "scorer", "cpu").run(inputs)
    np.testing.assert_allclose(got["frame_sentence"], want["frame_sentence"], rtol=1e-6, atol=1e-6)
    assert seen == [5 + 1 + 3]


def test_a_call_from_another_thread_makes_the_context_current_there(tmp_path, monkeypatch):
    bundle, engines = _setup(tmp_path, monkeypatch)
    session = open_session(bundle, "text_encoder", "tensorrt")
    ids = np.ones((3, bundle.config.max_words), np.int64)
    results, errors = [], []
    together = threading.Barrier(3)  # the three threads are alive at once (distinct thread ids)

    def worker():
        release_context()  # a new thread has no current CUDA context
        together.wait()
        try:
            results.append(session.run({"input_ids": ids}))
        except Exception as exc:  # the failure is asserted below
            errors.append(exc)
        together.wait()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    want = open_session(bundle, "text_encoder", "cpu").run({"input_ids": ids})
    for got in results:
        np.testing.assert_allclose(got["words"], want["words"], rtol=1e-6, atol=1e-6)
    assert len({r["thread"] for r in engines[-1].executions}) == 3


def test_the_scorer_engine_has_a_profile_of_its_own_for_scoring_tiles(tmp_path, monkeypatch):
    bundle, engines = _setup(tmp_path, monkeypatch, scorer=((1, 2, 3), (1, 64, 40)))
    scorer = scoring.Scorer(open_session(bundle, "scorer", "tensorrt"), bundle.config)
    assert scorer.session.axes == {"T": (1, 3), "V": (1, 40)}
    # the encoders' video profile (max 2) no longer caps scoring tiles
    assert scorer.plan_tiles(100, 1000, 4096) == (3, 40)
    text, videos = _features(bundle.config, 5, 90, seed=4)
    got = scoring.score_matrix(scorer, text, scoring.ArrayVideos(videos))
    cpu = scoring.Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    want = scoring.score_matrix(cpu, text, scoring.ArrayVideos(videos))
    for level in scoring.LEVELS:
        np.testing.assert_allclose(got[level], want[level], rtol=1e-6, atol=1e-6)
    assert max(r["shapes"]["video"][0] for r in engines[-1].executions) == 40


def test_auto_says_when_it_skips_engines_built_elsewhere(tmp_path, monkeypatch, caplog):
    bundle, _ = _setup(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.4.0", bundle.root, []))
    assert resolve_backend("auto", bundle) == "cpu"
    notes = [r.getMessage() for r in caplog.records if r.name == "runtime.backends.selection"]
    assert len(notes) == 1 and notes[0].startswith("note: not using the bundle's TensorRT engines: engines were "
                                                   "built for NVIDIA H100 80GB HBM3")
    assert "TensorRT versions differ" in notes[0] and "--trt --force" in notes[0]
    caplog.clear()
    plain = load_bundle(build_fake_bundle(tmp_path / "plain"))  # no engines: nothing to say
    assert resolve_backend("auto", plain) == "cpu"
    assert not [r for r in caplog.records if r.name == "runtime.backends.selection"]


def test_cuda_libraries_are_preloaded_before_tensorrt_sessions(tmp_path, monkeypatch):
    import onnxruntime

    from runtime.backends import ort as ort_backend

    bundle, _ = _setup(tmp_path, monkeypatch)
    calls = []
    monkeypatch.setattr(ort_backend, "_PRELOADED", [])
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: calls.append("preload"), raising=False)
    open_session(bundle, "scorer", "tensorrt")
    assert calls == ["preload"]


@pytest.mark.slow
def test_the_gpu_check_worker_runs_on_fake_engines(tmp_path, monkeypatch):
    """benchmarks/gpu_runtime.py (what gpu_check.py runs with torch blocked on a GPU machine), on the
    fakes: splitting and padding against the CPU, no device-memory growth over 200 calls, scoring timed;
    the CUDA provider (not installed here) reported as skipped with the reason."""
    import importlib.util

    from data_paths import REPO_ROOT
    from trt_runtime_fakes import device_bytes

    from runtime.backends import cuda_driver

    bundle, engines = _setup(tmp_path, monkeypatch)
    total = 80 << 30
    monkeypatch.setattr(cuda_driver, "device_memory", lambda: (total - device_bytes(), total))
    spec = importlib.util.spec_from_file_location("gpu_runtime", REPO_ROOT / "benchmarks" / "gpu_runtime.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    entry = worker.run([bundle.root], n=40)["bundles"][str(bundle.root)]
    assert "CUDAExecutionProvider is not installed" in entry["skipped"]["cuda"] and "tensorrt" not in entry["skipped"]
    compare = entry["tensorrt"]["compare"]
    assert [c["rows"] for c in compare["text_encoder"]["cases"]] == [{"T": 1}, {"T": TEXTS[2] + 3}]
    assert all(c["within_tolerance"] for g in compare.values() for c in g["cases"]), compare
    assert all(c["frames_with_cpu_selection"] == 1.0 for c in compare["video_encoder"]["cases"])
    memory = entry["tensorrt"]["memory"]
    assert memory["no_growth"] and memory["buffer_allocations_after_warmup"] == 0 and memory["calls"] == 200
    scoring_ = entry["scoring"]
    assert scoring_["n"] == 40 and scoring_["tensorrt"]["same_top1_vs_cpu"] == 1.0
    assert scoring_["tensorrt"]["err_over_scale_vs_cpu"] < 1e-5
    assert any(r["shapes"]["sentence"][0] == TEXTS[0] for r in engines[-1].executions)  # padded pieces ran
