"""The GEMM-rate probe that sets the scoring benchmarks' floor (benchmarks/common.py).

What it counts decides how close to the hardware the scorer is said to be, so the accounting is
checked here: every shape and method is timed, the FLOPs are those of the products actually
run (the concurrent method's column blocks included), and the best rate is the maximum of all.
Rates themselves are not asserted (no timing in tests)."""
from __future__ import annotations

import importlib.util

import pytest
from data_paths import REPO_ROOT

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", REPO_ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _CountingSession:
    """Delegates to a real MatMul session and adds up the FLOPs of the products it ran."""

    def __init__(self, session, flops: dict) -> None:
        self.session, self.flops = session, flops

    def run(self, names, feeds):
        (m, k), n = feeds["a"].shape, feeds["b"].shape[1]
        self.flops[m] = self.flops.get(m, 0) + 2 * m * k * n
        return self.session.run(names, feeds)


def test_the_flops_counted_are_the_products_run(common, monkeypatch) -> None:
    whole, tile = (64, 32, 45), (48, 16, 8)
    run_flops: dict[int, float] = {}  # by m (the two shapes differ in m), single- and multi-threaded
    real = common.matmul_session
    monkeypatch.setattr(common, "matmul_session", lambda threads: _CountingSession(real(threads), run_flops))
    probe = common.MatmulProbe(2, shape=whole, extra_shapes=(tile,), dose_s=0.005)
    probe.run()
    probe.run()
    assert set(probe.methods) == {whole, tile}
    assert all(set(m) == {"numpy", "onnxruntime", "onnxruntime_concurrent"} for m in probe.methods.values())
    for m, k, n in (whole, tile):
        one = 2 * m * k * n
        counted = probe.flops[((m, k, n), "onnxruntime")] + probe.flops[((m, k, n), "onnxruntime_concurrent")]
        # each run: one untimed product per method (the concurrent one: each column block once)
        assert run_flops[m] == counted + 2 * 2 * one
        assert probe.flops[((m, k, n), "numpy")] % one == 0 and probe.flops[((m, k, n), "numpy")] >= 2 * one
        for name in probe.methods[(m, k, n)]:
            assert probe.seconds[((m, k, n), name)] >= 2 * probe.dose_s  # two timed doses, each at least dose_s


def test_rates_report_each_shape_and_the_best_of_all(common) -> None:
    whole, tile = (64, 32, 45), (48, 16, 8)
    probe = common.MatmulProbe(2, shape=whole, extra_shapes=(tile,), dose_s=0.005)
    probe.run()
    rates = probe.rates()
    by_shape = rates["by_shape_m_k_n"]
    assert set(by_shape) == {"64x32x45", "48x16x8"}
    every = {(shape, name.removesuffix("_gflops")): rate for shape, r in by_shape.items() for name, rate in r.items()}
    assert len(every) == 6
    best = max(every, key=every.get)
    assert rates["best_gflops"] == every[best]
    assert (rates["best_shape_m_k_n"], rates["best_method"]) == best
    # the first shape's rates stay at the top level (what earlier results recorded)
    assert rates["shape_m_k_n"] == list(whole)
    assert {k: rates[k] for k in by_shape["64x32x45"]} == by_shape["64x32x45"]
    for (shape, name), rate in every.items():
        key = tuple(int(x) for x in shape.split("x"))
        assert rate == pytest.approx(probe.flops[(key, name)] / probe.seconds[(key, name)] / 1e9, abs=0.051)


def test_the_multi_threaded_session_does_not_spin(common) -> None:
    """Its idle threads would take the cores from the method timed after it."""
    session = common.matmul_session(2)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_tile_product_shape_splits_into_the_runtimes_tile_calls(common) -> None:
    """Split into ``concurrent`` column blocks (as the probe's concurrent method splits it), the
    shape is one [v P, D] x [D, t L] product per call: the scorer's tile of t texts x v videos."""
    import numpy as np

    from ucofia.config import tiny_config

    cfg = tiny_config()
    m, k, n = common.tile_product_shape(cfg, (4, 128), 2)
    assert (m, k) == (128 * cfg.num_pixels, cfg.embed_dim)
    blocks = np.array_split(np.zeros((k, n)), 2, axis=1)
    assert [b.shape[1] for b in blocks] == [4 * cfg.max_words] * 2
