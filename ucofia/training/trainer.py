"""The training loop: reference recipe, gradient accumulation, AMP, DDP, exact resume, evaluation.

``train(cfg, run_dir, resume=False)`` does, in this order: every check that can fail (config,
run directory, dataset annotations, model / checkpoint), then the frame cache, then training.
One optimizer step consumes ``optim.batch_size`` pairs (``grad_accum`` micro-batches, each split
over the ranks); each micro-batch's loss is the contrastive loss over the features of all ranks,
as in the reference. After every step the logit scale is clamped to ``ln(logit_scale_max)``.

Exact resume: the pair order of an epoch is a pure function of (seed, epoch); checkpoints store the
optimizer, scheduler, grad-scaler and per-rank RNG states plus (epoch, step-in-epoch, step), so a
run killed after step k and resumed reproduces the uninterrupted weights bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ucofia.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from ucofia.io_utils import atomic_write_text
from ucofia.model import UCoFiA
from ucofia.progress import progress_bar
from ucofia.training import cpu_numerics
from ucofia.training import state as st
from ucofia.training.config import TrainConfig, TrainConfigError, config_from_dict, metric_higher_is_better, validate
from ucofia.training.data import MicroBatches, SplitData, epoch_pairs, iterate, pairs_per_epoch, to_device
from ucofia.training.distributed import DistInfo, barrier, init_distributed
from ucofia.training.evaluate import EvalSettings, evaluate_split, flatten
from ucofia.training.loss import ContrastiveObjective
from ucofia.training.model_setup import build_training_model
from ucofia.training.optim import build_optimizer, build_scheduler

# Config fields that may differ on --resume: they do not change what is computed.
RESUME_MUTABLE = {
    "run": None,  # whole section
    "data": {"cache_dir", "decode_workers", "loader_workers"},
    "checkpoint": {"keep", "every_steps", "every_epochs"},
    "eval": {"video_batch", "text_batch", "sim_text_chunk", "sim_video_chunk", "test_at_end", "test_last",
             "test_sk", "test_sk_bank_size"},
    "optim": {"max_steps"},
}
logger = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainError(RuntimeError):
    """A training run cannot start or continue (run directory, data sizes, resume state)."""


@dataclass
class Progress:
    """Counters saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps done inside the current epoch
    best_value: float | None = None
    best_step: int | None = None
    last_eval_step: int = -1
    metrics_records: int = 0  # lines of metrics.jsonl written so far
    elapsed_s: float = 0.0  # training wall time so far (all sessions)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs_done: int
    best_step: int | None
    best_value: float | None
    test: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    stopped_early: bool = False


