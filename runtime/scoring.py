"""Tiled scoring of texts x gallery videos with the bundle's scorer graph.

The scorer graph computes the three level matrices for a tile of texts x videos in one call; the
patch_word level dominates (a [v*P, D] x [D, t*L] product and four softmaxes over a
[v, P, t, L] tensor), so a tile's working memory grows with t * v * L * P. Video tiles are read once
(outer loop) from the index's shard files, text tiles vary inside.

Tile sizes: on CPU, small cache-sized tiles (``CPU_TILE_TEXTS`` texts, about
``CPU_TILE_SCORE_BYTES`` of patch-word scores) run concurrently, one single-threaded graph call
per core (``GraphSession.concurrency``): the tile's intermediates stay in the core's cache and no
op waits for another thread. On GPUs tiles are as large as the memory budget (``--memory-mb``)
allows, and never larger than the engine's optimisation profile (``GraphSession.max_rows``).

Memory: the budget covers the working memory of the ``concurrency`` tiles that run at once
(``PAIR_TENSOR_COPIES`` float32 [t, v, L, P] tensors each) plus the stored features of every video
block alive at once (``IN_FLIGHT_PER_RUN`` queued tiles per run, each may hold its own block, plus
the block being read). The gallery itself is never resident: blocks are read from the index's
shards and dropped. Outside the budget: the query features and the result (top-k, or the full
[T, V] matrices of ``score_matrix``).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.backends import GraphSession
from runtime.backends.base import WORDS
from runtime.backends.text_side import PROJECTED_WORDS
from runtime.bundle.contract import TEXT_ROLES as TEXT_ROLES  # re-exported: roles of the scorer's text inputs
from runtime.bundle.contract import VIDEO_ROLES
from runtime.errors import RuntimeUserError
from runtime.finite import NON_FINITE_FIX
from ucofia.config import LEVELS, UCoFiAConfig

DEFAULT_MEMORY_MB = 1024
# Budgeted float32 copies of the [t, v, L, P] patch_word tensor per tile. onnxruntime's CPU arena
# peaked at 3.3-4.9 copies with the exported scorer (tiny and ViT-B/32 geometry, tiles 16x256 and
# 64x256, ru_maxrss delta); 6 leaves a margin.
PAIR_TENSOR_COPIES = 6
# Texts per tile when the budget allows (GPU tiles): keeps the patch-word product wide.
MAX_TEXT_TILE = 64
# CPU tiles: texts per tile, patch-word score bytes per tile, and a cap on videos per tile. Four
# texts against ~128 videos (3 MiB of float32 scores at L=32, P=48) ran at the best per-pair
# cost measured with ViT-B/32 geometry on a 2-core Xeon (benchmarks/scoring.py); 2-16 texts x
# 64-256 videos were within 5 %. Every call re-normalises its texts and frames, so one text per
# call pays the frame work per text, and very wide tiles spill the cache. Re-measured for issue 28
# (benchmarks/scoring_layouts.py): 2 x 256 and 8 x 64 within noise; 32 texts x 32 videos per call
# 21 % more CPU; one call of 32 x 256 on 2 threads instead of concurrent calls 36 % slower.
CPU_TILE_TEXTS = 4
CPU_TILE_SCORE_BYTES = 3 * 2**20
CPU_TILE_MAX_VIDEOS = 256
# Fewer tiles than concurrent runs (one query): videos are split across the runs, down to this.
CPU_TILE_MIN_VIDEOS = 32
# Tiles submitted per concurrent run before the oldest result is taken (keeps the runs busy while
# results are merged); each queued tile may hold its own block of video features.
IN_FLIGHT_PER_RUN = 2
FLOAT32_BYTES = 4

Progress = Callable[[int], None]


@dataclass
class TextFeatures:
    """Raw text-encoder outputs for T texts: sentence [T, D], words [T, L, D]."""

    sentence: np.ndarray
    words: np.ndarray

    def __len__(self) -> int:
        return int(self.sentence.shape[0])

    def rows(self, start: int, stop: int) -> TextFeatures:
        return TextFeatures(self.sentence[start:stop], self.words[start:stop])

    @staticmethod
    def concat(parts: list[TextFeatures]) -> TextFeatures:
        return TextFeatures(np.concatenate([p.sentence for p in parts]), np.concatenate([p.words for p in parts]))


class VideoSource(Protocol):
    """Anything that serves stored video features by row range (an index, or arrays)."""

    def __len__(self) -> int: ...

    def features(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """role -> array for videos [start, stop) (roles: video, frame_features, patches)."""


@dataclass
class ArrayVideos:
    """Video features held in arrays (role -> [V, ...]); also gathers index rows for re-ranking."""

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.arrays["video"].shape[0])

    def features(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {role: self.arrays[role][start:stop] for role in VIDEO_ROLES}


def gather_rows(videos: VideoSource, rows: np.ndarray) -> dict[str, np.ndarray]:
    """role -> features of the given rows of ``videos``, in that order: the source's own ``gather``
    where it has one (an index reads only those rows), else its row range covering them, indexed."""
    gather = getattr(videos, "gather", None)
    if gather is not None:
        return gather(rows)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return {role: value[:0] for role, value in videos.features(0, 0).items()}
    lo, hi = int(rows.min()), int(rows.max()) + 1
    return {role: value[rows - lo] for role, value in videos.features(lo, hi).items()}


class RowRange:
    """Rows [start, stop) of a VideoSource, as a VideoSource (a slice of the gallery to score)."""

    def __init__(self, videos: VideoSource, start: int, stop: int) -> None:
        self.videos, self.start, self.stop = videos, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def features(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return self.videos.features(self.start + start, self.start + stop)


@dataclass
class TopK:
    """Best ``k`` videos per text: gallery rows [T, k], fused scores [T, k], level scores."""

    indices: np.ndarray
    fused: np.ndarray
    levels: dict[str, np.ndarray]


class Scorer:
    """The scorer graph over tiles of texts x videos."""

    def __init__(self, session: GraphSession, config: UCoFiAConfig) -> None:
        self.session = session
        self.config = config
        self.concurrency = max(1, int(getattr(session, "concurrency", 1)))
        self.cache_tiles = getattr(session, "backend", "") == "cpu"
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        """The threads concurrent tiles run on (started once, reused by every call)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ucofia-score")
        return self._pool

    def prepare(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``arrays`` (role -> array) as contiguous arrays of the graph's input dtypes, cast once
        here instead of in every tile call that reuses them."""
        specs = getattr(self.session, "spec", None)
        out = {}
        for role, array in arrays.items():
            spec = None if specs is None else specs.inputs.get(role)
            out[role] = np.ascontiguousarray(array, dtype=None if spec is None else np.dtype(spec.dtype))
        return out

    def score_tile(self, text: TextFeatures, videos: Mapping[str, np.ndarray], projected: bool = False
                   ) -> dict[str, np.ndarray]:
        """One graph call: level name -> [t, v] float32. ``projected``: ``text.words`` holds what
        ``project_text`` made of them (a split scorer's text side already ran)."""
        words_role = PROJECTED_WORDS if projected else WORDS
        out = self.session.run({"sentence": text.sentence, words_role: text.words,
                                **{role: videos[role] for role in VIDEO_ROLES}})
        return {level: out[level] for level in LEVELS}

    def project_text(self, text: TextFeatures) -> tuple[TextFeatures, bool]:
        """``text`` with its words through the scorer's text side once, for all the tiles to come,
        when the session is split (runtime.backends.text_side); else ``text``. Returns (features,
        whether they were projected)."""
        project = getattr(self.session, "project_words", None)  # test doubles may have none
        projected = None if project is None else project(text.words)
        if projected is None:
            return text, False
        return TextFeatures(text.sentence, projected), True

    def plan_tiles(self, n_text: int, n_video: int, memory_mb: float) -> tuple[int, int]:
        """(texts, videos) per tile so that everything in flight fits in ``memory_mb`` (at least one
        text x one video) and no tile exceeds the session's ``max_rows``."""
        cfg = self.config
        if memory_mb <= 0:
            raise ValueError(f"--memory-mb must be positive, got {memory_mb}")
        runs = self.concurrency
        pair_bytes = PAIR_TENSOR_COPIES * cfg.max_words * cfg.num_pixels * FLOAT32_BYTES
        video_bytes = (1 + cfg.max_frames + cfg.num_pixels) * cfg.embed_dim * FLOAT32_BYTES
        blocks = IN_FLIGHT_PER_RUN * runs + 1  # video blocks alive at once
        budget = memory_mb * 2**20
        n_text, n_video = max(n_text, 1), max(n_video, 1)
        max_rows = getattr(self.session, "max_rows", lambda _role: None)
        t_cap, v_cap = min(n_text, max_rows("sentence") or n_text), min(n_video, max_rows("video") or n_video)

        def fits(t: int, v: int) -> bool:
            return runs * t * v * pair_bytes + blocks * v * video_bytes <= budget

        if self.cache_tiles:
            score_bytes = cfg.max_words * cfg.num_pixels * FLOAT32_BYTES
            t = min(t_cap, CPU_TILE_TEXTS)
            v = min(v_cap, CPU_TILE_MAX_VIDEOS, max(1, CPU_TILE_SCORE_BYTES // (t * score_bytes)))
            if v == v_cap:  # the whole gallery fits in one tile: take more texts per tile
                t = min(t_cap, max(t, CPU_TILE_SCORE_BYTES // (v * score_bytes)))
            text_tiles = -(-n_text // t)
            if text_tiles * -(-n_video // v) < runs:  # e.g. one query: keep every core busy
                v = min(v, max(CPU_TILE_MIN_VIDEOS, -(-n_video // -(-runs // text_tiles))))
            if fits(t, v):
                return t, v
        t = min(t_cap, MAX_TEXT_TILE)
        v = min(v_cap, int(budget // (runs * t * pair_bytes + blocks * video_bytes)))
        if v < 1:  # not even one video with t texts: shrink the text side
            t, v = max(1, min(t, int((budget - blocks * video_bytes) // (runs * pair_bytes)))), 1
        elif v == v_cap:  # the whole gallery (or profile) fits in one tile: spend the rest on texts
            t = min(t_cap, max(t, int((budget - blocks * v * video_bytes) // (runs * v * pair_bytes))))
        return t, v


def _tiles(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def fuse(levels: Mapping[str, np.ndarray], biases: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Mean over the three levels of (score + per-video bias); level arrays [t, v], biases [v]."""
    total = np.zeros_like(levels[LEVELS[0]], dtype=np.float32)
    for level in LEVELS:
        total += levels[level]
        if biases is not None:
            total += biases[level][None, :]
    return total / np.float32(len(LEVELS))


def _run_tiles(scorer: Scorer, text: TextFeatures, videos: VideoSource, t_size: int, v_size: int
               ) -> Iterator[tuple[int, int, int, int, dict[str, np.ndarray]]]:
    """(t0, t1, v0, v1, level tiles) for every tile, video blocks outer, in order.

    With ``scorer.concurrency`` > 1 the tiles run on that many threads (graph calls release the
    GIL); at most ``IN_FLIGHT_PER_RUN`` times as many tiles are in flight, as the plan assumes.
    """
    n_text, n_video = len(text), len(videos)
    cast = scorer.prepare({"sentence": text.sentence, "words": text.words})
    text, projected = scorer.project_text(TextFeatures(cast["sentence"], cast["words"]))

    def tiles() -> Iterator[tuple[int, int, int, int, dict[str, np.ndarray]]]:
        for v0, v1 in _tiles(n_video, v_size):
            block = scorer.prepare(videos.features(v0, v1))
            for t0, t1 in _tiles(n_text, t_size):
                yield t0, t1, v0, v1, block

    if scorer.concurrency == 1:
        for t0, t1, v0, v1, block in tiles():
            yield t0, t1, v0, v1, _finite(scorer.score_tile(text.rows(t0, t1), block, projected), t0, v0)
        return
    pool = scorer.pool()
    window: deque[tuple[int, int, int, int, Future]] = deque()
    try:
        for t0, t1, v0, v1, block in tiles():
            window.append((t0, t1, v0, v1, pool.submit(scorer.score_tile, text.rows(t0, t1), block, projected)))
            if len(window) >= IN_FLIGHT_PER_RUN * scorer.concurrency:
                t0_, t1_, v0_, v1_, fut = window.popleft()
                yield t0_, t1_, v0_, v1_, _finite(fut.result(), t0_, v0_)
        while window:
            t0_, t1_, v0_, v1_, fut = window.popleft()
            yield t0_, t1_, v0_, v1_, _finite(fut.result(), t0_, v0_)
    finally:  # an error or an abandoned generator: let no tile run on unobserved
        for *_, fut in window:
            fut.cancel()


def _finite(levels: dict[str, np.ndarray], t0: int, v0: int) -> dict[str, np.ndarray]:
    """``levels`` unchanged, or RuntimeUserError naming the first text and gallery row whose score is
    NaN/inf (it would otherwise be ranked silently)."""
    for level in LEVELS:
        bad = np.argwhere(~np.isfinite(levels[level]))
        if len(bad):
            t, v = (int(x) for x in bad[0])
            raise RuntimeUserError(f"the scorer produced a non-finite {level} similarity (NaN/inf) for text "
                                   f"{t0 + t + 1} and gallery row {v0 + v} ({len(bad)} in that tile); "
                                   f"{NON_FINITE_FIX}")
    return levels


def score_matrix(scorer: Scorer, text: TextFeatures, videos: VideoSource, memory_mb: float = DEFAULT_MEMORY_MB,
                 out: Mapping[str, np.ndarray] | None = None, progress: Progress | None = None
                 ) -> dict[str, np.ndarray]:
    """Full level matrices [T, V] (written into ``out`` when given, e.g. memory maps)."""
    n_text, n_video = len(text), len(videos)
    if out is None:
        out = {level: np.empty((n_text, n_video), dtype=np.float32) for level in LEVELS}
    t_size, v_size = scorer.plan_tiles(n_text, n_video, memory_mb)
    for t0, t1, v0, v1, tile in _run_tiles(scorer, text, videos, t_size, v_size):
        for level in LEVELS:
            out[level][t0:t1, v0:v1] = tile[level]
        if progress:
            progress((t1 - t0) * (v1 - v0))
    return dict(out)


def _merge(best: TopK, rows: slice, fused: np.ndarray, levels: dict[str, np.ndarray], v0: int, k: int) -> None:
    """Fold a tile's scores into the running top-k of ``rows`` (ties: lower gallery row first)."""
    t, v = fused.shape
    cand_scores = np.concatenate([best.fused[rows], fused], axis=1)
    cand_idx = np.concatenate([best.indices[rows], np.broadcast_to(np.arange(v0, v0 + v), (t, v))], axis=1)
    cand_levels = {lv: np.concatenate([best.levels[lv][rows], levels[lv]], axis=1) for lv in LEVELS}
    if cand_scores.shape[1] > 4 * k:  # cheap pre-selection before the exact ordered sort
        keep = np.argpartition(-cand_scores, 4 * k - 1, axis=1)[:, : 4 * k]
        cand_scores, cand_idx = np.take_along_axis(cand_scores, keep, 1), np.take_along_axis(cand_idx, keep, 1)
        cand_levels = {lv: np.take_along_axis(a, keep, 1) for lv, a in cand_levels.items()}
    # unfilled slots carry index -1 and score -inf; real rows sort before them
    order = np.lexsort((np.where(cand_idx < 0, np.iinfo(np.int64).max, cand_idx), -cand_scores), axis=1)[:, :k]
    best.fused[rows] = np.take_along_axis(cand_scores, order, 1)
    best.indices[rows] = np.take_along_axis(cand_idx, order, 1)
    for lv in LEVELS:
        best.levels[lv][rows] = np.take_along_axis(cand_levels[lv], order, 1)


def score_topk(scorer: Scorer, text: TextFeatures, videos: VideoSource, k: int,
               biases: Mapping[str, np.ndarray] | None = None, memory_mb: float = DEFAULT_MEMORY_MB,
               progress: Progress | None = None) -> TopK:
    """The ``k`` best videos per text by fused score, with each level's score (memory: O(T*k))."""
    n_text, n_video = len(text), len(videos)
    k = min(k, n_video)
    if k < 1:
        raise ValueError("top-k needs k >= 1 and a non-empty gallery")
    best = TopK(indices=np.full((n_text, k), -1, dtype=np.int64),
                fused=np.full((n_text, k), -np.inf, dtype=np.float32),
                levels={lv: np.full((n_text, k), np.nan, dtype=np.float32) for lv in LEVELS})
    t_size, v_size = scorer.plan_tiles(n_text, n_video, memory_mb)
    for t0, t1, v0, v1, levels in _run_tiles(scorer, text, videos, t_size, v_size):
        tile_bias = None if biases is None else {lv: biases[lv][v0:v1] for lv in LEVELS}
        _merge(best, slice(t0, t1), fuse(levels, tile_bias), levels, v0, k)
        if progress:
            progress((t1 - t0) * (v1 - v0))
    return best
