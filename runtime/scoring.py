"""Tiled scoring of texts x gallery videos with the bundle's scorer graph.

The scorer graph computes the three level matrices for a tile of texts x videos in one call; the
patch_word level dominates (an [t*L, D] x [D, v*P] product and four softmaxes over a
[t, v, L, P] tensor), so a tile's working memory grows with t * v * L * P. Tiles are sized from a
memory budget (``--memory-mb``): peak memory is the budget plus the features of one video tile and
all query features, independent of the gallery size. Video tiles are read once (outer loop) from
the stored features (memory-mapped), text tiles vary inside.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import numpy as np

from ucofia.config import UCoFiAConfig

from runtime.backends import GraphSession

LEVELS: tuple[str, str, str] = ("video_sentence", "frame_sentence", "patch_word")
TEXT_ROLES = ("sentence", "words")
VIDEO_ROLES = ("video", "frame_features", "patches")
DEFAULT_MEMORY_MB = 1024
# Budgeted float32 copies of the [t, v, L, P] patch_word tensor per tile. onnxruntime's CPU arena
# peaked at 3.3-4.9 copies with the exported scorer (tiny and ViT-B/32 geometry, tiles 16x256 and
# 64x256, ru_maxrss delta); 6 leaves a margin.
PAIR_TENSOR_COPIES = 6
# Texts per tile when the budget allows: keeps the [t*L, D] x [D, v*P] product wide in v.
MAX_TEXT_TILE = 64

Progress = Callable[[int], None]


@dataclass
class TextFeatures:
    """Raw text-encoder outputs for T texts: sentence [T, D], words [T, L, D]."""

    sentence: np.ndarray
    words: np.ndarray

    def __len__(self) -> int:
        return int(self.sentence.shape[0])

    def rows(self, start: int, stop: int) -> "TextFeatures":
        return TextFeatures(self.sentence[start:stop], self.words[start:stop])

    @staticmethod
    def concat(parts: list["TextFeatures"]) -> "TextFeatures":
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

    def score_tile(self, text: TextFeatures, videos: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph call: level name -> [t, v] float32."""
        out = self.session.run({"sentence": text.sentence, "words": text.words,
                                **{role: videos[role] for role in VIDEO_ROLES}})
        return {level: out[level] for level in LEVELS}

    def plan_tiles(self, n_text: int, n_video: int, memory_mb: float) -> tuple[int, int]:
        """(texts, videos) per tile so that one tile's scorer tensors fit in ``memory_mb``."""
        cfg = self.config
        if memory_mb <= 0:
            raise ValueError(f"--memory-mb must be positive, got {memory_mb}")
        pair_bytes = PAIR_TENSOR_COPIES * cfg.max_words * cfg.num_pixels * 4
        video_bytes = (1 + cfg.max_frames + cfg.num_pixels) * cfg.embed_dim * 4
        budget = memory_mb * 2**20
        n_text, n_video = max(n_text, 1), max(n_video, 1)
        t = min(n_text, MAX_TEXT_TILE)
        v = min(n_video, int(budget // (t * pair_bytes + video_bytes)))
        if v < 1:  # not even one text x one video tile of t texts: shrink the text side
            t, v = max(1, min(t, int(budget // (pair_bytes + video_bytes)))), 1
        elif v == n_video:  # the whole gallery fits in one tile: spend the rest on texts
            t = min(n_text, max(t, int((budget - v * video_bytes) // (v * pair_bytes))))
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


def score_matrix(scorer: Scorer, text: TextFeatures, videos: VideoSource, memory_mb: float = DEFAULT_MEMORY_MB,
                 out: Mapping[str, np.ndarray] | None = None, progress: Progress | None = None
                 ) -> dict[str, np.ndarray]:
    """Full level matrices [T, V] (written into ``out`` when given, e.g. memory maps)."""
    n_text, n_video = len(text), len(videos)
    if out is None:
        out = {level: np.empty((n_text, n_video), dtype=np.float32) for level in LEVELS}
    t_size, v_size = scorer.plan_tiles(n_text, n_video, memory_mb)
    for v0, v1 in _tiles(n_video, v_size):
        block = videos.features(v0, v1)
        for t0, t1 in _tiles(n_text, t_size):
            tile = scorer.score_tile(text.rows(t0, t1), block)
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
    for v0, v1 in _tiles(n_video, v_size):
        block = videos.features(v0, v1)
        tile_bias = None if biases is None else {lv: biases[lv][v0:v1] for lv in LEVELS}
        for t0, t1 in _tiles(n_text, t_size):
            levels = scorer.score_tile(text.rows(t0, t1), block)
            _merge(best, slice(t0, t1), fuse(levels, tile_bias), levels, v0, k)
            if progress:
                progress((t1 - t0) * (v1 - v0))
    return best

