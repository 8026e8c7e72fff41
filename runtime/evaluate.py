"""``ucofia-run evaluate``: text-to-video and video-to-text retrieval metrics on an index.

As the reference evaluation does:
* t2v: ``mean_k(sims_k + video_bias_k)`` with the index's SK video biases (caption bank);
* v2t: ``mean_k(sims_k + text_bias_k)`` where ``text_bias_k`` is the SK bias of each annotation
  caption over a bank of videos (eval_v2t: the [captions, bank videos] matrix, transposed, column
  bias). The reference's bank is the training videos; here it is ``--video-bank INDEX`` when given,
  else the evaluated videos themselves.
Metrics come from ``evaluation.retrieval_metrics`` (reference conventions: one caption per video
-> ``compute_metrics`` with ties counted; several -> the multi-caption protocol).

Windowed indexes (``ucofia-run index --window``): annotation video ids name files; every window
is scored like a video (SK biases per window, as stored), and a file's score for a caption is
its best window's, in both directions. When the annotations give each caption's true span
(``start`` / ``end`` columns, seconds), moment retrieval is reported too
(``evaluation.moments``: R@1/R@5 where a hit is a window of the right file with temporal IoU >=
0.5 / 0.3); on a whole-file index each file is the moment ``[0, duration]``, the baseline.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metrics import retrieval_metrics
from evaluation.moments import moment_recall
from runtime.backends.precision import DEFAULT_SCORER_PRECISION
from runtime.backends.selection import split_pays_off
from runtime.deployment import load_query_models, open_index
from runtime.errors import RuntimeUserError
from runtime.index import GalleryIndex, file_of, is_windowed, span_of
from runtime.scoring import DEFAULT_MEMORY_MB, LEVELS, Scorer, TextFeatures, fuse, score_matrix
from runtime.sinkhorn import text_bias
from runtime.windows import setting_of
from ucofia.progress import progress_bar

DATASETS = ("msrvtt", "generic")
VIDEO_COLUMNS = ("video_id", "video", "vid")
CAPTION_COLUMNS = ("sentence", "caption", "text")
# Optional true span of each caption (seconds), for moment retrieval.
SPAN_COLUMNS = (("start", "end"), ("start_time", "end_time"))

logger = logging.getLogger(__name__)


@dataclass
class Annotations:
    """One row per caption: its video id and text (and its true span in seconds, when given)."""

    video_ids: list[str]
    captions: list[str]
    spans: list[tuple[float, float]] | None = None


def load_annotations(path: Path, dataset: str) -> Annotations:
    """Captions and their video ids.

    msrvtt: the official test CSV (``key,vid_key,video_id,sentence``, e.g. MSRVTT_JSFUSION_test.csv).
    generic: a CSV with a video id column (video_id/video/vid) and a caption column
    (sentence/caption/text), or a JSON / JSONL list of such objects.
    """
    if dataset not in DATASETS:
        raise RuntimeUserError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if not path.is_file():
        raise RuntimeUserError(f"annotations file not found: {path}")
    if path.suffix.lower() in (".json", ".jsonl"):
        text = path.read_text()
        items = (json.loads(text) if path.suffix.lower() == ".json"
                 else [json.loads(l) for l in text.splitlines() if l.strip()])
        if isinstance(items, dict):
            items = items.get("sentences", [])
    else:
        with path.open(newline="") as fh:
            items = list(csv.DictReader(fh))
    if not items:
        raise RuntimeUserError(f"{path} holds no annotations")
    keys = set(items[0]) if isinstance(items[0], dict) else set()
    vcol = next((c for c in VIDEO_COLUMNS if c in keys), None)
    ccol = next((c for c in CAPTION_COLUMNS if c in keys), None)
    if vcol is None or ccol is None:
        raise RuntimeUserError(f"{path}: need a video id column ({'/'.join(VIDEO_COLUMNS)}) and a caption column "
                               f"({'/'.join(CAPTION_COLUMNS)}); found {sorted(keys)}")
    span_cols = next((pair for pair in SPAN_COLUMNS if set(pair) <= keys), None)
    ann = Annotations([], [], [] if span_cols else None)
    for number, item in enumerate(items, 1):
        vid, caption = str(item.get(vcol) or "").strip(), item.get(ccol)
        if not vid:
            raise RuntimeUserError(f"{path} row {number}: empty {vcol}")
        if not isinstance(caption, str) or not caption.strip():
            raise RuntimeUserError(f"{path} row {number}: empty {ccol} for video {vid}")
        ann.video_ids.append(vid)
        ann.captions.append(caption)
        if span_cols:
            ann.spans.append(_span(item, span_cols, path, number))
    return ann


def _span(item: dict, columns: tuple[str, str], path: Path, number: int) -> tuple[float, float]:
    try:
        start, end = (float(item[c]) for c in columns)
    except (TypeError, ValueError):
        raise RuntimeUserError(f"{path} row {number}: {columns[0]}/{columns[1]} must be numbers of seconds, got "
                               f"{item.get(columns[0])!r}, {item.get(columns[1])!r}") from None
    if not (0 <= start < end):
        raise RuntimeUserError(f"{path} row {number}: need 0 <= {columns[0]} < {columns[1]}, got {start}, {end}")
    return start, end


def select_videos(gallery: GalleryIndex, ann: Annotations,
                  allow_missing: bool) -> tuple[Annotations, list[str], np.ndarray]:
    """Drop/complain about captions of unindexed videos; evaluated videos in first-appearance order,
    and the gallery rows to score: one per video, or every window of each video's file."""
    rows_of: dict[str, list[int]] = {}
    for row, entry in enumerate(gallery.entries):
        rows_of.setdefault(file_of(entry), []).append(row)
    missing = sorted({v for v in ann.video_ids if v not in rows_of})
    if missing and not allow_missing:
        raise RuntimeUserError(f"{len(missing)} annotated videos are not in the index (e.g. {missing[:5]}); index "
                               f"them (see INDEX/failed.jsonl) or pass --allow-missing to drop their captions")
    keep = [i for i, v in enumerate(ann.video_ids) if v in rows_of]
    if not keep:
        raise RuntimeUserError("no annotated video is in the index")
    kept = Annotations([ann.video_ids[i] for i in keep], [ann.captions[i] for i in keep],
                       None if ann.spans is None else [ann.spans[i] for i in keep])
    videos = list(dict.fromkeys(kept.video_ids))
    return kept, videos, np.array([r for v in videos for r in rows_of[v]], dtype=np.int64)


