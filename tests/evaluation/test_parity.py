"""The parity comparison and the `ucofia parity` / `ucofia demo` commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import invoke

from evaluation.compare import LEVELS, Tolerance, compare_retrieval, format_report, fuse_numpy


def _sims(seed: int, t: int = 6, v: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lv: (rng.normal(size=(t, v)) + 3 * np.eye(t, v)).astype(np.float32) for lv in LEVELS}


def _bias(seed: int, v: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lv: rng.normal(size=v).astype(np.float32) for lv in LEVELS}


def test_identical_inputs_pass_with_zero_differences():
    sims, vb, tb = _sims(0), _bias(1), _bias(2)
    report = compare_retrieval(sims, sims, vb, vb, tb, tb)
    assert report["passed"], report["failures"]
    assert [r["name"] for r in report["rows"]] == [*LEVELS, "fused", "fused+SK"]
    assert all(r["max_abs"] == 0 and r["top1_agreement"] == 1 for r in report["rows"])
    assert "PASSED" in format_report(report)


def test_small_noise_passes_but_large_noise_fails():
    sims = _sims(0)
    near = {lv: s + 1e-5 for lv, s in sims.items()}
    assert compare_retrieval(sims, near)["passed"]
    far = dict(sims)
    far["patch_word"] = sims["patch_word"] + 1e-2
    report = compare_retrieval(sims, far)
    assert not report["passed"]
    assert any("patch_word: max abs difference" in f for f in report["failures"])


def test_rank_change_is_reported_as_metric_delta():
    sims = _sims(0)
    swapped = {lv: s.copy() for lv, s in sims.items()}
    for lv in LEVELS:
        swapped[lv][0] = sims[lv][0][::-1]  # caption 0 now prefers the last video
    report = compare_retrieval(sims, swapped, tolerance=Tolerance(max_abs=None, max_r1_delta=0.0,
                                                                 identical_metrics=False))
    fused = next(r for r in report["rows"] if r["name"] == "fused")
    assert fused["top1_agreement"] < 1
    assert fused["metric_deltas"]["t2v"]["R1"] < 0
    assert not report["passed"]


def test_exact_ties_broken_by_rounding_are_tie_flips_not_failures():
    sims = _sims(0)
    sims["patch_word"][:, :] = 1.0  # every caption ties with every video (degenerate random model)
    cand = {lv: s.copy() for lv, s in sims.items()}
    cand["patch_word"] = sims["patch_word"] + np.linspace(0, 1e-6, 36, dtype=np.float32).reshape(6, 6)
    report = compare_retrieval(sims, cand)
    row = report["rows"][LEVELS.index("patch_word")]
    assert any(abs(v) > 0 for d in row["metric_deltas"].values() for v in d.values())
    assert row["tie_flips"] and report["passed"]
    assert "exact ties" in format_report(report)


def test_fp16_tolerance_allows_small_metric_noise_only():
    tol = Tolerance.for_dtype("float16")
    assert tol.max_abs is None and tol.max_r1_delta == pytest.approx(0.2)


def test_fuse_numpy_bias_axes():
    sims = {lv: np.zeros((2, 3), np.float32) for lv in LEVELS}
    vb = {lv: np.array([1.0, 2.0, 3.0]) for lv in LEVELS}
    tb = {lv: np.array([10.0, 20.0]) for lv in LEVELS}
    assert np.allclose(fuse_numpy(sims, vb)[1], [1, 2, 3])
    assert np.allclose(fuse_numpy(sims, tb, axis=1)[:, 0], [10, 20])


def test_nan_candidate_is_a_clear_error():
    sims = _sims(0)
    bad = {lv: s.copy() for lv, s in sims.items()}
    bad["video_sentence"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compare_retrieval(sims, bad)


@pytest.mark.slow
def test_parity_command_on_demo_data(tiny_export, demo_benchmark, tmp_path):
    """A tiny random checkpoint, its exported bundle and demo data: parity passes; a bundle of
    other weights is refused by fingerprint."""
    import ucofia
    from ucofia.cli import main
    from ucofia.config import tiny_config

    data = demo_benchmark
    out = tmp_path / "parity.json"
    cmd = ["parity", "--checkpoint", str(tiny_export.checkpoint), "--bundle", str(tiny_export.bundle),
           "--benchmark", str(data), "-o", str(out)]
    done = invoke(main, cmd, "ucofia")  # in-process; stdout and stderr apart, as from a subprocess
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["passed"] and report["captions"] == report["videos"] > 0
    assert max(r["max_abs"] for r in report["rows"]) < 2e-4

    other = ucofia.build_model(tiny_config(), seed=1)
    ucofia.save_checkpoint(tmp_path / "ck_other", other)
    cmd[cmd.index(str(tiny_export.checkpoint))] = str(tmp_path / "ck_other")
    done = invoke(main, cmd, "ucofia")
    assert done.returncode != 0
    assert "fingerprint" in done.stderr and "re-export" in done.stderr
    # refused up front: neither side decoded or encoded anything
    assert "ucofia-run index" not in done.stdout + done.stderr and "PyTorch: encoding" not in done.stdout + done.stderr


@pytest.mark.slow
def test_parity_judges_int8_bundles_by_retrieval_metrics(tiny_export_int8, demo_benchmark):
    """An --int8 bundle is lossy: parity applies the manifest's R@1 rule instead of 2e-4."""
    from evaluation.parity import run_parity
    from export.int8 import INT8_R1_DELTA

    report = run_parity(tiny_export_int8.checkpoint, tiny_export_int8.bundle, demo_benchmark)
    assert report["tolerance"] == {"max_abs": None, "max_r1_delta": INT8_R1_DELTA, "identical_metrics": False}
    assert report["bundle_dtype"] == "float32 + int8 encoders"
    assert max(r["max_abs"] for r in report["rows"]) > 2e-4  # really the quantised encoders
    worst = max(abs(d["R1"]) for r in report["rows"] for d in r["metric_deltas"].values())
    assert report["passed"] == (worst <= INT8_R1_DELTA)


