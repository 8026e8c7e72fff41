"""One shard of the gallery: the rows it owns, searched with the one-process searcher.

A :class:`ShardSearcher` opens the index (shared storage: every shard reads the same directory),
takes its part (``runtime.cluster.partition``) and answers in gallery rows. It keeps the index
versions it has opened by their state digest (the current one and the one before), so that the
ingress, which names the version of every request, gets answers of one version from every
shard while a reload swaps them all; a version it does not hold is opened on demand when it is
what the directory holds now, else the request fails with :class:`StaleSnapshot`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.backends import open_session, resolve_backend
from runtime.backends.precision import DEFAULT_SCORER_PRECISION
from runtime.bundle import Bundle, load_bundle
from runtime.cluster.partition import IndexPart, plan_parts
from runtime.deployment import check_searchable
from runtime.index import GalleryIndex, IndexChangedError
from runtime.scoring import ArrayVideos, Scorer, TextFeatures, VideoSource
from runtime.search import Searcher, SearchOptions
from runtime.search.searcher import Hits
from runtime.serve.snapshot import feature_bytes, state_digest

logger = logging.getLogger(__name__)
# Index versions a shard keeps open: the current one and the one a reload is leaving.
KEPT_VERSIONS = 2


class StaleSnapshot(IndexChangedError):
    """The index version a request names is no longer the one on disk (the ingress reloads)."""


@dataclass(frozen=True)
class ShardInfo:
    """What a shard serves now."""

    shard: int
    shards: int
    rows: int
    digest: str
    loaded_at: float

    def to_dict(self) -> dict:
        return {"shard": self.shard, "shards": self.shards, "rows": self.rows, "digest": self.digest,
                "loaded_at": self.loaded_at}


class ShardSearcher:
    """Shard ``shard`` of ``shards`` of the index at ``index_dir``: loads the bundle's scorer (at
    ``scorer_precision``, as the service's), opens its part of the index and answers searches of it
    in gallery rows (thread-safe). ``two_stage_for(videos)``: whether two-stage search is prepared
    when a version of ``videos`` rows is opened (the service's default mode for that size)."""

    def __init__(self, index_dir: Path, shard: int, shards: int, *, bundle_dir: Path | None = None,
                 backend: str = "auto", threads: int | None = None, memory_mb: float = 256.0,
                 preload_mb: float = 0.0, two_stage_for: Callable[[int], bool] | None = None,
                 scorer: Scorer | None = None,
                 scorer_precision: str = DEFAULT_SCORER_PRECISION) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
        self.index_dir, self.shard, self.shards = Path(index_dir), shard, shards
        self.memory_mb, self.preload_mb, self.two_stage_for = memory_mb, preload_mb, two_stage_for
        gallery = GalleryIndex(self.index_dir)
        self.bundle: Bundle = load_bundle(bundle_dir or gallery.bundle_path)
        if scorer is None:
            # a long-lived process: the scorer's text side is cut out once and saves on every request
            scorer = Scorer(open_session(self.bundle, "scorer", resolve_backend(backend, self.bundle), threads,
                                         scorer_precision, split_text_side=True), self.bundle.config)
        self.scorer = scorer
        self._versions: OrderedDict[str, tuple[Searcher, IndexPart, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._open(gallery)

    # ---- versions ----------------------------------------------------------------------------
    def _open(self, gallery: GalleryIndex) -> str:
        check_searchable(gallery, self.bundle)
        digest = state_digest(gallery.state.to_dict())
        if digest in self._versions:
            return digest
        start = time.perf_counter()
        part = IndexPart(gallery, plan_parts(gallery, self.shards)[self.shard])
        source: VideoSource = part
        if len(part) and feature_bytes(gallery) * len(part) / len(gallery) <= self.preload_mb * 2**20:
            source = ArrayVideos(self.scorer.prepare(part.features(0, len(part))))
        searcher = Searcher(self.scorer, part, memory_mb=self.memory_mb, source=source)
        if self.two_stage_for is not None and self.two_stage_for(len(gallery)) and len(part):
            searcher.two_stage(searcher.stage1_params(SearchOptions(two_stage=True)))
        with self._lock:
            self._versions[digest] = (searcher, part, time.time())
            while len(self._versions) > KEPT_VERSIONS:
                self._versions.popitem(last=False)
        logger.info("shard %d/%d: %d of %d rows of %s (version %s) open in %.2f s", self.shard, self.shards,
                    len(part), len(gallery), self.index_dir, digest[:12], time.perf_counter() - start)
        return digest

    def load(self) -> ShardInfo:
        """Open the index as it is on disk now (kept beside the version before) and say what it is."""
        digest = self._open(GalleryIndex(self.index_dir))
        return self.info(digest)

    def info(self, digest: str | None = None) -> ShardInfo:
        """The shard's version ``digest`` (default: the newest it holds)."""
        with self._lock:
            digest = digest or next(reversed(self._versions))
            _, part, loaded_at = self._versions[digest]
        return ShardInfo(self.shard, self.shards, len(part), digest, loaded_at)

    def _version(self, digest: str) -> tuple[Searcher, IndexPart]:
        with self._lock:
            held = self._versions.get(digest)
        if held is None:
            if self.load().digest != digest:
                raise StaleSnapshot(f"shard {self.shard}: index version {digest[:12]} is not on disk any more; "
                                    f"the ingress reloads")
            with self._lock:
                held = self._versions[digest]
        return held[0], held[1]

    # ---- searching -----------------------------------------------------------------------------
    def hits(self, digest: str, queries: TextFeatures, options: SearchOptions) -> Hits:
        """The best ``options.depth`` rows (or files) of this shard per query, in gallery rows."""
        searcher, part = self._version(digest)
        if len(part) == 0:
            return Hits.empty(len(queries), options.two_stage, searcher.group_by(options))
        return _global(searcher.hits(queries, options), part)

    def shortlist(self, digest: str, queries: TextFeatures, options: SearchOptions) -> tuple[np.ndarray, np.ndarray]:
        """This shard's stage-1 shortlist (scores, gallery rows) of ``options.wide`` rows per query."""
        searcher, part = self._version(digest)
        if len(part) == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        scores, rows = searcher.shortlist(queries, options)
        return scores, part.global_rows(rows)

    def rerank(self, digest: str, queries: TextFeatures, options: SearchOptions,
               candidates: list[np.ndarray]) -> Hits:
        """The fused re-rank of this shard's part of each query's global shortlist (gallery rows)."""
        searcher, part = self._version(digest)
        if len(part) == 0:
            return Hits.empty(len(queries), options.two_stage, searcher.group_by(options))
        local = [part.local_rows(rows) for rows in candidates]
        return _global(searcher.rerank(queries, options, local), part)


def _global(hits: Hits, part: IndexPart) -> Hits:
    """``hits`` of a part with its rows turned into gallery rows."""
    if hits.top is not None:
        hits.top.indices = part.global_rows(hits.top.indices)
    for per_query in hits.groups or []:
        for hit in per_query:
            for window in hit.windows:
                window.row = int(part.rows[window.row])
    return hits
