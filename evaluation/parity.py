"""``ucofia parity``: run the PyTorch model and the deployed runtime on one benchmark and compare.

The runtime side is exactly what users deploy: the indexing use case behind ``ucofia-run index``
(``runtime.ingest.build_index``: decode, encode with the bundle's graphs, SK video biases against
the caption bank) and the runtime's tiled scorer. The
PyTorch side decodes the same clips, encodes them with the checkpoint and computes the same levels
and biases with ``ucofia.sinkhorn``. The report covers every level, the fused matrix and the fused
matrix with SK (see ``evaluation.compare``).
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.compare import LEVELS, Tolerance, compare_retrieval

logger = logging.getLogger(__name__)
TORCH_VIDEO_BATCH = 8
TORCH_TEXT_BATCH = 256


class ParityError(RuntimeError):
    """Parity could not be run (bad inputs), as opposed to a parity failure."""


@dataclass
class Benchmark:
    """Evaluation captions with their video ids, the video files, and the SK caption bank."""

    captions: list[str]
    caption_video_ids: list[str]
    video_ids: list[str]
    video_paths: list[Path]
    bank: list[str]


def load_benchmark(root: Path, dataset: str = "msrvtt", split: str = "test", bank: Path | None = None
                   ) -> Benchmark:
    """Read a benchmark with the dataset readers. The SK bank is the captions of ``bank`` (any file
    ``ucofia-run index --bank`` reads) when given, else the benchmark's training captions."""
    from runtime.sources import read_captions
    from ucofia.data.readers import DatasetError, read_split

    if not root.exists():
        raise ParityError(f"benchmark folder not found: {root}")
    test = read_split(dataset, root, split)
    if bank is not None:
        bank_captions = read_captions(bank, "bank captions")
    else:
        try:
            bank_captions = [c.text for c in read_split(dataset, root, "train").captions]
        except DatasetError as exc:
            raise ParityError(f"{root} has no training split for the SK caption bank ({exc}). Pass --bank FILE "
                              f"with bank captions (e.g. the training captions, one per line)") from None
    video_ids = [v.video_id for v in test.videos]
    return Benchmark(
        captions=[c.text for c in test.captions],
        caption_video_ids=[video_ids[c.video_index] for c in test.captions],
        video_ids=video_ids, video_paths=[Path(v.path) for v in test.videos],
        bank=bank_captions,
    )


# ---- runtime side ---------------------------------------------------------------------------
def runtime_side(bundle: Path, bench: Benchmark, work: Path, backend: str, store: str = "float32",
                 scorer_precision: str = "float32") -> dict:
    """Index the benchmark's videos as ``ucofia-run index`` does (features stored as ``store``), then
    score its captions with the runtime (its scorer in ``scorer_precision``, as ``ucofia-run search
    --scorer-precision``; the index's SK video biases are computed at index time, in float32)."""
    from runtime.bundle import load_bundle
    from runtime.deployment import load_query_models
    from runtime.index import GalleryIndex
    from runtime.ingest import IndexRequest, build_index
    from runtime.scoring import score_matrix
    from runtime.sinkhorn import text_bias

    videos_list = work / "videos.txt"
    videos_list.write_text("".join(f"{p.resolve()}\n" for p in bench.video_paths))
    bank = work / "bank.txt"
    bank.write_text("".join(f"{' '.join(c.split())}\n" for c in bench.bank))  # one caption per line
    index_dir = work / "index"
    logger.info("$ ucofia-run index --bundle %s --videos %s --bank %s -o %s --backend %s --store %s", bundle,
                videos_list, bank, index_dir, backend, store)
    build_index(IndexRequest(bundle=bundle, videos=videos_list, out=index_dir, bank=bank, backend=backend, store=store,
                             thumbnails=False))
    gallery = GalleryIndex(index_dir)
    row_of = {vid: i for i, vid in enumerate(gallery.ids)}
    missing = [v for v in bench.video_ids if v not in row_of]
    if missing:
        raise ParityError(f"the runtime could not index {len(missing)} videos (e.g. {missing[:3]}); "
                          f"see {index_dir / 'failed.jsonl'}")
    rows = np.array([row_of[v] for v in bench.video_ids])
    b = load_bundle(bundle)
    models = load_query_models(b, backend, scorer_precision=scorer_precision)
    text = models.text.encode(bench.captions, what="caption")
    sims = score_matrix(models.scorer, text, gallery.subset(rows))
    stored = gallery.biases()
    if stored is None:
        raise ParityError(f"{index_dir} has no SK biases")
    return {
        "sims": {lv: np.asarray(sims[lv]) for lv in LEVELS},
        "video_bias": {lv: np.asarray(stored[lv][rows]) for lv in LEVELS},
        "text_bias": {lv: text_bias(np.asarray(sims[lv]), b.config.sk_iterations) for lv in LEVELS},
        "dtype": b.dtype,
    }


