"""``ucofia train``: train UCoFiA with the reference recipe (single process or torchrun DDP)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from ucofia.cli_support import TRAIN_EXTRA, TRAIN_MODULES, needs_extra, verbosity

# flag -> dotted config field (every field is also reachable with --set section.field=value)
FLAG_FIELDS: dict[str, str] = {
    "data": "data.path", "dataset": "data.dataset", "cache_dir": "data.cache_dir",
    "backbone": "model.backbone", "pretrained": "model.pretrained", "init": "model.init_checkpoint",
    "epochs": "optim.epochs", "batch_size": "optim.batch_size", "grad_accum": "optim.grad_accum",
    "lr": "optim.lr", "coef_lr": "optim.coef_lr", "precision": "optim.precision", "seed": "optim.seed",
    "max_steps": "optim.max_steps", "device": "run.device", "threads": "run.num_threads",
}


@click.command("train")
@click.option("-c", "--config", "config", default=None, metavar="NAME|FILE",
              help="Training YAML, or a packaged config: 'demo' (tiny model on the demo benchmark) or "
                   "'msrvtt' (reference ViT-B/32 recipe). Default: the reference recipe.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Run directory (checkpoints last/ best/ checkpoints/, metrics.jsonl, results).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override any config field, e.g. --set optim.lr=3e-4 --set model.max_frames=8 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in -o exactly where its `last` checkpoint stopped.")
@click.option("--force", is_flag=True, help="Start over in a non-empty run directory (its frame cache is reused).")
@click.option("--check", is_flag=True, help="Validate config, data annotations and model, then exit without training.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("--data", type=str, default=None, help="Dataset folder (data.path), e.g. a `ucofia demo-data` output.")
@click.option("--dataset", type=str, default=None,
              help="Dataset layout (data.dataset): msrvtt, msvd, didemo, activitynet, lsmdc, vatex, csv; "
                   "default auto (MSR-VTT layout, as the demo benchmark).")
@click.option("--cache-dir", type=str, default=None,
              help="Frame cache folder (data.cache_dir; default RUN_DIR/frame_cache).")
@click.option("--backbone", type=str, default=None,
              help="'tiny' or an open_clip ViT name such as ViT-B-32 (model.backbone).")
@click.option("--pretrained", type=str, default=None,
              help="open_clip pretrained tag or local CLIP weights file (model.pretrained).")
@click.option("--init", type=str, default=None,
              help="Start from a UCoFiA checkpoint: ours or a reference .bin (model.init_checkpoint).")
@click.option("--epochs", type=int, default=None, help="optim.epochs")
@click.option("--batch-size", type=int, default=None, help="optim.batch_size: pairs per optimizer step over all GPUs.")
@click.option("--grad-accum", type=int, default=None, help="optim.grad_accum")
@click.option("--lr", type=float, default=None, help="optim.lr (heads); CLIP gets lr * coef_lr")
@click.option("--coef-lr", type=float, default=None, help="optim.coef_lr")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="optim.precision (GPU autocast)")
@click.option("--seed", type=int, default=None, help="optim.seed")
@click.option("--max-steps", type=int, default=None, help="optim.max_steps: stop after N optimizer steps")
@click.option("--device", type=str, default=None, help="run.device: auto, cpu, cuda, cuda:N")
@click.option("--threads", type=int, default=None, help="run.num_threads: torch CPU threads")
@click.option("--no-progress", is_flag=True, help="No progress bars (log lines instead).")
@verbosity
@needs_extra(TRAIN_EXTRA, TRAIN_MODULES)
def train(config: str | None, output: Path, sets: tuple[str, ...], resume: bool, force: bool, check: bool,
          print_config: bool, no_progress: bool, **flags: Any) -> None:
    """Train UCoFiA: CLIP towers + patch selection + the three ISA levels, contrastive loss.

    \b
    Examples:
      ucofia demo-data -o demo && ucofia train --config demo --data demo -o runs/demo
      ucofia train --config msrvtt --data /data/msrvtt --pretrained openai -o runs/b32
      torchrun --nproc_per_node 4 -m ucofia.cli train --config msrvtt --data /data/msrvtt -o runs/b32
      ucofia train -o runs/demo --resume
    """
    fresh = "torch" not in sys.modules  # a new process: torch has run no kernel yet
    _passive_openmp()
    from ucofia.config import ConfigError
    from ucofia.training.config import parse_override

    overrides: dict[str, Any] = {}
    try:
        for text in sets:
            key, value = parse_override(text)
            overrides[key] = value
        for name, dotted in FLAG_FIELDS.items():
            if flags.get(name) is not None:
                overrides[dotted] = flags[name]
        if no_progress:
            overrides["run.progress"] = False
        cfg = _resolve(config, overrides, output, resume)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _absolute_paths(cfg)
    if print_config:
        click.echo(cfg.to_yaml(), nl=False)
        return
    if cfg.run.reproducible_cpu and fresh:
        _pin_cpu_kernels()
    _run(cfg, output, resume, force, check)


def _pin_cpu_kernels() -> None:
    """run.reproducible_cpu: pin torch's CPU kernels through the environment, before its first op.

    Only in a fresh process (the console script, torchrun): a host that already ran torch (a test
    runner, a notebook) keeps its kernels, and the trainer warns that the setting is not in effect.
    """
    from ucofia.training.cpu_numerics import apply_env

    note = apply_env()
    if note:
        click.echo(f"warning: {note}", err=True)


def _passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless OMP_WAIT_POLICY is set).

    On a shared CPU, spinning threads of a 2-thread process wait for a descheduled sibling at every
    parallel region; measured here under load, a training step took 8.4 s spinning vs 2.6 s passive.
    Only effective before torch is imported, which is the case for the CLI.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _resolve(config: str | None, overrides: dict[str, Any], output: Path, resume: bool):
    """The run's config: on --resume the saved one (flags may change only result-neutral fields)."""
    import copy

    from ucofia.training import state as st
    from ucofia.training.config import apply_overrides, load_config, validate
    from ucofia.training.trainer import resolve_resume_config

    saved = output / st.CONFIG_NAME
    if resume and saved.is_file():
        if config is None:
            current = apply_overrides(copy.deepcopy(resolve_resume_config(saved, None)), overrides)
        else:
            current = load_config(config, overrides)
        _absolute_paths(current)
        return resolve_resume_config(saved, validate(current))
    return load_config(config, overrides)


