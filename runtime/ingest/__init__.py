"""Indexing videos into a gallery index (``ucofia-run index``).

Modules, one job each:

* ``job``     -- the use case: :func:`build_index` (an :class:`IndexRequest` in, an
  :class:`IndexOutcome` out) plans the work, runs an engine, makes thumbnails and biases.
* ``files``   -- what identifies a video file's content, its index entry, what is left to encode.
* ``local``   -- the local engine for whole files (decoder pool, batched video encoder).
* ``windows`` -- the local engine for time windows (each file decoded once).
* ``batches`` -- one encoded batch screened (NaN/inf, store range) and stored as a shard.
* ``biases``  -- the Sinkhorn-Knopp video biases from a caption bank.
* ``report``  -- what a run did, counted by every engine.

The Ray engine is ``runtime.distributed`` (``--ray``).
"""
from __future__ import annotations

from runtime.ingest.job import IndexOutcome, IndexRequest, RaySettings, build_index
from runtime.ingest.local import DEFAULT_BATCH
from runtime.ingest.report import IngestReport

__all__ = ["DEFAULT_BATCH", "IndexOutcome", "IndexRequest", "IngestReport", "RaySettings", "build_index"]
