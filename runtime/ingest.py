"""``ucofia-run index``: decode videos in a worker pool, encode them in batches, store shards,
then compute the per-level SK video biases against a caption bank.

Resumable: ids already in the index are skipped; a killed run loses at most the batch in flight.
Videos that fail to decode are listed in ``failed.jsonl`` and skipped (a rerun retries them).
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ucofia.data.video import VideoSpec, decode_many

from runtime.backends import open_session
from runtime.bundle import Bundle
from runtime.finite import NON_FINITE_FIX, non_finite_rows
from runtime.index import GalleryIndex, IndexWriter, ids_digest
from runtime.scoring import LEVELS, Scorer, score_matrix
from runtime.sinkhorn import video_bias
from runtime.sources import read_captions
from runtime.text import TextEncoder

DEFAULT_BATCH = 16
# Bank captions encoded and scored per pass (bounds the text features held at once).
BANK_CHUNK = 1024
BANK_SIMS_TMP = ".bank_sims.tmp.npy"

Log = Callable[[str], None]


@dataclass
class IngestReport:
    """What one ``index`` run did."""

    total: int = 0
    skipped: int = 0
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    biases: str = "none"

    @property
    def videos_per_second(self) -> float:
        return (self.indexed + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_videos(writer: IndexWriter, bundle: Bundle, todo: list[tuple[str, Path]], *, backend: str,
                  batch_size: int, workers: int, processes: bool, threads: int | None,
                  report: IngestReport, progress: Callable[[int], None] | None = None) -> None:
    """Decode ``todo`` in a pool, encode batches with the video encoder, append shards."""
    encoder = open_session(bundle, "video_encoder", backend, threads)
    spec = VideoSpec.from_config(bundle.config)
    batch_ids: list[str] = []
    batch_paths: list[Path] = []
    batch_frames: list[np.ndarray] = []
    batch_masks: list[np.ndarray] = []

    def flush() -> None:
        if not batch_ids:
            return
        frames = np.stack(batch_frames)
        mask = np.stack(batch_masks).astype(np.float32)
        out = encoder.run({"frames": frames, "video_mask": mask})
        ids = list(batch_ids)
        bad = non_finite_rows(out.values())
        if bad.any():  # never store NaN/inf features: list those videos as failed, keep the rest
            for i in np.flatnonzero(bad):
                error = f"the video encoder produced non-finite features (NaN/inf) for {batch_paths[i]}; {NON_FINITE_FIX}"
                writer.record_failure(batch_ids[i], str(batch_paths[i]), error)
                report.failed.append((batch_ids[i], error))
            ids = [vid for vid, failed in zip(batch_ids, bad) if not failed]
            out = {role: value[~bad] for role, value in out.items()}
            mask = mask[~bad]
        writer.add_batch(ids, {**out, "video_mask": mask})  # no-op when every video failed
        report.indexed += len(ids)
        if progress:
            progress(len(batch_ids))
        batch_ids.clear(), batch_paths.clear(), batch_frames.clear(), batch_masks.clear()

    outcomes = decode_many([path for _, path in todo], spec, workers=max(workers, 1), processes=processes,
                           prefetch=max(2 * workers, batch_size))
    for (vid, path), outcome in zip(todo, outcomes):
        if not outcome.ok:
            writer.record_failure(vid, str(path), str(outcome.error))
            report.failed.append((vid, str(outcome.error)))
            if progress:
                progress(1)
            continue
        batch_ids.append(vid)
        batch_paths.append(path)
        batch_frames.append(outcome.video.to_model_input(spec))
        batch_masks.append(outcome.video.video_mask)
        if len(batch_ids) >= batch_size:
            flush()
    flush()


def compute_bank_biases(index: GalleryIndex, bundle: Bundle, captions: list[str], *, backend: str,
                        memory_mb: float, threads: int | None, scratch: Path,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """[3, V] SK video bias per level from bank captions x all indexed videos.

    The [3, B, V] bank similarities go to a memory-mapped scratch file (deleted afterwards) and SK
    streams over it, so memory stays bounded for large banks.
    """
    text = TextEncoder(bundle, backend, threads)
    scorer = Scorer(open_session(bundle, "scorer", backend, threads), bundle.config)
    n_bank, n_video = len(captions), len(index)
    sims = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(len(LEVELS), n_bank, n_video))
    try:
        for c0 in range(0, n_bank, BANK_CHUNK):
            c1 = min(c0 + BANK_CHUNK, n_bank)
            feats = text.encode(captions[c0:c1], what="bank caption", first_number=c0 + 1)
            score_matrix(scorer, feats, index, memory_mb,
                         out={lv: sims[i, c0:c1] for i, lv in enumerate(LEVELS)}, progress=progress)
        sims.flush()
        return np.stack([video_bias(sims[i], bundle.config.sk_iterations) for i in range(len(LEVELS))])
    finally:
        del sims
        scratch.unlink(missing_ok=True)


def update_biases(writer: IndexWriter, bundle: Bundle, bank: Path | None, *, backend: str, memory_mb: float,
                  threads: int | None, log: Log, progress_factory=None) -> str:
    """Recompute biases when the bank or the set of videos changed; returns what happened."""
    meta = writer.state.get("biases")
    index = GalleryIndex(writer.root)
    digest = ids_digest(index.ids)
    if bank is None:
        if not meta:
            return "none (no --bank given)"
        bank = Path(meta["bank"]["path"])
        if meta["ids_sha256"] == digest:
            return "unchanged"
        if not bank.is_file():
            writer.set_biases(None, None)
            log(f"warning: the videos changed but the caption bank {bank} used for the biases is gone; "
                f"biases dropped, re-run with --bank to compute them")
            return "dropped"
    bank = bank.resolve()
    sha = _file_sha256(bank)
    if meta and meta["bank"]["sha256"] == sha and meta["ids_sha256"] == digest:
        return "unchanged"
    if len(index) == 0:
        return "none (no videos indexed)"
    captions = read_captions(bank, "bank captions")
    progress = progress_factory(len(captions) * len(index)) if progress_factory else None
    start = time.perf_counter()
    values = compute_bank_biases(index, bundle, captions, backend=backend, memory_mb=memory_mb, threads=threads,
                                 scratch=writer.root / BANK_SIMS_TMP, progress=progress)
    writer.set_biases(values, {"bank": {"path": str(bank), "sha256": sha, "captions": len(captions)},
                               "sk_iterations": bundle.config.sk_iterations})
    return f"computed from {len(captions)} bank captions in {time.perf_counter() - start:.1f}s"


def default_workers() -> int:
    """Decoder workers: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
