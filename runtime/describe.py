"""Captions for a video (video-to-text): rank given captions for indexed videos.

UCoFiA scores a (caption, video) pair the same way in both directions; what differs is the SK
bias. By default a caption's score for a video is the fused score text-to-video search gives the
pair, ``mean_k(level_k + video_bias_k)`` with the index's SK video biases (a constant per video:
it moves every caption of a video alike and so leaves their order alone), so the ranking of one
video is its column of the captions' text-to-video scores. With a video bank (``bank``: an index
of other videos, as the reference's eval_v2t uses its training videos), the paper's video-to-text
bias replaces it: ``mean_k(level_k + text_bias_k)``, where ``text_bias_k`` is each caption's SK bias
over the captions x bank-videos similarities (``runtime.sinkhorn.text_bias``).

On an index of time windows an id may name a window (a row) or a file: a file's score for a
caption is its best window's, and the record says which window that was.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import RuntimeUserError
from runtime.index import GalleryIndex, file_of, is_windowed, span_of
from runtime.scoring import DEFAULT_MEMORY_MB, LEVELS, Scorer, TextFeatures, fuse, score_matrix
from runtime.sinkhorn import text_bias

DEFAULT_TOP_K = 10
Record = dict[str, Any]


@dataclass(frozen=True)
class DescribeRequest:
    """What ``ucofia-run describe`` is asked: videos of an index, a captions file, how many to keep."""

    index: Path
    video_ids: tuple[str, ...]
    captions: Path
    top_k: int = DEFAULT_TOP_K
    bank: Path | None = None  # an index of bank videos: the video-to-text SK caption bias
    bundle: Path | None = None
    backend: str = "auto"
    memory_mb: float = DEFAULT_MEMORY_MB
    threads: int | None = None


def rows_of(gallery: GalleryIndex, video_id: str) -> list[int]:
    """The rows an id names: its row, or on an index of windows every window of that file."""
    row = gallery.row_of(video_id)
    if row is not None:
        return [row]
    entries = gallery.entries
    rows = [r for r, entry in enumerate(entries) if is_windowed(entry) and file_of(entry) == video_id]
    if not rows:
        raise RuntimeUserError(f"no video or file {video_id!r} in the index {gallery.root}: give an id as "
                               f"`ucofia-run search` reports them (video_id, or file_id on an index of windows)")
    return rows


def caption_scores(gallery: GalleryIndex, scorer: Scorer, text: TextFeatures, rows: Sequence[int],
                   memory_mb: float = DEFAULT_MEMORY_MB, bank_sims: dict[str, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(fused [C, R], levels {level: [C, R]}) of every caption against ``rows``; with
    ``bank_sims`` (captions x bank videos, per level) the caption-side SK bias, else the stored
    video biases (when the index has them)."""
    picked = np.asarray(rows, dtype=np.int64)
    levels = score_matrix(scorer, text, gallery.subset(picked), memory_mb)
    if bank_sims is not None:
        n_iters = scorer.config.sk_iterations
        caption_bias = {lv: text_bias(bank_sims[lv], n_iters) for lv in LEVELS}
        fused = fuse({lv: levels[lv] + caption_bias[lv][:, None] for lv in LEVELS}, None)
    else:
        stored = gallery.biases()
        fused = fuse(levels, None if stored is None else {lv: stored[lv][picked] for lv in LEVELS})
    return fused, levels


def rank_captions(captions: Sequence[str], fused: np.ndarray, levels: dict[str, np.ndarray], top_k: int,
                  window_entries: Sequence[dict[str, Any]] | None = None) -> list[Record]:
    """The ``top_k`` captions by score (ties: the earlier caption first). ``fused`` and ``levels``
    are [C, R] over the rows of one video or file; with several rows (the windows of a file) a
    caption's score is its best window's (ties: the earlier window), named in the record."""
    best_row = np.argmax(fused, axis=1)  # first maximum: the earlier window wins a tie
    caption_index = np.arange(len(captions))
    score = fused[caption_index, best_row]
    order = np.lexsort((caption_index, -score))[:top_k]
    records = []
    for rank, c in enumerate(order.tolist(), 1):
        r = int(best_row[c])
        record: Record = {"rank": rank, "caption": captions[c], "score": float(score[c]),
                          "levels": {lv: float(levels[lv][c, r]) for lv in LEVELS}}
        if window_entries is not None:
            entry = window_entries[r]
            start, end = span_of(entry)
            record["window"] = {"video_id": entry["id"], "start": start, "end": end}
        records.append(record)
    return records


def describe_videos(gallery: GalleryIndex, scorer: Scorer, text: TextFeatures, captions: Sequence[str],
                    video_ids: Sequence[str], top_k: int, memory_mb: float = DEFAULT_MEMORY_MB,
                    bank: GalleryIndex | None = None) -> list[Record]:
    """One ``{"video_id", "results": [{rank, caption, score, levels}]}`` per id, in order."""
    if len(text) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(text)} encoded")
    bank_sims = None if bank is None else score_matrix(scorer, text, bank, memory_mb)
    answers = []
    entries = gallery.entries
    for video_id in video_ids:
        rows = rows_of(gallery, video_id)
        fused, levels = caption_scores(gallery, scorer, text, rows, memory_mb, bank_sims)
        windows = [entries[r] for r in rows] if is_windowed(entries[rows[0]]) else None
        answers.append({"video_id": video_id, "results": rank_captions(captions, fused, levels, top_k, windows)})
    return answers


def to_jsonl(answers: Sequence[Record]) -> str:
    """One JSON object per video and line."""
    return "".join(json.dumps(answer, ensure_ascii=False) + "\n" for answer in answers)


def describe_index(request: DescribeRequest, captions: Sequence[str]) -> list[Record]:
    """Open the index (and the bank) with its bundle, encode ``captions`` and rank them for every
    requested video."""
    from runtime.deployment import load_query_models, open_index

    gallery, bundle = open_index(request.index, request.bundle)
    for video_id in request.video_ids:
        rows_of(gallery, video_id)  # unknown ids fail before any model is loaded
    bank = None
    if request.bank is not None:
        bank = GalleryIndex(request.bank)
        bank.check_bundle(bundle)
    models = load_query_models(bundle, request.backend, request.threads)
    text = models.text.encode_reporting(list(captions), "caption")
    return describe_videos(gallery, models.scorer, text, captions, request.video_ids, request.top_k,
                           request.memory_mb, bank)
