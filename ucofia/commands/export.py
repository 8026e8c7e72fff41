"""``ucofia export``: checkpoint -> verified ONNX (optionally TensorRT) bundle directory."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from runtime.bundle.contract import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from ucofia.cli_support import TRAIN_EXTRA, TRAIN_MODULES, needs_extra, verbosity


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write (must not exist unless --force).")
@click.option("--fp16", is_flag=True, help="Half-precision graphs (LayerNorm, softmax, ISA and top-k stay float32).")
@click.option("--int8", is_flag=True,
              help="Quantise the text and video encoders to int8 (onnxruntime dynamic quantisation; CPU only, "
                   "~3x faster on CPUs with int8 units, lossy: check it with `ucofia parity`). Not with --fp16/--trt.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (*.plan) on this machine's GPU.")
@click.option("--allow-small-vocab", is_flag=True,
              help="Export a checkpoint whose text tower has fewer token embeddings than the CLIP BPE tokenizer's "
                   "49,408 ids (refused otherwise: its bundle cannot encode text; the runtime then rejects any "
                   "token id beyond the model's vocabulary). For test models fed token ids from elsewhere.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET}).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx exporter: torchscript (fast, default) or dynamo (torch.export based, slow).")
@click.option("--min-texts", type=int, default=1, show_default=True, help="TensorRT profile: fewest texts.")
@click.option("--opt-texts", type=int, default=16, show_default=True, help="TensorRT profile: texts to tune for.")
@click.option("--max-texts", type=int, default=64, show_default=True, help="TensorRT profile: most texts.")
@click.option("--min-videos", type=int, default=1, show_default=True, help="TensorRT profile: fewest videos.")
@click.option("--opt-videos", type=int, default=4, show_default=True, help="TensorRT profile: videos to tune for.")
@click.option("--max-videos", type=int, default=16, show_default=True, help="TensorRT profile: most videos.")
@click.option("--scorer-opt-texts", type=int, default=16, show_default=True,
              help="TensorRT scorer profile (its own, for scoring tiles): texts to tune for.")
@click.option("--scorer-max-texts", type=int, default=64, show_default=True,
              help="TensorRT scorer profile: most texts per tile.")
@click.option("--scorer-opt-videos", type=int, default=256, show_default=True,
              help="TensorRT scorer profile: videos to tune for.")
@click.option("--scorer-max-videos", type=int, default=1024, show_default=True,
              help="TensorRT scorer profile: most videos per tile (the runtime sizes tiles to it).")
@click.option("--workspace-gib", type=float, default=4.0, show_default=True, help="TensorRT workspace pool limit.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache file to reuse and update (default: one per TensorRT version "
                   "and GPU under $XDG_CACHE_HOME/ucofia/tensorrt, else ~/.cache/ucofia/tensorrt).")
@verbosity
@needs_extra(TRAIN_EXTRA, TRAIN_MODULES)
def export(checkpoint: Path, out_dir: Path, fp16: bool, int8: bool, trt: bool, allow_small_vocab: bool, opset: int,
           force: bool, exporter: str,
           min_texts: int, opt_texts: int, max_texts: int, min_videos: int, opt_videos: int,
           max_videos: int, scorer_opt_texts: int, scorer_max_texts: int, scorer_opt_videos: int,
           scorer_max_videos: int, workspace_gib: float, timing_cache: Path | None) -> None:
    """Export CHECKPOINT (our checkpoint directory or a reference pytorch_model.bin) to a bundle.

    Writes text_encoder.onnx, video_encoder.onnx, scorer.onnx, the CLIP BPE vocabulary and
    manifest.json, after checking every graph in onnxruntime against PyTorch. Nothing is written
    when a step fails.
    """
    from rich.console import Console

    from export.report import print_summary, print_verification
    from export.tensorrt_build import AxisRange, TrtBuildOptions

    console = Console(stderr=False)
    if out_dir.exists() and not force:
        raise click.ClickException(f"{out_dir} already exists; pass --force to replace it")
    if int8 and (fp16 or trt):
        raise click.UsageError("--int8 (onnxruntime CPU encoders) cannot be combined with --fp16 or --trt; "
                               "export a separate bundle for those")
    try:
        options = TrtBuildOptions(texts=AxisRange(min_texts, opt_texts, max_texts),
                                  videos=AxisRange(min_videos, opt_videos, max_videos),
                                  scorer_texts=AxisRange(1, scorer_opt_texts, scorer_max_texts),
                                  scorer_videos=AxisRange(1, scorer_opt_videos, scorer_max_videos),
                                  workspace_gib=workspace_gib, timing_cache=timing_cache)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--min/--opt/--max-texts/-videos, --scorer-opt/max-texts/"
                                                      "-videos, --workspace-gib") from None

    # heavy (torch) imports only once the arguments are fine
    from export import export_bundle
    from export.bundle import TrtCompatibilityError
    from export.onnx_export import ExportError
    from export.tensorrt_build import TensorRTError
    from export.verify import VerificationError
    from export.verify_engines import EngineVerificationError
    from ucofia.checkpoints import CheckpointError, load_model
    from ucofia.config import ConfigError

    with console.status(f"loading {checkpoint}"):
        try:
            model = load_model(checkpoint)
        except (CheckpointError, ConfigError) as exc:
            raise click.ClickException(f"cannot load {checkpoint}: {exc}") from None
    console.print(f"loaded {checkpoint} ({model.config.clip_model_name}, {model.config.scorer_variant} scorer, "
                  f"patch shift {'on' if model.config.patch_shift_active else 'off'})")
    try:
        with console.status("exporting") as status, _status_follows_the_log(status):
            manifest = export_bundle(model, out_dir, fp16=fp16, opset=opset, force=force, exporter=exporter,  # type: ignore[arg-type]
                                     trt=trt, trt_options=options,
                                     source={"checkpoint": str(checkpoint)}, int8=int8,
                                     allow_small_vocab=allow_small_vocab)
    except VerificationError as exc:
        print_verification(console, exc.report.to_dict())
        raise click.ClickException(f"{exc}\nnothing was written to {out_dir}") from None
    except (TrtCompatibilityError, EngineVerificationError) as exc:
        raise click.ClickException(f"{exc}\nnothing was written to {out_dir}") from None
    except (ExportError, TensorRTError, FileExistsError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nnothing was written to {out_dir}") from None
    print_summary(console, manifest)
    console.print(f"[bold green]wrote[/] {out_dir} ({manifest['dtype']}, opset {manifest['opset']}, "
                  f"fingerprint {manifest['fingerprint'][:12]}…) in {manifest['export_seconds']:.1f}s")


@contextlib.contextmanager
def _status_follows_the_log(status: Any) -> Iterator[None]:
    """Show each step the export logs as the spinner's text while the block runs."""

    class StatusHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            status.update(record.getMessage())

    handler = StatusHandler(logging.INFO)
    target = logging.getLogger("export")
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
