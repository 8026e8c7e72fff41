"""The driver of ``ucofia-run index --ray``: a Ray Data pipeline that decodes videos in CPU tasks,
encodes them in an actor pool (one GPU per actor where the cluster has GPUs) whose actors write
shards straight into the index directory, and commits the shards to ``index.json`` from here.

Exactly once: the driver alone commits, and only shards whose rows all arrived; a row whose id is
already in the index (e.g. a batch delivered again after a retry) is committed as a removed row,
so no id is ever stored twice, and a shard delivered again after its commit is not recorded again.
Shards are named by their rows' ids and files (a retried batch rewrites the same shard; a changed
file gets a new one: ``stages.shard_name``). When the pipeline fails (a node lost with blocks Ray
could not rebuild, actors that kept dying) the driver commits what it has, then runs the pipeline
again over the videos not yet done, up to ``attempts`` times. Shards written but never committed
(a failed attempt, a killed driver) are deleted by the next writer of the index, as in the
single-process path.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle import Bundle
from runtime.distributed import require_ray
from runtime.distributed.stages import ShardEncoder, decode_batch, decode_items
from runtime.errors import RuntimeUserError
from runtime.faults import crash_point
from runtime.index import IDS, SHARDS, IndexWriter, ShardRecord
from runtime.ingest.report import IngestReport
from runtime.remote import RemoteSettings
from ucofia.data.video import VideoSpec

logger = logging.getLogger(__name__)

# Memory a decode task reserves: a batch of uint8 frames plus FFmpeg's buffers, with room to spare.
# Asking for it also keeps Ray Data from fusing decoding into the encoder actors (decoding must
# scale over every CPU of the cluster, not the few encoder actors).
DECODE_TASK_MEMORY = 256 * 2**20
# CPUs a GPU encoder actor holds: its threads turn uint8 frames into the encoder's float input
# (16 ms per ViT-B/32 video on one core) fast enough to keep up with the GPU (~360 videos/s).
GPU_ACTOR_CPUS = 4


@dataclass
class RayOptions:
    """How ``--ray`` runs (see ``ucofia-run index --help``)."""

    address: str | None = None       # None: start Ray locally for this job
    num_cpus: int | None = None      # CPUs of a local Ray (None: all)
    encoders: int | None = None      # encoder actors (None: one per GPU, else one per node)
    decode_batch: int = 8            # videos per decode task (Ray's cost is per task: 2.1 ms of driver per video
                                     # at 8, 6.9 at 2)
    attempts: int = 3                # pipeline runs before giving up
    commit_every_s: float = 5.0      # how often arrived shards are committed (a killed driver loses at most this)


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over the workers that ran it."""

    decode: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    commit: float = 0.0
    wall: float = 0.0
    nodes: int = 0
    encoders: int = 0
    use_gpu: bool = False
    attempts: int = 0
    videos: int = 0

    def summary(self) -> str:
        rate = self.videos / self.wall if self.wall > 0 else 0.0
        return (f"ray: {self.videos} videos in {self.wall:.1f}s ({rate:.2f} videos/s) on {self.nodes} node(s), "
                f"{self.encoders} {'GPU' if self.use_gpu else 'CPU'} encoder actor(s), "
                f"{self.attempts} pipeline run(s); "
                f"worker seconds: decode {self.decode:.1f}, encode {self.encode:.1f}, shard writes {self.write:.1f}; "
                f"driver commits {self.commit:.1f}s")


@dataclass
class _Arrivals:
    """Rows received per shard, until the shard is complete."""

    rows: dict[str, set[str]] = field(default_factory=dict)
    complete: list[str] = field(default_factory=list)

    def add(self, shard: str, vid: str, count: int) -> None:
        got = self.rows.setdefault(shard, set())
        got.add(vid)
        if len(got) == count:
            self.complete.append(shard)
            del self.rows[shard]


