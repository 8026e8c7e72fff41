"""Compare two sets of retrieval similarities (e.g. PyTorch vs an exported bundle). numpy only.

The comparison covers each level, the fused matrix without SK and the fused matrix with SK
biases: max abs / rel difference, top-1 agreement and top-10 overlap per query, and the metric
deltas in both directions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation.metrics import retrieval_metrics
from ucofia.config import LEVELS

METRIC_KEYS: tuple[str, ...] = ("R1", "R5", "R10", "MdR", "MnR")
TOP_OVERLAP_K = 10
# R@1 points a parity run may differ by when the index stores features as float16 / int8.
STORE_R1_DELTA = {"float16": 0.0, "int8": 2.0}
# R@1 points a parity run may differ by with the opt-in int8 scorer (``--scorer-precision int8``).
SCORER_R1_DELTA = {"int8": 2.0}


@dataclass(frozen=True)
class Tolerance:
    """When a comparison fails. ``max_abs`` bounds every similarity difference (None: unchecked);
    ``max_r1_delta`` bounds the R@1 difference in points; ``identical_metrics`` demands equal metrics."""

    max_abs: float | None = 2e-4
    max_r1_delta: float = 0.0
    identical_metrics: bool = True

    @classmethod
    def for_dtype(cls, dtype: str) -> Tolerance:
        """Defaults: fp32 bundles must match within 2e-4 with identical metrics; fp16 within 0.2 R@1 points."""
        if dtype in ("float16", "fp16"):
            return cls(max_abs=None, max_r1_delta=0.2, identical_metrics=False)
        return cls()

    @classmethod
    def for_manifest(cls, manifest: Mapping[str, Any], store: str = "float32",
                     scorer_precision: str = "float32") -> Tolerance:
        """Defaults for a bundle: ``for_dtype``, or for int8 encoders (lossy) R@1 within the
        manifest's ``int8.parity_r1_delta`` points and no similarity bound; an index that stores
        features in float16 or int8 (``ucofia-run index --store``) rounds them, so the similarity
        bound goes and R@1 must stay within ``STORE_R1_DELTA`` points (float16: identical); so does
        the int8 scorer (``SCORER_R1_DELTA``)."""
        if scorer_precision != "float32":
            base = cls.for_manifest(manifest, store)
            delta = SCORER_R1_DELTA[scorer_precision]
            return cls(max_abs=None, identical_metrics=False,
                       max_r1_delta=delta if base.identical_metrics else max(base.max_r1_delta, delta))
        int8 = manifest.get("int8")
        if int8:
            base = cls(max_abs=None, max_r1_delta=float(int8["parity_r1_delta"]), identical_metrics=False)
        else:
            base = cls.for_dtype(str(manifest.get("dtype", "float32")))
        if store == "float32":
            return base
        delta = STORE_R1_DELTA[store] if base.identical_metrics else max(base.max_r1_delta, STORE_R1_DELTA[store])
        return cls(max_abs=None, max_r1_delta=delta, identical_metrics=False)


def fuse_numpy(sims: Mapping[str, np.ndarray], biases: Mapping[str, np.ndarray] | None = None,
               axis: int = 0) -> np.ndarray:
    """Mean of the levels; each level's bias is broadcast along ``axis`` (0: per-video bias)."""
    total = np.zeros_like(np.asarray(sims[LEVELS[0]], dtype=np.float64))
    for level in LEVELS:
        value = np.asarray(sims[level], dtype=np.float64)
        if biases is not None:
            b = np.asarray(biases[level], dtype=np.float64)
            value = value + (b[None, :] if axis == 0 else b[:, None])
        total += value
    return (total / len(LEVELS)).astype(np.float32)


def _top_agreement(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float]:
    """Fraction of rows with the same top-1, and the mean overlap of the top-k sets."""
    k = min(k, a.shape[1])
    top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    ta = np.argsort(-a, axis=1, kind="stable")[:, :k]
    tb = np.argsort(-b, axis=1, kind="stable")[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)])
    return top1, float(overlap)


def _metrics_both(sim_t2v: np.ndarray, sim_v2t: np.ndarray, video_of_text: Sequence[int] | None
                  ) -> dict[str, dict[str, float]]:
    return {
        "t2v": retrieval_metrics(sim_t2v, video_of_text, direction="t2v"),
        "v2t": retrieval_metrics(sim_v2t, video_of_text, direction="v2t"),
    }


def _snap(ref: np.ndarray, cand: np.ndarray, tie_tol: float | None) -> np.ndarray:
    """The candidate with every entry within ``tie_tol`` of the reference replaced by it."""
    if tie_tol is None:
        return cand
    return np.where(np.abs(cand - ref) <= tie_tol, ref, cand)


