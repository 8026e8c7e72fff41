"""One opened index as an immutable snapshot, and the holder the service swaps on reload.

A snapshot holds a ``runtime.search.Searcher`` over the index: entries and the id -> row map, the
SK biases, the features themselves when they fit in ``--preload-mb``, which file each row is of,
a summary of the metadata fields (``GET /v1/info``) and, once two-stage search is used, its kernel
and stage-1 FAISS index: everything a search reads besides the queries.
Building one happens off the event loop; the service then replaces one reference, so a batch that
started on the old snapshot finishes on it. Index updates add shards and replace files by rename,
so an old snapshot stays readable, except after ``ucofia-run compact`` deleted the shards it
reads: that read raises ``IndexChangedError`` and the service reloads and retries the batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.bundle import Bundle
from runtime.deployment import check_searchable
from runtime.index import STATE, GalleryIndex
from runtime.scoring import ArrayVideos, Scorer, TextFeatures, VideoSource
from runtime.search import Searcher, SearchOptions
from runtime.search.fields import FieldSummary, metadata_fields

# index.json fields that change without changing what a search sees: the time stamp of a no-op
# indexing run, and rows an unfinished run has written but not yet published.
VOLATILE_STATE_FIELDS = ("updated", "pending")
# Hex digits of the state digest an answer shows (enough to tell versions apart, short to read).
STATE_DIGITS = 16


def state_digest(state: dict[str, Any]) -> str:
    """A digest of an index's state that changes when its visible rows, biases or bundle change."""
    stable = {k: v for k, v in state.items() if k not in VOLATILE_STATE_FIELDS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def read_state_digest(index_dir: Path) -> str | None:
    """The digest of ``index_dir/index.json`` now (None when it is missing or unreadable)."""
    try:
        return state_digest(json.loads((index_dir / STATE).read_text()))
    except (OSError, ValueError):
        return None


def state_stamp(index_dir: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of index.json: a cheap check before reading it (None when missing)."""
    try:
        stat = os.stat(index_dir / STATE)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class SearcherFactory(Protocol):
    """Makes the searcher of a snapshot (default: ``Searcher``; the sharded ingress: one that asks
    its shards)."""

    def __call__(self, scorer: Scorer, gallery: GalleryIndex, *, memory_mb: float, source: VideoSource | None,
                 probe: TextFeatures | None) -> Searcher: ...


@dataclass
class Snapshot:
    """An opened index; ``version`` counts loads since the server started (1 = the first)."""

    version: int
    searcher: Searcher = field(repr=False)
    digest: str
    loaded_at: float
    load_seconds: float
    fields: list[FieldSummary] = field(default_factory=list)  # the metadata fields (filter controls)

    @property
    def index(self) -> GalleryIndex:
        return self.searcher.index

    @property
    def videos(self) -> int:
        return len(self.searcher)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.digest[:STATE_DIGITS], "videos": self.videos,
                "loaded_at": round(self.loaded_at, 3),
                "load_seconds": round(self.load_seconds, 3)}


def open_gallery(index_dir: Path, bundle: Bundle) -> GalleryIndex:
    """The index at ``index_dir``, checked to be non-empty and built with ``bundle``."""
    gallery = GalleryIndex(index_dir)
    check_searchable(gallery, bundle)
    return gallery


def feature_bytes(gallery: GalleryIndex) -> int:
    """Bytes of float32 features of all videos (what preloading holds in memory)."""
    cfg = gallery.config
    return len(gallery) * (1 + cfg.max_frames + cfg.num_pixels) * cfg.embed_dim * 4


def load_snapshot(gallery: GalleryIndex, scorer: Scorer, *, version: int, two_stage: bool, memory_mb: float,
                  probe: TextFeatures | None, preload_mb: float = 0,
                  make_searcher: SearcherFactory | None = None) -> Snapshot:
    """Read everything a search needs from ``gallery`` (blocking: call it off the event loop).

    When all features fit in ``preload_mb`` they are read into memory once, in the scorer's input
    dtype, so that exhaustive searches stop reading them from the shards (125 KB per ViT-B/32
    video) on every request. With ``two_stage`` the two-stage search is prepared now rather than
    in the first request that needs it. ``make_searcher``: how the searcher is made (default
    ``Searcher``; a sharded one holds no features and prepares nothing here)."""
    start = time.perf_counter()
    _ = gallery.entries  # reads and checks entries.json now rather than in the first request
    gallery.row_of("")  # builds the id -> row map
    if make_searcher is not None:
        searcher = make_searcher(scorer, gallery, memory_mb=memory_mb, source=None, probe=probe)
    else:
        source: VideoSource = gallery
        if feature_bytes(gallery) <= preload_mb * 2**20:
            source = ArrayVideos(scorer.prepare(gallery.features(0, len(gallery))))
        searcher = Searcher(scorer, gallery, memory_mb=memory_mb, source=source, probe=probe)
    if searcher.windowed:
        _ = searcher.files  # which file each row is of, computed once here rather than per request
    if two_stage and make_searcher is None:
        searcher.two_stage(searcher.stage1_params(SearchOptions(two_stage=True)))
    fields = metadata_fields(gallery.entries)
    return Snapshot(version=version, searcher=searcher, digest=state_digest(gallery.state.to_dict()),
                    loaded_at=time.time(), load_seconds=time.perf_counter() - start, fields=fields)


class SnapshotHolder:
    """The current snapshot; ``swap`` replaces it in one assignment."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._current = snapshot

    @property
    def current(self) -> Snapshot:
        return self._current

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Install ``snapshot``; returns the old one (still valid for whoever holds it)."""
        old, self._current = self._current, snapshot
        return old
