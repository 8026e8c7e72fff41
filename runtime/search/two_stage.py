"""Two-stage search: a FAISS shortlist by the video_sentence level, then the fused re-rank.

The the video_sentence level is a bilinear form of the normalised sentence feature and the
stored video feature, ``vs(s, v) = s_hat K v`` with ``K = e^ls G G1^T`` [D, D]. ``K`` is read out
of the scorer graph by probing it with unit vectors (no weights are needed besides the graph),
checked against the graph on real rows, and cached in the index. A FAISS inner-product index over
rows ``[v, bias_vs(v)]`` queried with ``[s_hat K, 1]`` returns each query's shortlist by
``video_sentence + its SK bias`` exactly; the fused three-level score then re-ranks the shortlist.
With a shortlist as large as the gallery and the exact (flat) stage 1 the result equals exhaustive
search. The stage-1 index kind (flat, IVF, HNSW) and its parameters: ``runtime.search.stage1``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np

from runtime.errors import GalleryIndexError
from runtime.index import STAGE1_PREFIX, GalleryIndex
from runtime.scoring import DEFAULT_MEMORY_MB, LEVELS, ArrayVideos, Scorer, TextFeatures, TopK, score_matrix, score_topk
from runtime.search import stage1
from runtime.search.stage1 import Stage1Params
from ucofia.io_utils import atomic_path, atomic_write_text

KERNEL_FILE = "level1_kernel.npy"
FAISS_CHUNK = 65536  # rows read per step while building the stage-1 index
# Relative tolerance of the bilinear read-out of the video_sentence level against the graph.
KERNEL_RTOL = 1e-3
KERNEL_CHECK_ROWS = 16


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def probe_level1_kernel(scorer: Scorer, memory_mb: float = DEFAULT_MEMORY_MB) -> np.ndarray:
    """``K`` [D, D] with video_sentence(s, v) = normalise(s) K v, read out of the scorer graph."""
    cfg = scorer.config
    d = cfg.embed_dim
    eye = np.eye(d, dtype=np.float32)
    # the other levels' inputs only need to keep their (unused) scores finite: all ones
    text = TextFeatures(eye, np.ones((d, cfg.max_words, d), np.float32))
    videos = ArrayVideos({"video": eye, "frame_features": np.ones((d, cfg.max_frames, d), np.float32),
                          "patches": np.ones((d, cfg.num_pixels, d), np.float32)})
    return score_matrix(scorer, text, videos, memory_mb)["video_sentence"].astype(np.float32)


def check_level1_kernel(kernel: np.ndarray, scorer: Scorer, index: GalleryIndex, queries: TextFeatures) -> None:
    """Raise when ``s_hat K v`` does not reproduce the graph's video_sentence level on real rows."""
    n = min(len(index), KERNEL_CHECK_ROWS)
    rows = index.features(0, n)
    q = queries.rows(0, min(len(queries), KERNEL_CHECK_ROWS))
    want = scorer.score_tile(q, rows)["video_sentence"]
    got = _normalise(q.sentence) @ kernel @ rows["video"].T
    scale = max(float(np.abs(want).max()), 1e-6)
    if not np.allclose(got, want, rtol=0, atol=KERNEL_RTOL * scale):
        raise GalleryIndexError(
            "the scorer's video_sentence level is not the bilinear form s_hat K v this runtime expects "
            f"(max deviation {float(np.abs(got - want).max()):.3g}); two-stage search is unavailable for this "
            "bundle, search without --two-stage")


def cached_kernel(scorer: Scorer, index: GalleryIndex, memory_mb: float) -> np.ndarray:
    """The level-1 kernel of ``index``'s bundle: read from the index's cache, else probed and cached."""
    path = index.root / KERNEL_FILE
    meta_path = index.root / (KERNEL_FILE + ".json")
    if (path.is_file() and meta_path.is_file()
            and json.loads(meta_path.read_text()).get("fingerprint") == index.fingerprint):
        return np.load(path)
    kernel = probe_level1_kernel(scorer, memory_mb)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, kernel)
    atomic_write_text(meta_path, json.dumps({"fingerprint": index.fingerprint}))
    return kernel


def _faiss_rows(index: GalleryIndex, bias: np.ndarray | None, chunk: int = FAISS_CHUNK) -> Iterator[np.ndarray]:
    for start in range(0, len(index), chunk):
        stop = min(start + chunk, len(index))
        v = index.features(start, stop, roles=("video",))["video"]
        extra = np.zeros((stop - start, 1), np.float32) if bias is None else bias[start:stop, None]
        yield np.ascontiguousarray(np.concatenate([v, extra], axis=1), dtype=np.float32)


def faiss_index(index: GalleryIndex, params: Stage1Params | None = None):
    """The stage-1 FAISS index over [v, bias_vs] rows (``params``: default ``auto`` for the gallery
    size), cached in the index directory as ``stage1-HASH.faiss`` with its kind and parameters in
    ``stage1-HASH.json``; built when missing. Returns (faiss index, params)."""
    params = params or stage1.choose("auto", len(index))
    biases = index.biases()
    bias = None if biases is None else biases["video_sentence"]
    key = hashlib.sha256((index.ids_digest + index.fingerprint + stage1.describe(params) +
                          ("" if bias is None else hashlib.sha256(bias.tobytes()).hexdigest())).encode()).hexdigest()
    path = index.root / f"{STAGE1_PREFIX}{key[:16]}.faiss"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        return stage1.load(str(path), params), params
    built = stage1.build(params, index.config.embed_dim + 1, lambda: _faiss_rows(index, bias), len(index))
    with atomic_path(path) as tmp:
        stage1.save(built, str(tmp))
    atomic_write_text(meta_path, json.dumps({"key": key, "rows": len(index), "params": params.to_dict()}))
    return built, params