def compare_matrix(name: str, ref: np.ndarray, cand: np.ndarray, ref_v2t: np.ndarray, cand_v2t: np.ndarray,
                   video_of_text: Sequence[int] | None, tie_tol: float | None = None) -> dict:
    """Differences, top-k agreement and metric deltas for one [T,V] matrix.

    ``metric_deltas`` compare the raw matrices. Exact ties (the reference metrics count every tied
    position) can be broken by rounding-level differences; ``metric_deltas_beyond_ties`` therefore
    also compares the metrics after treating differences within ``tie_tol`` as equal, so only
    rank changes that the similarity tolerance cannot explain remain.
    """
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"{name}: shapes differ, reference {ref.shape} vs candidate {cand.shape}")
    if not np.isfinite(cand).all():
        raise ValueError(f"{name}: candidate similarities contain NaN or inf")
    diff = np.abs(ref - cand)
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    top1, overlap = _top_agreement(ref, cand, TOP_OVERLAP_K)
    ref_v2t = np.asarray(ref_v2t, np.float64)
    cand_v2t = np.asarray(cand_v2t, np.float64)
    m_ref = _metrics_both(ref, ref_v2t, video_of_text)
    m_cand = _metrics_both(cand, cand_v2t, video_of_text)
    deltas = {d: {k: m_cand[d][k] - m_ref[d][k] for k in METRIC_KEYS} for d in m_ref}
    m_snap = _metrics_both(_snap(ref, cand, tie_tol), _snap(ref_v2t, cand_v2t, tie_tol), video_of_text)
    beyond = {d: {k: m_snap[d][k] - m_ref[d][k] for k in METRIC_KEYS} for d in m_ref}
    return {
        "name": name, "max_abs": float(diff.max()), "max_rel": float(rel.max()),
        "top1_agreement": top1, f"top{TOP_OVERLAP_K}_overlap": overlap,
        "metrics_reference": m_ref, "metrics_candidate": m_cand, "metric_deltas": deltas,
        "metric_deltas_beyond_ties": beyond,
        "tie_flips": any(abs(v) > 0 for dd in deltas.values() for v in dd.values())
        and not any(abs(v) > 0 for dd in beyond.values() for v in dd.values()),
    }


def compare_retrieval(ref_sims: Mapping[str, np.ndarray], cand_sims: Mapping[str, np.ndarray],
                      ref_video_bias: Mapping[str, np.ndarray] | None = None,
                      cand_video_bias: Mapping[str, np.ndarray] | None = None,
                      ref_text_bias: Mapping[str, np.ndarray] | None = None,
                      cand_text_bias: Mapping[str, np.ndarray] | None = None,
                      video_of_text: Sequence[int] | None = None,
                      tolerance: Tolerance = Tolerance()) -> dict:
    """Full parity report: per level, fused, and fused + SK; ``passed`` says if tolerances hold."""
    rows = []
    tie = tolerance.max_abs
    for level in LEVELS:
        rows.append(compare_matrix(level, ref_sims[level], cand_sims[level], ref_sims[level],
                                   cand_sims[level], video_of_text, tie))
    rows.append(compare_matrix("fused", fuse_numpy(ref_sims), fuse_numpy(cand_sims), fuse_numpy(ref_sims),
                               fuse_numpy(cand_sims), video_of_text, tie))
    if ref_video_bias is not None and cand_video_bias is not None:
        ref_v2t = fuse_numpy(ref_sims, ref_text_bias, axis=1) if ref_text_bias is not None else fuse_numpy(ref_sims)
        cand_v2t = fuse_numpy(cand_sims, cand_text_bias, axis=1) if cand_text_bias is not None \
            else fuse_numpy(cand_sims)
        rows.append(compare_matrix("fused+SK", fuse_numpy(ref_sims, ref_video_bias),
                                   fuse_numpy(cand_sims, cand_video_bias), ref_v2t, cand_v2t, video_of_text, tie))
        for level in LEVELS:
            diff = np.abs(np.asarray(ref_video_bias[level], np.float64)
                          - np.asarray(cand_video_bias[level], np.float64))
            rows[LEVELS.index(level)]["video_bias_max_abs"] = float(diff.max())
    failures = []
    for row in rows:
        if tolerance.max_abs is not None and row["max_abs"] > tolerance.max_abs:
            failures.append(f"{row['name']}: max abs difference {row['max_abs']:.3g} > {tolerance.max_abs:g}")
        if tolerance.max_abs is not None and row.get("video_bias_max_abs", 0.0) > tolerance.max_abs:
            failures.append(f"{row['name']}: SK bias difference {row['video_bias_max_abs']:.3g} "
                            f"> {tolerance.max_abs:g}")
        for direction, deltas in row["metric_deltas"].items():
            beyond = row["metric_deltas_beyond_ties"][direction]
            if tolerance.identical_metrics and any(abs(v) > 0 for v in beyond.values()):
                failures.append(f"{row['name']} {direction}: metrics differ beyond tie flips {beyond}")
            elif abs(deltas["R1"]) > tolerance.max_r1_delta and not tolerance.identical_metrics:
                failures.append(f"{row['name']} {direction}: R@1 differs by {deltas['R1']:.2f} points")
    return {"rows": rows, "tolerance": asdict(tolerance), "passed": not failures, "failures": failures}


def format_report(report: dict) -> str:
    """A plain-text table of a parity report."""
    header = f"{'matrix':<16}{'max abs':>11}{'max rel':>11}{'top1 agr':>10}{'top10 ovl':>11}" \
             f"{'dR@1 t2v':>10}{'dR@1 v2t':>10}{'dMnR t2v':>10}"
    lines = [header, "-" * len(header)]
    for row in report["rows"]:
        d = row["metric_deltas"]
        lines.append(
            f"{row['name']:<16}{row['max_abs']:>11.3g}{row['max_rel']:>11.3g}{row['top1_agreement']:>10.3f}"
            f"{row[f'top{TOP_OVERLAP_K}_overlap']:>11.3f}{d['t2v']['R1']:>10.2f}{d['v2t']['R1']:>10.2f}"
            f"{d['t2v']['MnR']:>10.2f}")
    flips = [r["name"] for r in report["rows"] if r.get("tie_flips")]
    if flips:
        lines.append("note: exact ties broken by rounding (within the similarity tolerance) change the "
                     "tie-counting metrics of: " + ", ".join(flips))
    lines.append("PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"]))
    return "\n".join(lines)
