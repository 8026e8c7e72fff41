"""``export_bundle``: model -> verified ONNX (and optionally TensorRT) bundle directory.

The bundle is built in a temporary sibling directory and renamed into place only when every
step succeeded (export, optional float16 conversion, TensorRT static check, onnxruntime
verification, optional engine build); on any failure nothing is left behind and an existing
bundle (replaced only with ``force``) stays as it was.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import onnx
import torch

from export import tensorrt_build
from export.fp16 import DEFAULT_ISLANDS, convert_to_fp16
from export.graphs import graph_modules
from export.int8 import INT8_GRAPHS, INT8_TOLERANCES, quantize_encoders
from export.manifest import build_manifest, check_vocabulary, copy_vocab
from export.onnx_export import DEFAULT_OPSET, Exporter, check_opset, export_graph
from export.samples import sample_token_ids, sample_videos
from export.tensorrt_build import TrtBuildOptions
from export.trt_check import TrtCheckReport, check_graphs
from export.verify import ORT_FP16_CPU_DISABLED_OPTIMIZERS, Tolerances, VerificationError, verify_bundle
from export.verify_engines import EngineVerificationError, selection_agreement, verify_engines
from runtime.bundle.contract import MANIFEST_FILE, SCORER, TEXT_ENCODER, VIDEO_ENCODER, graph_specs
from ucofia.checkpoints import weights_fingerprint
from ucofia.io_utils import atomic_directory, atomic_write_text
from ucofia.model import UCoFiA

# Batch sizes of the tracing sample (verification uses other sizes on purpose).
EXPORT_TEXTS = 3
EXPORT_VIDEOS = 2
EXPORT_SEED = 0

logger = logging.getLogger(__name__)


class TrtCompatibilityError(RuntimeError):
    """The static TensorRT check found errors while --trt was requested."""

    def __init__(self, message: str, report: TrtCheckReport) -> None:
        super().__init__(message)
        self.report = report


def _export_inputs(model: UCoFiA) -> dict[str, tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(EXPORT_SEED)
    ids = sample_token_ids(model, EXPORT_TEXTS, gen)
    f = model.config.max_frames
    videos = sample_videos(model, [f, max(1, f // 2)][:EXPORT_VIDEOS], gen)
    with torch.no_grad():
        text = model.encode_text(ids)
        video = model.encode_video(videos.frames, videos.video_mask)
    return {
        TEXT_ENCODER: (ids,),
        VIDEO_ENCODER: (videos.frames, videos.video_mask),
        SCORER: (text.sentence, text.words, video.video, video.frames, video.patches),
    }


def _verify_engines(directory: Path, specs: dict, section: dict[str, Any], report: Any, model: UCoFiA,
                    trt_module: Any) -> dict[str, Any]:
    """Run the engines just built on the verification's inputs against onnxruntime (``export.verify_engines``);
    raise EngineVerificationError when they differ beyond the tolerances."""
    if report is None:
        return {"passed": None, "skipped": "verification turned off (verify=False): the engines were not run"}
    logger.info("verifying the TensorRT engines against onnxruntime")
    cfg = model.config
    engines = verify_engines(directory, specs, section, report.cases, report.tolerances, cfg.top_k,
                             cfg.patches_per_frame, trt_module)
    if not engines.passed:
        raise EngineVerificationError("TensorRT engines differ from onnxruntime beyond the tolerances:\n  "
                                      + "\n  ".join(engines.failures()), engines)
    agreement = selection_agreement(engines)
    logger.info("  engines agree with onnxruntime; patch selection identical on "
                + ("no frames" if agreement is None else f"{agreement:.1%} of frames"))
    return engines.to_dict()


def export_bundle(model: UCoFiA, out_dir: str | Path, *, fp16: bool = False, opset: int = DEFAULT_OPSET,
                  force: bool = False, verify: bool = True, exporter: Exporter = "torchscript",
                  trt: bool = False, trt_options: TrtBuildOptions | None = None,
                  tolerances: Tolerances | None = None, source: dict[str, Any] | None = None,
                  int8: bool = False,
                  allow_small_vocab: bool = False) -> dict[str, Any]:
    """Export ``model`` to a bundle directory and return its manifest.

    ``int8``: quantise the encoder graphs dynamically to int8 (``export.int8``; lossy, CPU).
    ``allow_small_vocab``: export a model whose text tower has fewer token embeddings than the
    CLIP BPE tokenizer has ids (otherwise SmallVocabularyError); its bundle can only encode token
    ids from elsewhere, the runtime refuses ids beyond its vocabulary.

    Each step is logged (``logging``, logger ``export.bundle``) as it starts.

    With ``trt``, every engine built is run on the verification's inputs and compared with
    onnxruntime (``export.verify_engines``; results in the manifest's ``tensorrt.verification``).

    Raises SmallVocabularyError, FileExistsError (``out_dir`` exists, no ``force``), ExportError, TrtCompatibilityError
    (``trt`` and the static check failed), VerificationError (ORT differs from PyTorch beyond
    ``tolerances``), EngineVerificationError (an engine differs from ORT) or TensorRTError; in every
    such case nothing is written.
    """
    out_dir = Path(out_dir)
    if not isinstance(model, UCoFiA):
        raise TypeError(f"export_bundle needs a ucofia UCoFiA model, got {type(model).__name__}")
    check_opset(opset, exporter)
    check_vocabulary(model.config, allow_small_vocab)
    if int8 and (fp16 or trt):
        raise ValueError("int8 encoders are an onnxruntime CPU option: they cannot be combined with "
                         + ("fp16" if fp16 else "TensorRT engines (trt)") + "; export them separately")
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} already exists; pass --force (force=True) to replace it")
    start = time.perf_counter()
    trt_module, device = None, None
    if trt:  # fail before the slow part when TensorRT or the GPU is missing
        trt_module, device = tensorrt_build.import_tensorrt(), tensorrt_build.device_info()
    dtype = "float16" if fp16 else "float32"
    was_training = model.training
    model.eval()
    try:
        fingerprint = weights_fingerprint(model)
        specs32 = graph_specs(model.config, "float32")
        specs = graph_specs(model.config, dtype)
        with atomic_directory(out_dir, force=force) as tmp:
            logger.info(f"tracing sample inputs (T={EXPORT_TEXTS}, V={EXPORT_VIDEOS})")
            inputs = _export_inputs(model)
            modules = graph_modules(model)
            fp16_stats: dict[str, Any] | None = {} if fp16 else None
            for key, spec in specs32.items():
                t0 = time.perf_counter()
                logger.info(f"exporting {spec.file} ({exporter}, opset {opset})")
                proto = export_graph(modules[key], inputs[key], tmp / spec.file, spec, opset, exporter)
                if fp16:
                    logger.info(f"converting {spec.file} to float16 (float32 islands)")
                    proto, stats = convert_to_fp16(proto, DEFAULT_ISLANDS[key])
                    onnx.save(proto, str(tmp / spec.file))
                    fp16_stats[key] = stats.to_dict()  # type: ignore[index]
                size_mb = (tmp / spec.file).stat().st_size / 1e6
                logger.info(f"  {spec.file}: {size_mb:.1f} MB in {time.perf_counter() - t0:.1f}s")

            int8_section = None
            if int8:
                logger.info("quantising the encoders to int8 (onnxruntime dynamic quantisation)")
                int8_section = quantize_encoders(tmp, specs32)
                tolerances = tolerances or INT8_TOLERANCES

            logger.info("static TensorRT compatibility check")
            # int8 encoders are for onnxruntime's CPU provider only: TensorRT's view of them is moot
            unchecked = set(INT8_GRAPHS) if int8 else set()
            trt_report = check_graphs({key: tmp / spec.file for key, spec in specs.items() if key not in unchecked},
                                      trt_version=str(trt_module.__version__) if trt_module else None)
            trt_check = trt_report.to_dict()
            if unchecked:
                trt_check["not_checked"] = dict.fromkeys(sorted(unchecked), "int8 encoder (onnxruntime CPU only)")
            if trt and not trt_report.ok:
                raise TrtCompatibilityError(
                    f"{len(trt_report.errors)} TensorRT compatibility errors:\n  "
                    + "\n  ".join(str(i) for i in trt_report.errors), trt_report)

            verification, report = None, None
            if verify:
                logger.info("verifying the graphs in onnxruntime against PyTorch")
                model.eval()  # hard top-k reference, whatever the exporters did to module modes
                report = verify_bundle(model, tmp, specs, dtype, tolerances)
                verification = report.to_dict()
                if not report.passed:
                    raise VerificationError(
                        "ONNX outputs differ from PyTorch beyond the tolerances:\n  "
                        + "\n  ".join(report.failures()), report)

            copy_vocab(tmp)
            tensorrt = None
            versions: dict[str, str] = {}
            if trt:
                logger.info("building TensorRT engines")
                tensorrt = tensorrt_build.build_engines(tmp, specs, dtype, trt_options or TrtBuildOptions(),
                                                        trt=trt_module, device=device)
                versions["tensorrt"] = tensorrt["version"]
                tensorrt["verification"] = _verify_engines(tmp, specs, tensorrt, report, model, trt_module)
            hints = {"cpu_disabled_optimizers": list(ORT_FP16_CPU_DISABLED_OPTIMIZERS)} if fp16 else {}
            manifest = build_manifest(
                config=model.config, fingerprint=fingerprint, dtype=dtype, opset=opset, exporter=exporter,
                specs=specs, verification=verification, trt_check=trt_check, tensorrt=tensorrt,
                fp16=None if fp16_stats is None else {
                    "graphs": fp16_stats, "fp32_islands": {k: v.to_dict() for k, v in DEFAULT_ISLANDS.items()}},
                source=source, onnxruntime_hints=hints, extra_versions=versions, int8=int8_section,
                seconds=time.perf_counter() - start)
            atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2))
        return manifest
    finally:
        model.train(was_training)