def best_per_video(scores: np.ndarray, columns: np.ndarray, n_videos: int) -> np.ndarray:
    """[T, rows] -> [T, videos]: each video's best row (its best window; identity for whole files)."""
    if len(columns) == n_videos and (columns == np.arange(n_videos)).all():
        return scores
    out = np.full((scores.shape[0], n_videos), -np.inf, dtype=scores.dtype)
    np.maximum.at(out, (np.arange(scores.shape[0])[:, None], columns[None, :]), scores)
    return out


def evaluate(gallery: GalleryIndex, scorer: Scorer, text: TextFeatures, ann: Annotations, videos: list[str],
             rows: np.ndarray, memory_mb: float, video_bank: GalleryIndex | None = None, use_biases: bool = True,
             progress=None) -> dict[str, Any]:
    """Metrics (t2v, v2t) and what they were computed with."""
    n_iters = scorer.config.sk_iterations
    subset = gallery.subset(rows)
    sims = score_matrix(scorer, text, subset, memory_mb, progress=progress)
    stored = gallery.biases() if use_biases else None
    vbias = None if stored is None else {lv: stored[lv][rows] for lv in LEVELS}
    if use_biases:
        bank_sims = sims if video_bank is None else score_matrix(scorer, text, video_bank, memory_mb)
        tbias = {lv: text_bias(bank_sims[lv], n_iters) for lv in LEVELS}
        v2t = fuse({lv: sims[lv] + tbias[lv][:, None] for lv in LEVELS}, None)
    else:
        v2t = fuse(sims, None)
    t2v_rows = fuse(sims, vbias)
    col_of = {v: i for i, v in enumerate(videos)}
    entries = gallery.entries
    setting = setting_of(entries)
    columns = np.array([col_of[file_of(entries[r])] for r in rows], dtype=np.int64)
    t2v, v2t = best_per_video(t2v_rows, columns, len(videos)), best_per_video(v2t, columns, len(videos))
    video_of_text = np.array([col_of[v] for v in ann.video_ids])
    one_to_one = len(videos) == len(ann.video_ids) and bool((video_of_text == np.arange(len(videos))).all())
    gt = None if one_to_one else video_of_text
    report = {
        "metrics": {"t2v": retrieval_metrics(t2v, gt, "t2v"), "v2t": retrieval_metrics(v2t, gt, "v2t")},
        "captions": len(ann.captions), "videos": len(videos),
        "protocol": "one caption per video (reference compute_metrics)" if one_to_one else "multi-caption",
        "t2v_video_bias": None if vbias is None else gallery.state.biases.to_dict(),
        "v2t_text_bias": None if not use_biases else (
            f"SK over {len(video_bank)} videos of {video_bank.root}" if video_bank is not None
            else f"SK over the {len(rows)} evaluated {'windows' if setting is not None else 'videos'}"),
        "extra_gallery_videos": len({file_of(e) for e in entries}) - len(videos),
    }
    if setting is not None:
        report["windows"] = {"window": setting.window, "stride": setting.stride, "rows_scored": int(len(rows)),
                             "file_score": "best window"}
    if ann.spans is not None:
        report["moments"] = moment_metrics(t2v_rows, [entries[r] for r in rows], ann)
    return report


