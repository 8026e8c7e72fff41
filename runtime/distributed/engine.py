"""The Ray engine of the indexing use case (``runtime.ingest.job``): connect to (or start) Ray,
run the index pipeline, score the bank for the biases on the same cluster, shut a local Ray down."""
from __future__ import annotations

from typing import Any

from runtime.bundle import Bundle
from runtime.distributed import require_ray
from runtime.distributed.bank import ray_bank_biases
from runtime.distributed.pipeline import RayIndexRun, RayOptions, StageTimes, actor_resources, connect
from runtime.index import IndexWriter
from runtime.ingest.biases import ComputeBiases
from runtime.ingest.report import IngestReport
from ucofia.progress import Update


class RayEngine:
    """Whole files indexed on a Ray cluster; ``times`` says where the time went.

    Ray is started (or joined) only when there is work: a resumed run with nothing new and
    unchanged biases starts none."""

    def __init__(self, settings: Any, writer: IndexWriter, bundle: Bundle, backend: str, batch_size: int,
                 threads: int | None, report: IngestReport, *, thumbnails: bool,
                 metadata: dict[str, dict[str, Any]] | None = None) -> None:
        self.ray = require_ray()
        self.options = RayOptions(address=settings.address, num_cpus=settings.cpus, encoders=settings.encoders,
                                  decode_batch=settings.decode_batch, commit_every_s=settings.commit_every_s)
        self.writer, self.bundle, self.backend = writer, bundle, backend
        self.batch_size, self.threads, self.report, self.thumbnails = batch_size, threads, report, thumbnails
        self.times = StageTimes()
        self.metadata = metadata or {}

    def encode(self, work: Any, update: Update) -> None:
        if not work.todo:
            return
        connect(self.ray, self.options)
        self.times = RayIndexRun(self.writer, self.bundle, options=self.options, replaces=work.replaces,
                                 backend=self.backend, batch_size=self.batch_size, threads=self.threads,
                                 report=self.report, progress=update, thumbnails=self.thumbnails,
                                 metadata=self.metadata).run(work.todo)

    def bias_compute(self) -> ComputeBiases:
        """Scores bank x gallery on Ray actors of the same cluster (Ray connected only when the
        biases really need computing)."""
        def compute(*args: Any, **kwargs: Any) -> Any:
            connect(self.ray, self.options)
            actors, resources = actor_resources(self.ray, self.backend, self.options)
            return ray_bank_biases(self.ray, bundle_dir=self.bundle.root.resolve(),
                                   index_root=self.writer.root.resolve(), backend=self.backend, actors=actors,
                                   actor_options=resources)(*args, **kwargs)

        return compute

    def close(self) -> None:
        """Shut down the Ray this process started or joined."""
        if self.ray.is_initialized():
            self.ray.shutdown()
