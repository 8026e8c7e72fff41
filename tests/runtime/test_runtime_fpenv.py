"""Subnormal floats are flushed inside onnxruntime runs only: making a session and running it
leaves the calling thread's floating-point environment as it was (numpy and torch code sharing
the process computes the same before and after), while the body of ``fpenv.flushing`` flushes."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from runtime_helpers import random_queries, random_rows

from runtime.backends import fpenv, open_session
from runtime.bundle import load_bundle
from runtime.scoring import Scorer

TINY = np.float32(1e-40)  # a float32 subnormal


def _subnormals_kept() -> bool:
    return bool((np.array([TINY]) * np.float32(1.0))[0] != 0)


def test_flushing_applies_to_its_body_only():
    assert _subnormals_kept()
    with fpenv.flushing():
        if fpenv._mxcsr_in_fenv():
            assert not _subnormals_kept()
    assert _subnormals_kept()
    with fpenv.preserved(), fpenv.flushing():
        pass
    assert _subnormals_kept()


def test_sessions_leave_the_callers_floating_point_environment_alone(fake_bundle):
    bundle = load_bundle(fake_bundle)
    seen = []

    def use_the_scorer():
        scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
        seen.append(_subnormals_kept())
        text = random_queries(bundle.config, 2, seed=0)
        videos = random_rows(bundle.config, 3, np.random.default_rng(1))
        scorer.score_tile(text, scorer.prepare(videos))
        seen.append(_subnormals_kept())

    worker = threading.Thread(target=use_the_scorer)  # a thread of its own: nothing leaks into the suite
    worker.start()
    worker.join(120)
    assert seen == [True, True]


def test_torch_in_the_same_thread_computes_the_same_after_a_session(fake_bundle):
    torch = pytest.importorskip("torch")
    bundle = load_bundle(fake_bundle)
    out = []

    def run():
        x = torch.tensor([1e-39], dtype=torch.float32)
        before = (x * 0.5).item()
        open_session(bundle, "scorer", "cpu")
        out.append((before, (x * 0.5).item()))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(120)
    before, after = out[0]
    assert before != 0 and after == before