def test_test_only_benchmark_needs_a_bank_file(demo_benchmark, tmp_path):
    """A benchmark holding only its test split (e.g. MSR-VTT 1k-A) is refused with the way out
    (--bank); with a bank file its captions are the SK bank."""
    import shutil

    from evaluation.parity import ParityError, load_benchmark

    data = demo_benchmark
    full = load_benchmark(data)
    test_only = tmp_path / "test_only"
    shutil.copytree(data, test_only)
    (test_only / "MSRVTT_train.9k.csv").unlink()
    with pytest.raises(ParityError, match="no training split.*--bank FILE"):
        load_benchmark(test_only)
    bank = tmp_path / "bank.txt"
    bank.write_text("a red car drives\na dog runs on the beach\n")
    bench = load_benchmark(test_only, bank=bank)
    assert bench.bank == ["a red car drives", "a dog runs on the beach"]
    assert bench.captions == full.captions and bench.video_ids == full.video_ids


@pytest.mark.slow
def test_parity_on_real_test_only_clips_with_bank(shared_dir, tiny_export, tmp_path):
    """The 24 real MSR-VTT 1k-A clips (test CSV only) through both sides, bank from --bank."""
    from ucofia.cli import main

    bank = tmp_path / "bank.txt"
    bank.write_text("a man is talking\nsomeone cooks food in a kitchen\na car drives on a road\n")
    out = tmp_path / "parity.json"
    cmd = ["parity", "--checkpoint", str(tiny_export.checkpoint), "--bundle", str(tiny_export.bundle),
           "--benchmark", str(shared_dir / "data" / "msrvtt_1ka_sample"), "--bank", str(bank), "-o", str(out)]
    done = invoke(main, cmd, "ucofia")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["passed"] and report["videos"] == report["captions"] == 24
    assert report["bank_captions"] == 3 and report["bank"] == str(bank)
    assert max(r["max_abs"] for r in report["rows"]) < 2e-4


@pytest.mark.slow
def test_parity_reports_the_effect_of_the_stored_dtype(tiny_export, demo_benchmark):
    """An index storing float16 / int8 features: parity compares it with PyTorch like any other
    deployment choice (levels, top-k agreement, metric deltas) under the store's R@1 rule."""
    from evaluation.compare import STORE_R1_DELTA
    from evaluation.parity import run_parity

    worst_abs = {}
    for store in ("float16", "int8"):
        report = run_parity(tiny_export.checkpoint, tiny_export.bundle, demo_benchmark, store=store)
        assert report["index_store"] == store
        assert report["tolerance"] == {"max_abs": None, "max_r1_delta": STORE_R1_DELTA[store],
                                       "identical_metrics": False}
        worst_abs[store] = max(r["max_abs"] for r in report["rows"])
        worst = max(abs(d["R1"]) for r in report["rows"] for d in r["metric_deltas"].values())
        assert report["passed"] == (worst <= STORE_R1_DELTA[store])
        assert all(0 <= r["top1_agreement"] <= 1 for r in report["rows"])
    assert 0 < worst_abs["float16"] < worst_abs["int8"]  # really the rounded features, int8 coarser


def test_int8_scorer_tolerance_is_the_r1_rule_and_keeps_looser_ones():
    from evaluation.compare import SCORER_R1_DELTA

    fp32 = {"dtype": "float32"}
    assert Tolerance.for_manifest(fp32, scorer_precision="float32") == Tolerance()
    assert Tolerance.for_manifest(fp32, scorer_precision="int8") == Tolerance(
        max_abs=None, max_r1_delta=SCORER_R1_DELTA["int8"], identical_metrics=False)
    # a looser rule already in force (int8 encoders allowing 3 points) is kept, never tightened
    loose = {"dtype": "float32", "int8": {"parity_r1_delta": 3.0}}
    assert Tolerance.for_manifest(loose, scorer_precision="int8").max_r1_delta == 3.0


@pytest.mark.slow
def test_parity_reports_the_effect_of_the_int8_scorer(tiny_export, demo_benchmark, monkeypatch):
    """``--scorer-precision int8``: the runtime's scorer runs the int8 graph, and parity reports what
    it changed under the scorer's R@1 rule (only the patch-word level's products are int8)."""
    from evaluation.compare import SCORER_R1_DELTA
    from evaluation.parity import run_parity
    from runtime.backends import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx512_vnni"})
    base = run_parity(tiny_export.checkpoint, tiny_export.bundle, demo_benchmark, backend="cpu")
    report = run_parity(tiny_export.checkpoint, tiny_export.bundle, demo_benchmark, backend="cpu",
                        scorer_precision="int8")
    assert base["scorer_precision"] == "float32" and report["scorer_precision"] == "int8"
    assert report["tolerance"] == {"max_abs": None, "max_r1_delta": SCORER_R1_DELTA["int8"],
                                   "identical_metrics": False}
    rows = {r["name"]: r for r in report["rows"]}
    base_rows = {r["name"]: r for r in base["rows"]}
    assert rows["video_sentence"]["max_abs"] == base_rows["video_sentence"]["max_abs"]  # float32 there
    assert rows["patch_word"]["max_abs"] > 10 * max(base_rows["patch_word"]["max_abs"], 1e-6)
    worst = max(abs(d["R1"]) for r in report["rows"] for d in r["metric_deltas"].values())
    assert report["passed"] == (worst <= SCORER_R1_DELTA["int8"])