def _quiet_ray_data() -> None:
    """Our bar and summary say what Ray Data's progress logs would; keep its warnings, except the
    one saying that its own progress bars are off."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def connect(ray: Any, options: RayOptions) -> None:
    """Connect to the cluster at ``options.address`` or start a local Ray (once per process)."""
    if ray.is_initialized():
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if options.address:
        try:
            ray.init(address=options.address, log_to_driver=False, logging_level=logging.WARNING)
            _quiet_ray_data()
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RuntimeUserError(f"--ray-address {options.address}: cannot connect to a Ray cluster ({exc}); "
                                   f"start one with `ray start --head` and pass the address it prints") from None
        return
    # address="local": always a new Ray for this job, never one found through /tmp/ray (another job's)
    ray.init(address="local", num_cpus=options.num_cpus, **quiet)
    _quiet_ray_data()


def cluster_shape(ray: Any) -> tuple[int, float, float]:
    """(alive nodes, CPUs, GPUs) of the connected cluster."""
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return nodes, float(resources.get("CPU", 0)), float(resources.get("GPU", 0))


def actor_resources(ray: Any, backend: str, options: RayOptions) -> tuple[int, dict[str, Any]]:
    """(how many encoder or scorer actors, the resources of each): one GPU per actor where the
    cluster has GPUs and the backend may use them, else one CPU per actor (its onnxruntime session
    still uses the node's cores: decoding and encoding take turns, as in the single-process path)."""
    nodes, cpus, gpus = cluster_shape(ray)
    use_gpu = gpus >= 1 and backend in ("auto", "cuda", "tensorrt")
    if backend in ("cuda", "tensorrt") and gpus < 1:
        raise RuntimeUserError(f"--backend {backend} with --ray needs GPUs in the Ray cluster, which has none; "
                               f"use --backend cpu or add GPU nodes (`ray start --num-gpus 1 ...`)")
    if not use_gpu and cpus < 2:
        raise RuntimeUserError(f"the Ray cluster has {cpus:g} CPU(s); --ray needs at least 2 (one for an encoder "
                               f"actor, one for decode tasks)")
    count = options.encoders or (int(gpus) if use_gpu else max(1, nodes))
    count = max(1, min(count, int(gpus) if use_gpu else int(cpus) - 1))
    if use_gpu:  # leave CPUs to decoding on small nodes (and never ask more than a GPU's share)
        return count, {"num_gpus": 1, "num_cpus": max(1, min(GPU_ACTOR_CPUS, int(cpus // gpus) - 1))}
    return count, {"num_cpus": 1}


class RayIndexRun:
    """Index ``todo`` into ``writer`` on Ray (the writer's lock is held by this driver)."""

    def __init__(self, writer: IndexWriter, bundle: Bundle, *, backend: str, batch_size: int, threads: int | None,
                 options: RayOptions, report: IngestReport, replaces: dict[str, list[str]] | None = None,
                 progress: Callable[[int], None] | None = None, thumbnails: bool = False,
                 metadata: dict[str, dict[str, Any]] | None = None) -> None:
        self.ray = require_ray()
        self.writer, self.bundle = writer, bundle
        self.backend, self.batch_size, self.threads = backend, batch_size, threads
        self.options, self.report = options, report
        self.replaces = replaces or {}
        self.progress, self.thumbnails = progress, thumbnails
        self.metadata = metadata or {}  # id -> user metadata of its list row (JSON in the decode batch)
        self.times = StageTimes()
        self.done: set[str] = set()  # ids committed or failed in this run
        self.committed_now: set[str] = set()

    # ---- the pipeline ---------------------------------------------------------------------
    def _dataset(self, todo: list[tuple[str, Path]], encoders: int, resources: dict[str, Any]) -> Any:
        import ray.data
        from ray.data import ActorPoolStrategy

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True  # rows in list order, as the single-process index
        items = decode_items(todo, self.metadata)
        blocks = max(1, math.ceil(len(items) / self.options.decode_batch))
        spec = VideoSpec.from_config(self.bundle.config)
        ds = ray.data.from_items(items, override_num_blocks=min(blocks, 100_000))
        # Ray Data's defaults do the retrying: tasks are retried after system failures (max_retries -1),
        # actors restarted and their batches retried (max_restarts / max_task_retries -1).
        # the driver's URL settings (timeouts, retries, size limit, S3 endpoint) travel with the tasks
        fn_kwargs = {"spec": spec, "thumbnails_root": str(self.writer.root.resolve()) if self.thumbnails else None,
                     "remote": RemoteSettings.from_env()}
        ds = ds.map_batches(decode_batch, fn_kwargs=fn_kwargs, batch_size=self.options.decode_batch,
                            batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
        return ds.map_batches(
            ShardEncoder, batch_size=self.batch_size, batch_format="numpy",
            fn_constructor_kwargs={"bundle_dir": str(self.bundle.root.resolve()), "backend": self.backend,
                                   "threads": self.threads, "index_root": str(self.writer.root.resolve()),
                                   "store": self.writer.store, "convert_threads": int(resources["num_cpus"])},
            compute=ActorPoolStrategy(min_size=1, max_size=encoders), **resources)

    def _receive(self, out: dict[str, np.ndarray], arrivals: _Arrivals) -> None:
        t = self.times
        t.decode += float(np.sum(out["decode_s"]))
        t.encode += float(np.sum(out["encode_s"]))
        t.write += float(np.sum(out["write_s"]))
        for vid, path, error, shard, count in zip(out["id"], out["path"], out["error"], out["shard"],
                                                  out["shard_rows"]):
            vid, error = str(vid), str(error)
            if error:
                if vid not in self.done:
                    self.writer.record_failure(vid, str(path), error)
                    self.report.failed.append((vid, error))
                    self.done.add(vid)
            else:
                arrivals.add(str(shard), vid, int(count))
            if self.progress:
                self.progress(1)

    def _commit(self, arrivals: _Arrivals) -> None:
        """Commit every complete shard in one state update (duplicates as removed rows)."""
        if not arrivals.complete:
            return
        start = time.perf_counter()
        records, replace = [], []
        recorded = self.writer.state.shard_names()
        for name in arrivals.complete:
            ids = json.loads((self.writer.root / SHARDS / name / IDS).read_text())
            if name in recorded:  # the same batch delivered again after its shard was committed
                self.done.update(ids)
                continue
            recorded.add(name)
            removed = [row for row, vid in enumerate(ids)
                       if vid in self.committed_now or (vid in self.writer.indexed and vid not in self.replaces)]
            records.append(ShardRecord(name=name, count=len(ids), store=self.writer.store, removed=tuple(removed)))
            dropped = set(removed)
            kept = [vid for row, vid in enumerate(ids) if row not in dropped]
            replace.extend(old for vid in kept for old in self.replaces.get(vid, ()))
            self.committed_now.update(kept)
            self.done.update(ids)
            self.report.indexed += len(kept)
            self.report.replaced += sum(vid in self.replaces for vid in kept)
        if records:
            self.writer.commit_shards(records, replace=replace)
        arrivals.complete.clear()
        self.times.commit += time.perf_counter() - start
        crash_point("ray:committed")

    def _run_once(self, todo: list[tuple[str, Path]], encoders: int, resources: dict[str, Any]) -> None:
        arrivals = _Arrivals()
        last = time.monotonic()
        try:
            for out in self._dataset(todo, encoders, resources).iter_batches(batch_size=None, batch_format="numpy"):
                self._receive(out, arrivals)
                if time.monotonic() - last >= self.options.commit_every_s:
                    self._commit(arrivals)
                    last = time.monotonic()
        finally:
            self._commit(arrivals)  # what fully arrived is kept, whatever stopped the pipeline

    def run(self, todo: list[tuple[str, Path]]) -> StageTimes:
        """Index ``todo`` ((id, path) pairs the caller planned with runtime.ingest.plan_ingest)."""
        start = time.perf_counter()
        self.times.videos = len(todo)
        encoders, resources = actor_resources(self.ray, self.backend, self.options)
        self.times.nodes = cluster_shape(self.ray)[0]
        self.times.encoders, self.times.use_gpu = encoders, "num_gpus" in resources
        left = list(todo)
        try:
            for attempt in range(1, self.options.attempts + 1):
                self.times.attempts = attempt
                try:
                    self._run_once(left, encoders, resources)
                except (RuntimeUserError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # a Ray failure: commit what arrived, retry the rest
                    left = [(vid, path) for vid, path in left if vid not in self.done]
                    if attempt == self.options.attempts:
                        raise RuntimeUserError(
                            f"the Ray pipeline failed {attempt} times; the last error: {exc.__class__.__name__}: "
                            f"{str(exc)[:500]}. {len(todo) - len(left)} of {len(todo)} videos are committed; re-run "
                            f"the same command to resume") from None
                    logger.warning("the Ray pipeline failed (%s: %s); running it again for the %d videos left "
                                   "(attempt %d of %d)", exc.__class__.__name__, str(exc)[:200], len(left), attempt + 1,
                                   self.options.attempts)
                    continue
                left = [(vid, path) for vid, path in left if vid not in self.done]
                if not left:
                    break
                logger.warning("%d videos did not come back from the pipeline; running it again", len(left))
            if left:
                raise RuntimeUserError(f"{len(left)} videos were not indexed after {self.options.attempts} "
                                       f"pipeline runs (e.g. {left[0][0]}); re-run the same command to resume")
        finally:
            self.times.wall = time.perf_counter() - start
        return self.times