# ---- run directory and config -------------------------------------------------------------------
def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to mix runs: an existing non-empty RUN_DIR needs --resume or --force."""
    if resume:
        if not (run_dir / st.LAST).is_dir():
            raise TrainError(f"cannot resume: {run_dir / st.LAST} does not exist (no checkpoint was saved "
                             "in this run directory); start without --resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"output {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(p.name != "frame_cache" for p in run_dir.iterdir()) and not force:
        raise TrainError(f"run directory {run_dir} is not empty; pass --resume to continue that run, "
                         "--force to start over in it, or choose another -o")


def resolve_resume_config(saved_yaml: Path, cfg: TrainConfig | None) -> TrainConfig:
    """The saved run config, with the mutable fields of ``cfg`` (when given) applied."""
    import yaml

    saved = validate(config_from_dict(yaml.safe_load(saved_yaml.read_text()), str(saved_yaml)))
    if cfg is None:
        return saved
    new, old = cfg.to_dict(), saved.to_dict()
    diffs = []
    for section, values in new.items():
        mutable = RESUME_MUTABLE.get(section, set())
        for key, value in values.items():
            if old[section].get(key) != value and not (mutable is None or key in mutable):
                diffs.append(f"{section}.{key}: run {old[section].get(key)!r} -> now {value!r}")
    if diffs:
        raise TrainConfigError(
            f"--resume: the config differs from the run's {saved_yaml} in fields that change the "
            f"result: {'; '.join(diffs)}. Resume without --config, or start a new run")
    merged = config_from_dict(new, cfg.source)
    return validate(merged)


# ---- the trainer ------------------------------------------------------------------------------
class Trainer:
    """One training run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, force: bool = False,
                 splits: dict[str, SplitData] | None = None,
                 after_step: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.force = force
        self.injected_splits = splits
        self.after_step = after_step  # test hook: called after each optimizer step (may raise)
        self.dist: DistInfo = DistInfo()
        self.progress = Progress()
        self._saved_progress: tuple | None = None

    # ---- logging ----------------------------------------------------------------------------
    def log(self, msg: str, level: int = logging.INFO) -> None:
        """Log ``msg`` from the main process only (every rank runs the same code)."""
        if self.dist.is_main:
            logger.log(level, "%s", msg)

    # ---- setup ------------------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        precision = self.cfg.optim.precision
        if precision == "fp32":
            return None
        if self.dist.device.type != "cuda":
            raise TrainConfigError(f"optim.precision={precision} needs a CUDA device; use optim.precision=fp32 on CPU")
        return AMP_DTYPES[precision]

    def _sizes(self, train: SplitData) -> tuple[int, int, int]:
        """(pairs per rank per micro-batch, micro-batches per epoch, steps per epoch)."""
        o = self.cfg.optim
        micro = o.batch_size // o.grad_accum
        world = self.dist.world_size
        if micro % world:
            raise TrainConfigError(
                f"optim.batch_size / optim.grad_accum = {micro} pairs per micro-batch is not divisible by "
                f"the {world} processes")
        n_pairs = pairs_per_epoch(train, self.cfg.data.sampling)
        steps = n_pairs // o.batch_size
        if steps < 1:
            raise TrainConfigError(
                f"the training split has {n_pairs} pairs per epoch (data.sampling={self.cfg.data.sampling}), "
                f"fewer than optim.batch_size={o.batch_size}; lower the batch size")
        return micro // world, steps * o.grad_accum, steps

    def _check_split(self, split: SplitData, model: UCoFiA) -> None:
        c = model.config
        if split.frames.shape[1:] != (c.max_frames, c.clip.image_size, c.clip.image_size, 3):
            raise TrainError(f"split {split.name}: cached frames {split.frames.shape[1:]} do not fit the model "
                             f"({c.max_frames} frames of {c.clip.image_size}px)")
        if split.input_ids.shape[1] != c.max_words:
            raise TrainError(f"split {split.name}: {split.input_ids.shape[1]} tokens per caption, the model "
                             f"expects max_words={c.max_words}")

    def _eval_settings(self) -> EvalSettings:
        e = self.cfg.eval
        return EvalSettings(video_batch=e.video_batch, text_batch=e.text_batch, text_chunk=e.sim_text_chunk,
                            video_chunk=e.sim_video_chunk, sk=e.sk, sk_bank_size=e.sk_bank_size,
                            sk_video_bank_size=e.sk_video_bank_size, seed=self.cfg.optim.seed)

    # ---- checkpoints ------------------------------------------------------------------------
    def _progress_key(self) -> tuple:
        p = self.progress
        return (p.step, p.epoch, p.step_in_epoch, p.best_value, p.best_step, p.last_eval_step, p.metrics_records)

    def _training_state(self, optimizer, scheduler, scaler) -> dict[str, Any]:
        rng = st.capture_rng()
        if self.dist.distributed:
            per_rank: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        p = self.progress
        return {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": per_rank, "world_size": self.dist.world_size,
            "progress": {"step": p.step, "epoch": p.epoch, "step_in_epoch": p.step_in_epoch,
                         "best_value": p.best_value, "best_step": p.best_step,
                         "last_eval_step": p.last_eval_step, "metrics_records": p.metrics_records,
                         "elapsed_s": p.elapsed_s},
        }

    def _save(self, model: UCoFiA, optimizer, scheduler, scaler, step_checkpoint: bool) -> None:
        snapshot = self._progress_key()
        if not step_checkpoint and self._saved_progress == snapshot:
            return  # `last` already holds exactly this state
        self._saved_progress = snapshot
        state = self._training_state(optimizer, scheduler, scaler)  # collective: every rank
        if not self.dist.is_main:
            return
        meta = {"step": self.progress.step, "epoch": self.progress.epoch,
                "step_in_epoch": self.progress.step_in_epoch, "kind": "training"}
        if step_checkpoint:
            path = self.run_dir / st.STEP_DIR / st.step_dir_name(self.progress.step)
            save_checkpoint(path, model, training_state=state, meta=meta)
            st.prune_step_checkpoints(self.run_dir, self.cfg.checkpoint.keep)
        save_checkpoint(self.run_dir / st.LAST, model, training_state=state, meta=meta)

    def _restore(self, meta: dict[str, Any], optimizer, scheduler, scaler) -> None:
        ts = meta.get("training_state")
        if ts is None:
            raise CheckpointError(f"{self.run_dir / st.LAST} has no training state; cannot resume exactly")
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        rngs = ts["rng"]
        if ts.get("world_size") == self.dist.world_size and len(rngs) == self.dist.world_size:
            st.restore_rng(rngs[self.dist.rank])
        else:
            self.log(f"the run was saved with {ts.get('world_size')} processes, resuming with "
                     f"{self.dist.world_size}: data order is kept, random top-k noise is reseeded", logging.WARNING)
            st.seed_everything(self.cfg.optim.seed + 7919 * (ts["progress"]["step"] + 1) + self.dist.rank)
        p = ts["progress"]
        self.progress = Progress(**p)
        metrics = self.run_dir / st.METRICS_NAME
        if self.dist.is_main and metrics.is_file():  # drop records written after this checkpoint
            lines = metrics.read_text().splitlines()[: self.progress.metrics_records]
            atomic_write_text(metrics, "".join(line + "\n" for line in lines))

    # ---- evaluation -------------------------------------------------------------------------
    def _evaluate(self, model: UCoFiA, splits: dict[str, SplitData], amp) -> dict[str, Any] | None:
        """Evaluate the val split on rank 0, log it, update `best`; every rank waits."""
        val = splits.get("val")
        record = None
        if self.progress.last_eval_step == self.progress.step:
            return None
        if self.dist.is_main and val is not None:
            t0 = time.perf_counter()
            results = evaluate_split(model, val, splits["train"], self._eval_settings(), self.dist.device, amp)
            flat = flatten(results)
            record = {"step": self.progress.step, "epoch": self.progress.epoch, "split": val.name,
                      "eval_s": round(time.perf_counter() - t0, 3), "metrics": results}
            metrics_path = self.run_dir / st.METRICS_NAME
            previous = metrics_path.read_text() if metrics_path.is_file() else ""
            atomic_write_text(metrics_path, previous + json.dumps(record) + "\n")  # temp + rename
            self.progress.metrics_records += 1
            name = self.cfg.eval.select_metric
            value = flat[name]
            better = (self.progress.best_value is None or
                      (value > self.progress.best_value if metric_higher_is_better(name)
                       else value < self.progress.best_value))
            if better:
                self.progress.best_value, self.progress.best_step = value, self.progress.step
                save_checkpoint(self.run_dir / st.BEST, model, meta={
                    "step": self.progress.step, "epoch": self.progress.epoch, "kind": "best",
                    "select_metric": name, "value": value, "split": val.name, "metrics": results})
            self.log(f"[step {self.progress.step}] {val.name}: t2v R@1 {flat['t2v.all.R1']:.1f}"
                     + (f" (+SK {flat['t2v.all_sk.R1']:.1f})" if "t2v.all_sk.R1" in flat else "")
                     + f", v2t R@1 {flat['v2t.all.R1']:.1f}; {name} = {value:.2f}"
                     + (" (best)" if better else f" (best {self.progress.best_value:.2f} @ {self.progress.best_step})"))
        self.progress.last_eval_step = self.progress.step
        if self.dist.distributed:
            barrier()
        return record

    def _final_test(self, model: UCoFiA, splits: dict[str, SplitData], amp) -> dict[str, Any]:
        """Test-split metrics of `best` (and `last`); reporting only, never used for selection."""
        test = splits.get("test")
        if test is None or not self.cfg.eval.test_at_end or not self.dist.is_main:
            return {}
        e = self.cfg.eval
        settings = dataclasses.replace(self._eval_settings(), sk=e.test_sk, sk_bank_size=e.test_sk_bank_size)
        out: dict[str, Any] = {"split": test.name, "sk_bank_captions": None}
        candidates: list[tuple[str, Callable[[], UCoFiA], int | None]] = []
        best_step = self.progress.best_step
        if (self.run_dir / st.BEST).is_dir() and best_step is not None:
            candidates.append(("best", lambda: load_checkpoint(self.run_dir / st.BEST)[0].to(self.dist.device),
                               best_step))
        if e.test_last or not candidates:
            candidates.append(("last", lambda: model, self.progress.step))
        for name, get_model, step in candidates:
            if name == "last" and "best" in out and best_step == step:
                out["last"] = out["best"]  # same weights: no second evaluation
                continue
            self.log(f"testing `{name}` (step {step}) on the {test.name} split")
            t0 = time.perf_counter()
            metrics = evaluate_split(get_model(), test, splits["train"], settings, self.dist.device, amp)
            out[name] = {"step": step, "metrics": metrics, "eval_s": round(time.perf_counter() - t0, 1)}
        if settings.sk:
            out["sk_bank_captions"] = (splits["train"].num_texts if not settings.sk_bank_size
                                       else min(settings.sk_bank_size, splits["train"].num_texts))
        return out

    # ---- main entry -------------------------------------------------------------------------
    def preflight(self) -> None:
        """Every check that can fail before expensive work: config, run dir, dataset, model."""
        cfg = self.cfg
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        self.dist = init_distributed(cfg.run.device, cfg.run.dist_backend, cfg.run.dist_timeout_min)
        if cfg.run.reproducible_cpu and self.dist.device.type == "cpu":
            for problem in cpu_numerics.problems():
                self.log(f"run.reproducible_cpu is not in effect: {problem} (this process used torch "
                         f"before the setting could apply); the result will differ between CPU types. "
                         f"Run `ucofia train` in a fresh process, or start Python with {cpu_numerics.env_hint()}",
                         logging.WARNING)
        self._amp = self._amp_dtype()
        if self.dist.is_main:
            check_run_dir(self.run_dir, self.resume, self.force)
        if self.dist.distributed:
            barrier()
        self._annotations = None
        if self.injected_splits is None:
            from ucofia.training.prepare import check_dataset

            self._annotations = check_dataset(cfg)
        self._model, self._meta = build_training_model(
            cfg, seed=cfg.optim.seed, resume_dir=self.run_dir / st.LAST if self.resume else None)
        self._preflight_done = True

    def run(self) -> TrainResult:
        if not getattr(self, "_preflight_done", False):
            self.preflight()
        with cpu_numerics.portable_kernels(self.cfg.run.reproducible_cpu):
            return self._train()

    def _train(self) -> TrainResult:
        cfg = self.cfg
        amp, annotations, model, meta = self._amp, self._annotations, self._model, self._meta
        model.to(self.dist.device)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                atomic_write_text(self.run_dir / st.CONFIG_NAME, cfg.to_yaml())
                atomic_write_text(self.run_dir / st.METRICS_NAME, "")
                for stale in (st.LAST, st.BEST, st.STEP_DIR):  # --force: nothing of an old run survives
                    if (self.run_dir / stale).exists():
                        shutil.rmtree(self.run_dir / stale)
        # 2. data (the frame cache is built by rank 0 while the others wait)
        if self.injected_splits is not None:
            splits = self.injected_splits
        else:
            from ucofia.training.prepare import prepare_splits

            splits = prepare_splits(cfg, model.config, self.run_dir, annotations, self.dist)
        for split in splits.values():
            self._check_split(split, model)
        train = splits["train"]
        per_rank, micro_per_epoch, steps_per_epoch = self._sizes(train)
        o = cfg.optim
        total_steps = o.epochs * steps_per_epoch
        stop_at = min(total_steps, o.max_steps) if o.max_steps else total_steps
        # 3. optimisation state
        optimizer = build_optimizer(model, o)
        scheduler = build_scheduler(optimizer, o, total_steps)
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        if self.resume:
            self._restore(meta, optimizer, scheduler, scaler)
        else:
            st.seed_everything(o.seed + self.dist.rank)
        objective: torch.nn.Module = ContrastiveObjective(model)
        if self.dist.distributed:
            objective = torch.nn.parallel.DistributedDataParallel(
                objective, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
                find_unused_parameters=cfg.run.find_unused_parameters)
        max_log_scale = math.log(model.config.logit_scale_max)
        self.log(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
                 f"{self.dist.world_size} x {self.dist.device}: {len(train.video_ids)} videos / "
                 f"{train.num_texts} captions, {steps_per_epoch} steps per epoch x {o.epochs} epochs "
                 f"(batch {o.batch_size} = {o.grad_accum} x {self.dist.world_size} x {per_rank})"
                 + (f", resuming at step {self.progress.step}" if self.resume else ""))
        with progress_bar(stop_at, "train", "step", initial=self.progress.step,
                          show=self.dist.is_main and cfg.run.progress) as bar:
            session_start = time.perf_counter()
            elapsed_before = self.progress.elapsed_s
            model.train()
            stopped = False
            loss_sum, loss_n = 0.0, 0
            while self.progress.epoch < o.epochs and self.progress.step < stop_at:
                epoch = self.progress.epoch
                order = epoch_pairs(train, epoch, o.seed, cfg.data.sampling)
                start_micro = self.progress.step_in_epoch * o.grad_accum
                batches = MicroBatches(train, order, per_rank, self.dist.world_size, self.dist.rank,
                                       start=start_micro, count=micro_per_epoch - start_micro)
                for i, host in enumerate(iterate(batches, cfg.data.loader_workers)):
                    sync = (i + 1) % o.grad_accum == 0
                    b = to_device(host, model.config, self.dist.device)
                    no_sync = objective.no_sync() if (self.dist.distributed and not sync) else contextlib.nullcontext()
                    with no_sync:
                        with (torch.autocast(device_type="cuda", dtype=amp) if amp else contextlib.nullcontext()):
                            loss = objective(b.input_ids, b.attention_mask, b.frames, b.video_mask)
                        scaled = loss / o.grad_accum
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    loss_sum += float(loss.detach())
                    loss_n += 1
                    if not sync:
                        continue
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if o.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        model.clip.logit_scale.clamp_(max=max_log_scale)
                    self.progress.step += 1
                    self.progress.step_in_epoch += 1
                    self.progress.elapsed_s = elapsed_before + time.perf_counter() - session_start
                    if bar.visible:
                        bar(1)
                        bar.postfix(epoch=epoch + 1, loss=f"{loss_sum / max(1, loss_n):.3f}",
                                        lr=f"{scheduler.get_last_lr()[-1]:.2e}",
                                        best=("-" if self.progress.best_value is None
                                              else f"{self.progress.best_value:.1f}"))
                    if self.progress.step % cfg.run.log_every == 0:
                        if not bar.visible:
                            self.log(f"step {self.progress.step}/{stop_at} epoch {epoch + 1} "
                                     f"loss {loss_sum / max(1, loss_n):.4f} lr {scheduler.get_last_lr()[-1]:.3e}")
                        loss_sum, loss_n = 0.0, 0
                    if cfg.eval.every_steps and self.progress.step % cfg.eval.every_steps == 0:
                        self._evaluate(model, splits, amp)
                    if cfg.checkpoint.every_steps and self.progress.step % cfg.checkpoint.every_steps == 0:
                        self._save(model, optimizer, scheduler, scaler, step_checkpoint=True)
                    if self.after_step is not None:
                        self.after_step(self.progress.step)
                    if self.progress.step >= stop_at:
                        break
                if self.progress.step_in_epoch >= steps_per_epoch:
                    self.progress.epoch += 1
                    self.progress.step_in_epoch = 0
                    done = self.progress.epoch
                    if (cfg.eval.every_epochs and done % cfg.eval.every_epochs == 0) or done == o.epochs:
                        self._evaluate(model, splits, amp)
                    if cfg.checkpoint.every_epochs and done % cfg.checkpoint.every_epochs == 0:
                        self._save(model, optimizer, scheduler, scaler, step_checkpoint=False)
                if self.progress.step >= stop_at:
                    break
            stopped = self.progress.step < total_steps
            if self.progress.last_eval_step != self.progress.step:
                self._evaluate(model, splits, amp)
            self.progress.elapsed_s = elapsed_before + time.perf_counter() - session_start
            self._save(model, optimizer, scheduler, scaler, step_checkpoint=False)
        test = self._final_test(model, splits, amp)
        result = TrainResult(run_dir=self.run_dir, steps=self.progress.step, epochs_done=self.progress.epoch,
                             best_step=self.progress.best_step, best_value=self.progress.best_value, test=test,
                             elapsed_s=self.progress.elapsed_s, stopped_early=stopped)
        if self.dist.is_main:
            write_results(self.run_dir, cfg, result)
        if self.dist.distributed:
            barrier()
        return result


def write_results(run_dir: Path, cfg: TrainConfig, result: TrainResult) -> None:
    """results.json (everything) and results.md (README-ready tables) for the test split."""
    from ucofia.training.report import markdown_tables

    payload = {"steps": result.steps, "epochs_done": result.epochs_done, "best_step": result.best_step,
               "select_metric": cfg.eval.select_metric, "best_value": result.best_value,
               "train_wall_s": round(result.elapsed_s, 1), "stopped_early": result.stopped_early,
               "test": result.test}
    atomic_write_text(run_dir / "results.json", json.dumps(payload, indent=1))
    if result.test:
        atomic_write_text(run_dir / "results.md", markdown_tables(result.test))


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, force: bool = False,
          **kwargs: Any) -> TrainResult:
    """Run one training (see Trainer)."""
    return Trainer(cfg, run_dir, resume=resume, force=force, **kwargs).run()


__all__ = ["TrainError", "TrainResult", "Trainer", "check_run_dir", "resolve_resume_config", "train"]
