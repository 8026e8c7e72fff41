"""``ucofia-run evaluate``: text-to-video and video-to-text retrieval metrics on an index.

As the reference evaluation does:
* t2v: ``mean_k(sims_k + video_bias_k)`` with the index's SK video biases (caption bank);
* v2t: ``mean_k(sims_k + text_bias_k)`` where ``text_bias_k`` is the SK bias of each annotation
  caption over a bank of videos (eval_v2t: the [captions, bank videos] matrix, transposed, column
  bias). The reference's bank is the training videos; here it is ``--video-bank INDEX`` when given,
  else the evaluated videos themselves.
Metrics come from ``evaluation.retrieval_metrics`` (reference conventions: one caption per video
-> ``compute_metrics`` with ties counted; several -> the multi-caption protocol).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metrics import retrieval_metrics

from runtime.errors import RuntimeUserError
from runtime.index import GalleryIndex
from runtime.scoring import LEVELS, Scorer, TextFeatures, fuse, score_matrix
from runtime.sinkhorn import text_bias

DATASETS = ("msrvtt", "generic")
VIDEO_COLUMNS = ("video_id", "video", "vid")
CAPTION_COLUMNS = ("sentence", "caption", "text")


@dataclass
class Annotations:
    """One row per caption: its video id and text."""

    video_ids: list[str]
    captions: list[str]


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
        items = json.loads(text) if path.suffix.lower() == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]
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
    ann = Annotations([], [])
    for number, item in enumerate(items, 1):
        vid, caption = str(item.get(vcol) or "").strip(), item.get(ccol)
        if not vid:
            raise RuntimeUserError(f"{path} row {number}: empty {vcol}")
        if not isinstance(caption, str) or not caption.strip():
            raise RuntimeUserError(f"{path} row {number}: empty {ccol} for video {vid}")
        ann.video_ids.append(vid)
        ann.captions.append(caption)
    return ann


def select_videos(gallery: GalleryIndex, ann: Annotations,
                  allow_missing: bool) -> tuple[Annotations, list[str], np.ndarray]:
    """Drop/complain about captions of unindexed videos; evaluated videos in first-appearance order."""
    row_of = {vid: i for i, vid in enumerate(gallery.ids)}
    missing = sorted({v for v in ann.video_ids if v not in row_of})
    if missing and not allow_missing:
        raise RuntimeUserError(f"{len(missing)} annotated videos are not in the index (e.g. {missing[:5]}); index "
                               f"them (see INDEX/failed.jsonl) or pass --allow-missing to drop their captions")
    keep = [i for i, v in enumerate(ann.video_ids) if v in row_of]
    if not keep:
        raise RuntimeUserError("no annotated video is in the index")
    kept = Annotations([ann.video_ids[i] for i in keep], [ann.captions[i] for i in keep])
    videos = list(dict.fromkeys(kept.video_ids))
    return kept, videos, np.array([row_of[v] for v in videos], dtype=np.int64)


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
    t2v = fuse(sims, vbias)
    col_of = {v: i for i, v in enumerate(videos)}
    video_of_text = np.array([col_of[v] for v in ann.video_ids])
    one_to_one = len(videos) == len(ann.video_ids) and bool((video_of_text == np.arange(len(videos))).all())
    gt = None if one_to_one else video_of_text
    return {
        "metrics": {"t2v": retrieval_metrics(t2v, gt, "t2v"), "v2t": retrieval_metrics(v2t, gt, "v2t")},
        "captions": len(ann.captions), "videos": len(videos),
        "protocol": "one caption per video (reference compute_metrics)" if one_to_one else "multi-caption",
        "t2v_video_bias": None if vbias is None else gallery.state["biases"],
        "v2t_text_bias": None if not use_biases else (
            f"SK over {len(video_bank)} videos of {video_bank.root}" if video_bank is not None
            else f"SK over the {len(videos)} evaluated videos"),
        "extra_gallery_videos": len(gallery) - len(videos),
    }
