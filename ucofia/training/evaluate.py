"""Evaluation during training: t2v / v2t retrieval metrics per level, all three, all three + SK.

The model runs in eval mode (deterministic hard top-k). Features are encoded in batches; the
level similarities are computed in (text x video) tiles so level-3 memory stays bounded. The SK
bias for text-to-video comes from the training captions (bank [B, V]) and for video-to-text from
the training videos (bank [T, B]), as the reference eval trees do.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.metrics import retrieval_metrics
from ucofia.model import UCoFiA
from ucofia.sinkhorn import LEVELS, sinkhorn_text_bias, sinkhorn_video_bias
from ucofia.training.data import SplitData, batched, frames_to_model, subset_rows

logger = logging.getLogger(__name__)

VARIANTS = LEVELS + ("all", "all_sk")


@dataclass
class EvalSettings:
    """What evaluate_split needs, taken from the training config's ``eval`` section (the one place
    its defaults live, ``ucofia.training.config.EvalSection``) and ``optim.seed``."""

    video_batch: int
    text_batch: int
    text_chunk: int  # texts per similarity tile
    video_chunk: int  # videos per similarity tile
    sk: bool
    sk_bank_size: int  # training captions (0: all)
    sk_video_bank_size: int  # training videos (0: all)
    seed: int


@dataclass
class TextBank:
    sentence: torch.Tensor  # [T, D]
    words: torch.Tensor  # [T, L, D]


@dataclass
class VideoBank:
    video: torch.Tensor  # [V, D]
    frames: torch.Tensor  # [V, F, D]
    patches: torch.Tensor  # [V, P, D]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


@torch.no_grad()
def encode_texts(model: UCoFiA, split: SplitData, rows: np.ndarray, batch: int, device: torch.device,
                 amp: torch.dtype | None = None) -> TextBank:
    """Sentence and word features of caption ``rows`` (float32, on ``device``)."""
    sentences, words = [], []
    for chunk in batched(rows, batch):
        ids = torch.from_numpy(np.ascontiguousarray(split.input_ids[chunk], dtype=np.int64)).to(device)
        mask = torch.from_numpy(np.ascontiguousarray(split.attention_mask[chunk], dtype=np.int64)).to(device)
        with _autocast(device, amp):
            out = model.encode_text(ids, mask)
        sentences.append(out.sentence.float())
        words.append(out.words.float())
    return TextBank(torch.cat(sentences), torch.cat(words))


@torch.no_grad()
def encode_videos(model: UCoFiA, split: SplitData, rows: np.ndarray, batch: int, device: torch.device,
                  amp: torch.dtype | None = None) -> VideoBank:
    """Video, frame and patch features of videos ``rows`` (float32, on ``device``)."""
    videos, frames, patches = [], [], []
    for chunk in batched(rows, batch):
        mask = torch.from_numpy(np.ascontiguousarray(split.video_mask[chunk], dtype=np.float32)).to(device)
        raw = torch.from_numpy(np.ascontiguousarray(split.frames[chunk])).to(device)
        with _autocast(device, amp):
            out = model.encode_video(frames_to_model(raw, mask, model.config), mask)
        videos.append(out.video.float())
        frames.append(out.frames.float())
        patches.append(out.patches.float())
    return VideoBank(torch.cat(videos), torch.cat(frames), torch.cat(patches))


@torch.no_grad()
def level_similarities(model: UCoFiA, text: TextBank, video: VideoBank, text_chunk: int,
                       video_chunk: int) -> dict[str, torch.Tensor]:
    """The three level matrices [T, V] (float32, CPU), computed tile by tile."""
    t_total, v_total = text.sentence.shape[0], video.video.shape[0]
    out = {level: torch.empty(t_total, v_total, dtype=torch.float32) for level in LEVELS}
    for t0 in range(0, t_total, text_chunk):
        t1 = min(t_total, t0 + text_chunk)
        for v0 in range(0, v_total, video_chunk):
            v1 = min(v_total, v0 + video_chunk)
            sims = model.score(text.sentence[t0:t1].float(), text.words[t0:t1].float(),
                               video.video[v0:v1].float(), video.frames[v0:v1].float(),
                               video.patches[v0:v1].float())
            for level in LEVELS:
                out[level][t0:t1, v0:v1] = sims[level].float().cpu()
    return out


def _metrics(sim: torch.Tensor, video_of_text: np.ndarray | None, direction: str) -> dict[str, float]:
    return retrieval_metrics(sim.double().numpy(), video_of_text=video_of_text, direction=direction)


def retrieval_results(sims: Mapping[str, torch.Tensor], video_of_text: np.ndarray,
                      video_bias: Mapping[str, torch.Tensor] | None = None,
                      text_bias: Mapping[str, torch.Tensor] | None = None) -> dict[str, dict[str, dict]]:
    """{"t2v"|"v2t": {level, "all", "all_sk": metrics}} from level matrices and optional SK biases."""
    square = len(video_of_text) == next(iter(sims.values())).shape[1] and \
        bool(np.all(video_of_text == np.arange(len(video_of_text))))
    gt = None if square else video_of_text
    fused = sum(sims[level] for level in LEVELS) / len(LEVELS)
    results: dict[str, dict[str, dict]] = {"t2v": {}, "v2t": {}}
    for direction in ("t2v", "v2t"):
        for level in LEVELS:
            results[direction][level] = _metrics(sims[level], gt, direction)
        results[direction]["all"] = _metrics(fused, gt, direction)
    if video_bias is not None:
        t2v = sum(sims[k] + video_bias[k].unsqueeze(0) for k in LEVELS) / len(LEVELS)
        results["t2v"]["all_sk"] = _metrics(t2v, gt, "t2v")
    if text_bias is not None:
        v2t = sum(sims[k] + text_bias[k].unsqueeze(1) for k in LEVELS) / len(LEVELS)
        results["v2t"]["all_sk"] = _metrics(v2t, gt, "v2t")
    return results


@torch.no_grad()
def evaluate_split(model: UCoFiA, split: SplitData, bank: SplitData | None, settings: EvalSettings,
                   device: torch.device, amp: torch.dtype | None = None) -> dict[str, dict[str, dict]]:
    """Metrics of ``split`` (its own captions vs its own videos); SK banks from ``bank`` (train)."""
    was_training = model.training
    model.eval()
    try:
        logger.debug("encode %s", split.name)
        text = encode_texts(model, split, np.arange(split.num_texts), settings.text_batch, device, amp)
        video = encode_videos(model, split, np.arange(split.num_videos), settings.video_batch, device, amp)
        sims = level_similarities(model, text, video, settings.text_chunk, settings.video_chunk)
        video_bias = text_bias = None
        if settings.sk and bank is not None:
            n_iter = model.config.sk_iterations
            logger.debug("SK caption bank")
            rows = subset_rows(bank.num_texts, settings.sk_bank_size, settings.seed)
            bank_sims = {k: [] for k in LEVELS}
            for chunk in batched(rows, settings.text_batch):
                bank_text = encode_texts(model, bank, chunk, settings.text_batch, device, amp)
                part = level_similarities(model, bank_text, video, settings.text_chunk, settings.video_chunk)
                for k in LEVELS:
                    bank_sims[k].append(part[k])
            video_bias = {k: sinkhorn_video_bias(torch.cat(bank_sims[k]), n_iter) for k in LEVELS}
            logger.debug("SK video bank")
            vrows = subset_rows(bank.num_videos, settings.sk_video_bank_size, settings.seed)
            tb_parts = {k: [] for k in LEVELS}
            for chunk in batched(vrows, settings.video_batch * 4):
                bank_video = encode_videos(model, bank, chunk, settings.video_batch, device, amp)
                part = level_similarities(model, text, bank_video, settings.text_chunk, settings.video_chunk)
                for k in LEVELS:
                    tb_parts[k].append(part[k])
            text_bias = {k: sinkhorn_text_bias(torch.cat(tb_parts[k], dim=1), n_iter) for k in LEVELS}
        return retrieval_results(sims, split.video_of_text, video_bias, text_bias)
    finally:
        model.train(was_training)


def flatten(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """{"t2v.all_sk.R1": value, ...}"""
    return {f"{d}.{v}.{m}": float(x) for d, per in results.items() for v, ms in per.items() for m, x in ms.items()}