def moment_metrics(t2v_rows: np.ndarray, row_entries: list[dict[str, Any]], ann: Annotations) -> dict[str, Any]:
    """Moment retrieval (``evaluation.moments``) of the t2v scores of every scored row."""
    spans = [span_of(e) for e in row_entries]
    if any(s is None for s in spans):
        return {"skipped": "the index records no duration for its rows (format 1); rebuild it to score moments"}
    metrics = moment_recall(t2v_rows, [file_of(e) for e in row_entries], spans, ann.video_ids, ann.spans)
    windowed = is_windowed(row_entries[0])
    return {"t2v": metrics, "moments": len(row_entries),
            "moment_of_row": "its window" if windowed else "the whole file [0, duration] (baseline)",
            "hit": "right file and temporal IoU >= threshold", "ranking": "all moments of all files"}


@dataclass(frozen=True)
class EvaluateRequest:
    """What ``ucofia-run evaluate`` is asked: the index, the annotations and how to score them."""

    index: Path
    annotations: Path
    dataset: str = "msrvtt"
    video_bank: Path | None = None      # index of bank videos for the v2t text bias (default: the evaluated ones)
    use_biases: bool = True
    allow_missing: bool = False
    bundle: Path | None = None
    backend: str = "auto"
    memory_mb: float = DEFAULT_MEMORY_MB
    threads: int | None = None
    scorer_precision: str = DEFAULT_SCORER_PRECISION


def evaluate_index(request: EvaluateRequest) -> dict[str, Any]:
    """Open the index and its bundle, score the annotated captions against the annotated videos and
    return the metrics report (see :func:`evaluate`) with what it was computed on."""
    gallery, bundle = open_index(request.index, request.bundle)
    ann, videos, rows = select_videos(gallery, load_annotations(request.annotations, request.dataset),
                                      request.allow_missing)
    models = load_query_models(bundle, request.backend, request.threads, request.scorer_precision,
                               split_text_side=split_pays_off(len(ann.captions) * len(videos)))
    bank = None
    if request.video_bank is not None:
        bank = GalleryIndex(request.video_bank)
        bank.check_bundle(bundle)
    start = time.perf_counter()
    text = models.text.encode_reporting(ann.captions, "caption")
    with progress_bar(len(ann.captions) * len(rows), "scoring", "pair") as update:
        report = evaluate(gallery, models.scorer, text, ann, videos, rows, request.memory_mb, bank,
                          request.use_biases, update)
    report.update({"index": str(request.index), "annotations": str(request.annotations), "dataset": request.dataset,
                   "backend": models.scorer.session.backend, "scorer_precision": models.scorer.session.precision,
                   "seconds": round(time.perf_counter() - start, 3), "bundle_fingerprint": bundle.fingerprint})
    if report["extra_gallery_videos"]:
        logger.info("note: the index holds %d videos that are not annotated; they are left out of the ranking (the "
                    "stored biases were computed over all indexed videos)", report["extra_gallery_videos"])
    return report