def _absolute_paths(cfg) -> None:
    """Make path fields absolute so a resumed run finds its data from any working directory."""
    for section, name in (("data", "path"), ("data", "cache_dir"), ("model", "init_checkpoint"),
                          ("model", "pretrained")):
        holder = getattr(cfg, section)
        value = getattr(holder, name)
        if value and (name != "pretrained" or Path(value).exists()):
            setattr(holder, name, str(Path(value).expanduser().resolve()))


def _run(cfg, output: Path, resume: bool, force: bool, check: bool) -> None:
    from ucofia.checkpoints import CheckpointError
    from ucofia.config import ConfigError
    from ucofia.training.frame_cache import FrameCacheError
    from ucofia.training.report import print_rich_summary
    from ucofia.training.trainer import Trainer, TrainError

    trainer = Trainer(cfg, output, resume=resume, force=force)
    start = time.perf_counter()
    try:
        if check:
            trainer.preflight()
            click.echo(f"ok: config, data and model checks passed for {output}")
            return
        result = trainer.run()
    except (ConfigError, CheckpointError, TrainError, FrameCacheError) as exc:
        raise click.ClickException(str(exc)) from None
    if not trainer.dist.is_main:
        return
    wall = time.perf_counter() - start
    if result.test:
        print_rich_summary(result.test)
    best = "none (no validation split)" if result.best_step is None else \
        f"step {result.best_step} ({cfg.eval.select_metric} = {result.best_value:.2f} on val)"
    click.echo(f"done: {result.steps} steps, {result.epochs_done} epochs in {result.elapsed_s:.0f} s of training "
               f"({wall:.0f} s in this command); best: {best}")
    click.echo(f"  run directory: {output}  (last/ best/ metrics.jsonl results.md)")