# ---- PyTorch side ---------------------------------------------------------------------------
def torch_side(model, bench: Benchmark, vocab: Path) -> dict:
    """Decode, encode and score the benchmark with the PyTorch model (in eval mode)."""
    import torch

    import ucofia
    from ucofia.data.tokenizer import ClipTokenizer
    from ucofia.data.video import VideoSpec, decode_many

    cfg = model.config
    spec = VideoSpec.from_config(cfg)
    tokenizer = ClipTokenizer(vocab)
    logger.info("PyTorch: encoding %d videos and %d captions", len(bench.video_paths),
                len(bench.captions) + len(bench.bank))

    def encode_texts(texts: list[str]):
        parts = []
        for start in range(0, len(texts), TORCH_TEXT_BATCH):
            ids, mask = tokenizer.tokenize(texts[start:start + TORCH_TEXT_BATCH], cfg.max_words)
            parts.append(model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)))
        return ucofia.TextFeatures(torch.cat([p.sentence for p in parts]), torch.cat([p.words for p in parts]))

    with torch.no_grad():
        frames, masks = [], []
        for outcome in decode_many(bench.video_paths, spec, workers=2):
            if not outcome.ok:
                raise ParityError(f"cannot decode {outcome.path}: {outcome.error}")
            frames.append(outcome.video.to_model_input(spec))
            masks.append(outcome.video.video_mask.astype(np.float32))
        parts = []
        for start in range(0, len(frames), TORCH_VIDEO_BATCH):
            parts.append(model.encode_video(torch.from_numpy(np.stack(frames[start:start + TORCH_VIDEO_BATCH])),
                                            torch.from_numpy(np.stack(masks[start:start + TORCH_VIDEO_BATCH]))))
        video = ucofia.VideoFeatures(*(torch.cat([getattr(p, f) for p in parts])
                                       for f in ("video", "frames", "patches", "video_mask")))
        sims = model.level_similarities(encode_texts(bench.captions), video)
        bank_sims = model.level_similarities(encode_texts(bench.bank), video)
        n = cfg.sk_iterations
        return {
            "sims": {lv: sims[lv].numpy() for lv in LEVELS},
            "video_bias": {lv: ucofia.sinkhorn_video_bias(bank_sims[lv], n).numpy() for lv in LEVELS},
            "text_bias": {lv: ucofia.sinkhorn_text_bias(sims[lv], n).numpy() for lv in LEVELS},
        }


# ---- the command's body ---------------------------------------------------------------------
def run_parity(checkpoint: Path, bundle: Path, benchmark: Path, *, dataset: str = "msrvtt", split: str = "test",
               bank: Path | None = None, backend: str = "auto", tolerance: Tolerance | None = None,
               store: str = "float32", scorer_precision: str = "float32") -> dict:
    """Run both sides and return the comparison report (``report["passed"]``); the runtime stores
    the gallery's features as ``store`` (float32, float16 or int8: ``ucofia-run index --store``)
    and scores in ``scorer_precision`` (``ucofia-run search --scorer-precision``)."""
    from runtime.bundle import load_bundle
    from ucofia.checkpoints import load_model, weights_fingerprint

    b = load_bundle(bundle)
    model = load_model(checkpoint).eval()
    fingerprint = weights_fingerprint(model)
    if b.fingerprint and b.fingerprint != fingerprint:  # before any decoding or encoding
        raise ParityError(f"bundle {bundle} was exported from other weights than {checkpoint} "
                          f"(fingerprint {b.fingerprint[:12]} vs {fingerprint[:12]}); re-export it")
    bench = load_benchmark(benchmark, dataset, split, bank)
    if not bench.captions:
        raise ParityError(f"{benchmark}: the {split} split has no captions")
    with tempfile.TemporaryDirectory(prefix="ucofia-parity-") as tmp:
        rt = runtime_side(bundle, bench, Path(tmp), backend, store, scorer_precision)
    pt = torch_side(model, bench, b.tokenizer.vocab_file)
    col_of = {v: i for i, v in enumerate(bench.video_ids)}
    video_of_text = [col_of[v] for v in bench.caption_video_ids]
    one_to_one = video_of_text == list(range(len(bench.video_ids)))
    tol = tolerance or Tolerance.for_manifest(b.manifest, store, scorer_precision)
    report = compare_retrieval(pt["sims"], rt["sims"], pt["video_bias"], rt["video_bias"], pt["text_bias"],
                               rt["text_bias"], None if one_to_one else video_of_text, tol)
    bundle_dtype = rt["dtype"] + (" + int8 encoders" if b.manifest.get("int8") else "")
    report.update({"checkpoint": str(checkpoint), "bundle": str(bundle), "benchmark": str(benchmark),
                   "split": split, "captions": len(bench.captions), "videos": len(bench.video_ids),
                   "bank_captions": len(bench.bank), "bank": str(bank) if bank else "the benchmark's train split",
                   "bundle_dtype": bundle_dtype, "index_store": store, "backend": backend,
                   "scorer_precision": scorer_precision})
    return report


def write_report(report: dict, path: Path) -> None:
    """Write the JSON report atomically."""
    from ucofia.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=float))