class TwoStage:
    """Two-stage search over one opened index, with everything a query reuses loaded once: the
    level-1 kernel (checked against the graph on real rows), the stage-1 FAISS index and the
    biases. A server keeps one; :func:`two_stage` builds one per call."""

    def __init__(self, scorer: Scorer, index: GalleryIndex, memory_mb: float = DEFAULT_MEMORY_MB,
                 params: Stage1Params | None = None, check_queries: TextFeatures | None = None) -> None:
        self.scorer, self.index, self.memory_mb = scorer, index, memory_mb
        self.kernel = cached_kernel(scorer, index, memory_mb)
        if check_queries is not None:
            check_level1_kernel(self.kernel, scorer, index, check_queries)
        self.stage1_index, self.params = faiss_index(index, params)
        self.biases = index.biases()

    def search(self, queries: TextFeatures, k: int, shortlist: int, progress=None,
               rows: np.ndarray | None = None) -> TopK:
        """Top ``k`` per query: FAISS shortlist of ``shortlist`` rows by video_sentence (+ bias), then
        the fused re-rank of the shortlisted rows only (read from the shards tile by tile).
        ``rows`` (ascending gallery rows, e.g. those a filter matches): FAISS selects among them
        only (``stage1.search_parameters``). An approximate stage 1 may find fewer than ``k`` rows
        for a query (IVF probing cells that hold fewer): its row of the result ends in -1 (fused
        score -inf, levels NaN) after those it found."""
        if shortlist < k:
            raise ValueError(f"--shortlist ({shortlist}) must be at least --top-k ({k})")
        _, cand = self.shortlist(queries, shortlist, rows)
        available = len(self.index) if rows is None else len(rows)
        return self.rerank(queries, list(cand), min(k, available), progress)

    def shortlist(self, queries: TextFeatures, shortlist: int, rows: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 alone: per query the ``shortlist`` best rows by video_sentence + bias, best first,
        as (stage-1 scores [Q, n] float32, gallery rows [Q, n] int64; -1 / -inf where FAISS found
        fewer); ``rows``: select among these ascending gallery rows only."""
        available = len(self.index) if rows is None else len(rows)
        shortlist = min(shortlist, available)
        q = _normalise(queries.sentence.astype(np.float64)) @ self.kernel
        q = np.concatenate([q, np.ones((len(queries), 1))], axis=1).astype(np.float32)
        if rows is None:
            stage1.configure(self.stage1_index, self.params, shortlist)
            scores, cand = self.stage1_index.search(q, shortlist)
        else:
            mask = np.zeros(len(self.index), bool)
            mask[rows] = True
            scores, cand = self.stage1_index.search(q, shortlist, params=stage1.search_parameters(self.params,
                                                                                                   shortlist, mask))
        scores = np.where(cand >= 0, scores, -np.inf).astype(np.float32)
        return scores, cand.astype(np.int64)

    def rerank(self, queries: TextFeatures, candidates: list[np.ndarray], k: int, progress=None) -> TopK:
        """The fused re-rank: per query the ``k`` best of its ``candidates`` (gallery rows; -1 is
        skipped) by fused score, ties by lower row; a query with fewer candidates ends in -1."""
        biases = self.biases
        out = TopK(indices=np.full((len(queries), k), -1, np.int64),
                   fused=np.full((len(queries), k), -np.inf, np.float32),
                   levels={lv: np.full((len(queries), k), np.nan, np.float32) for lv in LEVELS})
        for i in range(len(queries)):
            given = np.asarray(candidates[i], dtype=np.int64)
            rows = np.sort(given[given >= 0])  # ascending rows keep the exhaustive tie order
            if len(rows) and k:
                sub_bias = None if biases is None else {lv: biases[lv][rows] for lv in LEVELS}
                # the shortlist's features are read tile by tile (index.subset), within the memory budget
                best = score_topk(self.scorer, queries.rows(i, i + 1), self.index.subset(rows), min(k, len(rows)),
                                  sub_bias, self.memory_mb)
                found = best.indices.shape[1]
                out.indices[i, :found] = rows[best.indices[0]]
                out.fused[i, :found] = best.fused[0]
                for lv in LEVELS:
                    out.levels[lv][i, :found] = best.levels[lv][0]
            if progress:
                progress(1)
        return out


def two_stage(scorer: Scorer, index: GalleryIndex, queries: TextFeatures, k: int, shortlist: int,
              memory_mb: float = DEFAULT_MEMORY_MB, progress=None, params: Stage1Params | None = None) -> TopK:
    """FAISS shortlist of ``shortlist`` videos per query by video_sentence (+ bias), then fused
    re-rank of the shortlisted rows (``params``: the stage-1 index kind, default ``auto``)."""
    if shortlist < k:
        raise ValueError(f"--shortlist ({shortlist}) must be at least --top-k ({k})")
    return TwoStage(scorer, index, memory_mb, params, check_queries=queries).search(queries, k, shortlist, progress)
