"""The per-level Sinkhorn-Knopp video biases of an index, from a caption bank.

SK normalises over the whole gallery, so every video's bias depends on every other video: the
biases are recomputed whenever the bank or the set of videos changes (an indexing run that added
rows, a removal, a merge), streamed through a memory-mapped scratch file so that memory stays
bounded for large banks.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import open_session
from runtime.backends.selection import split_pays_off
from runtime.bundle import Bundle
from runtime.index import KEEP_BIASES, IndexWriter, ids_digest
from runtime.scoring import DEFAULT_MEMORY_MB, LEVELS, Scorer, VideoSource, score_matrix
from runtime.sinkhorn import video_bias
from runtime.sources import read_captions
from runtime.text import TextEncoder
from ucofia.io_utils import file_sha256
from ucofia.progress import Update, progress_bar

# Bank captions encoded and scored per pass (bounds the text features held at once).
BANK_CHUNK = 1024
BANK_SIMS_TMP = ".bank_sims.tmp.npy"

logger = logging.getLogger(__name__)


def biases_from_bank_scores(scratch: Path, n_bank: int, n_video: int, iterations: int,
                            fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """[3, V] SK video bias per level: ``fill`` writes the [3, B, V] bank x gallery similarities
    into a memory-mapped scratch file (deleted afterwards) and SK streams over it, so memory stays
    bounded for large banks."""
    sims = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(len(LEVELS), n_bank, n_video))
    try:
        fill(sims)
        sims.flush()
        return np.stack([video_bias(sims[i], iterations) for i in range(len(LEVELS))])
    finally:
        del sims
        scratch.unlink(missing_ok=True)


def compute_bank_biases(index: VideoSource, bundle: Bundle, captions: list[str], *, backend: str,
                        memory_mb: float, threads: int | None, scratch: Path, progress: Update | None = None
                        ) -> np.ndarray:
    """[3, V] SK video bias per level from bank captions x all indexed videos, scored here
    (see :func:`biases_from_bank_scores`)."""
    text = TextEncoder(bundle, backend, threads)
    n_bank = len(captions)
    scorer = Scorer(open_session(bundle, "scorer", backend, threads,
                                 split_text_side=split_pays_off(n_bank * len(index))), bundle.config)

    def fill(sims: np.ndarray) -> None:
        for c0 in range(0, n_bank, BANK_CHUNK):
            c1 = min(c0 + BANK_CHUNK, n_bank)
            feats = text.encode(captions[c0:c1], what="bank caption", first_number=c0 + 1)
            score_matrix(scorer, feats, index, memory_mb,
                         out={lv: sims[i, c0:c1] for i, lv in enumerate(LEVELS)}, progress=progress)

    return biases_from_bank_scores(scratch, n_bank, len(index), bundle.config.sk_iterations, fill)


ComputeBiases = Callable[..., np.ndarray]  # the signature of compute_bank_biases


@dataclass(frozen=True)
class BiasScoring:
    """How the bank x gallery similarities behind the biases are scored: backend, the scorer's
    memory budget, threads, and optionally another ``compute`` with the signature of
    :func:`compute_bank_biases` (e.g. spread over a Ray cluster)."""

    backend: str = "cpu"
    memory_mb: float = DEFAULT_MEMORY_MB
    threads: int | None = None
    compute: ComputeBiases | None = None


def biases_for(writer: IndexWriter, bundle: Bundle, bank: Path | None, videos: VideoSource, ids: list[str],
               scoring: BiasScoring) -> tuple[Any, str]:
    """The biases of the gallery ``ids`` (features served by ``videos``, in that order), which may
    differ from the committed one (e.g. the rows a removal keeps): ``(record, what happened)``
    where record is KEEP_BIASES when the stored biases still fit, None to drop them, or a record
    from :meth:`IndexWriter.stage_biases` to commit. ``bank`` None: the bank the stored biases came
    from, when there are any."""
    meta = writer.state.biases
    digest = ids_digest(ids)
    if bank is None:
        if meta is None:
            return KEEP_BIASES, "none (no --bank given)"
        bank = Path(meta.bank.path)
        if meta.ids_sha256 == digest:
            return KEEP_BIASES, "unchanged"
        if not bank.is_file():
            logger.warning("the videos changed but the caption bank %s used for the biases is gone; biases dropped, "
                           "re-run `ucofia-run index` with --bank to compute them", bank)
            return None, "dropped"
    bank = bank.resolve()
    sha = file_sha256(bank)
    if meta is not None and meta.bank.sha256 == sha and meta.ids_sha256 == digest:
        return KEEP_BIASES, "unchanged"
    if not ids:
        return None, "none (no videos indexed)"
    captions = read_captions(bank, "bank captions")
    start = time.perf_counter()
    with progress_bar(len(captions) * len(ids), "bank x videos", "pair") as update:
        values = (scoring.compute or compute_bank_biases)(
            videos, bundle, captions, backend=scoring.backend, memory_mb=scoring.memory_mb, threads=scoring.threads,
            scratch=writer.root / BANK_SIMS_TMP, progress=update)
    record = writer.stage_biases(values, {"bank": {"path": str(bank), "sha256": sha, "captions": len(captions)},
                                          "sk_iterations": bundle.config.sk_iterations}, ids)
    return record, f"computed from {len(captions)} bank captions in {time.perf_counter() - start:.1f}s"


@dataclass(frozen=True)
class BankBiases:
    """:func:`biases_for` with one bundle and scoring setup: what ``runtime.index.updates`` asks
    the caller for when ``remove`` or ``merge`` changes the gallery (the index has no encoder)."""

    bundle: Bundle
    scoring: BiasScoring = BiasScoring()

    def __call__(self, writer: IndexWriter, bank: Path | None, videos: VideoSource, ids: list[str]
                 ) -> tuple[Any, str]:
        return biases_for(writer, self.bundle, bank, videos, ids, self.scoring)


def update_biases(writer: IndexWriter, bundle: Bundle, bank: Path | None, scoring: BiasScoring) -> str:
    """Recompute the index's biases when the bank or the set of videos changed, publishing the
    rows an indexing run left pending together with them; returns what happened."""
    index = writer.index
    record, what = biases_for(writer, bundle, bank, index, index.ids, scoring)
    writer.publish(record)  # pending rows become visible together with the biases that fit them
    return what
