"""The one search path: "these queries against this index", for ``ucofia-run search`` and the service.

A :class:`Searcher` holds what a search reads besides the queries: the scorer, the opened index,
where its features come from (the shards, or arrays held in memory by the service), its SK biases,
which file each row belongs to, and the two-stage state (kernel and FAISS stage 1), built on first
use and kept. :meth:`Searcher.search` takes encoded queries and :class:`SearchOptions` and returns
the ranked result records of ``runtime.search.records``:

* exhaustive: every row scored in tiles, top-k by fused score (ties: lower gallery row first);
* two-stage: FAISS shortlist by the video_sentence level + bias, fused re-rank of the shortlist;
* on an index of time windows, grouped by file (default: each file once, ranked by its best
  window, with its best windows) or by window (rows ranked on their own).

A filter (``SearchOptions.where``, ``runtime.search.filters``) restricts every mode to the rows
it matches: exhaustive search scores only those rows (``runtime.search.subset``), two-stage search
has FAISS select among them; either returns what the same search returns on an index of the
matching rows alone (with the whole gallery's SK biases). A page (``offset``) is ranks
``offset + 1`` to ``offset + top_k`` of the full ranking.

Every ranking is by fused score, then gallery row, so the first ``k`` results of a search for
``k' > k`` are the results of the search for ``k`` (the service runs a batch once for its largest
``offset + top_k``); :meth:`SearchOptions.batch_key` says which options must agree for that to hold.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from runtime.index import GalleryIndex, is_windowed
from runtime.scoring import DEFAULT_MEMORY_MB, LEVELS, Scorer, TextFeatures, TopK, VideoSource, score_topk
from runtime.search import grouping, stage1
from runtime.search.filters import Filter, MetadataTable, parse_filter
from runtime.search.records import Record, row_records
from runtime.search.stage1 import Stage1Params
from runtime.search.subset import GallerySubset
from runtime.search.two_stage import TwoStage

DEFAULT_TOP_K = 10
DEFAULT_SHORTLIST = 1000
DEFAULT_WINDOWS_PER_FILE = 3
GROUP_BY = ("file", "window")


@dataclass(frozen=True)
class SearchOptions:
    """How to search: result count, mode, stage-1 settings and grouping of windows.

    ``group_by`` None means the default for the index: ``file`` on time windows (ignored on a
    whole-file index, where every row is its own file). ``stage1`` is a stage-1 kind of
    ``runtime.search.stage1`` (``auto``: by gallery size); ``nprobe``/``ef_search`` None: its
    defaults. ``offset``: results skipped (a page starts at rank ``offset + 1``); ``where``: a
    filter, parsed (``runtime.search.filters.parse_filter``) or as JSON data (a dict, parsed
    here: FilterError when malformed), None for every row."""

    top_k: int = DEFAULT_TOP_K
    two_stage: bool = False
    shortlist: int = DEFAULT_SHORTLIST
    stage1: str = "auto"
    nprobe: int | None = None
    ef_search: int | None = None
    group_by: str | None = None
    windows_per_file: int = DEFAULT_WINDOWS_PER_FILE
    offset: int = 0
    where: Filter | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.shortlist < 1 or self.windows_per_file < 1:
            raise ValueError("top_k, shortlist and windows_per_file must be at least 1")
        if self.offset < 0:
            raise ValueError(f"offset must be at least 0, got {self.offset}")
        if isinstance(self.where, dict):
            object.__setattr__(self, "where", parse_filter(self.where))
        if self.group_by not in (None, *GROUP_BY):
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {self.group_by!r}")
        if self.stage1 not in stage1.STAGE1_KINDS:
            raise ValueError(f"unknown stage-1 kind {self.stage1!r}; choose one of {', '.join(stage1.STAGE1_KINDS)}")

    @property
    def depth(self) -> int:
        """Ranks a search computes to answer these options: ``offset + top_k``."""
        return self.offset + self.top_k

    @property
    def wide(self) -> int:
        """Rows the first stage of two-stage search keeps per query (at least ``offset + top_k``)."""
        return max(self.shortlist, self.depth)

    def batch_key(self) -> tuple[Any, ...]:
        """What must agree between requests so that one search for the largest ``offset + top_k``
        answers each of them with a slice of its results (the shortlist counts where it decides)."""
        return (self.two_stage, self.wide if self.two_stage else None, self.stage1, self.nprobe, self.ef_search,
                self.group_by, self.windows_per_file, self.where)


@dataclass
class SearchAnswer:
    """Ranked result records per query, and how they were made."""

    results: list[list[Record]]
    two_stage: bool
    group_by: str | None  # "file" or "window" on an index of time windows; None on whole files
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a short shortlist)

    def first(self, k: int) -> SearchAnswer:
        """The answer cut to each query's first ``k`` results."""
        return replace(self, results=[records[:k] for records in self.results])


def exhaustive(scorer: Scorer, index: GalleryIndex, queries: TextFeatures, k: int,
               memory_mb: float = DEFAULT_MEMORY_MB, progress=None) -> TopK:
    """Score every query against every row of ``index`` (tiled) and keep the top ``k`` rows."""
    return score_topk(scorer, queries, index, k, index.biases(), memory_mb, progress)


class Searcher:
    """One opened index, ready to answer searches (thread-safe; the two-stage state is built once).

    ``source``: where the rows' features are read (default: the index's shards); ``probe``: a
    query to check the two-stage kernel against the scorer graph (default: the first search's)."""

    def __init__(self, scorer: Scorer, index: GalleryIndex, *, memory_mb: float = DEFAULT_MEMORY_MB,
                 source: VideoSource | None = None, probe: TextFeatures | None = None) -> None:
        self.scorer = scorer
        self.index = index
        self.memory_mb = memory_mb
        self.source: VideoSource = index if source is None else source
        self.biases = index.biases()
        self.probe = probe
        self.windowed = len(index) > 0 and is_windowed(index.entries[0])
        self._files: grouping.RowFiles | None = None
        self._table: MetadataTable | None = None
        self._two_stage: dict[Stage1Params, TwoStage] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def files(self) -> grouping.RowFiles:
        """Which file each row belongs to (computed once)."""
        if self._files is None:
            self._files = grouping.RowFiles.of(self.index)
        return self._files

    @property
    def table(self) -> MetadataTable:
        """The rows' filterable fields (made once, on the first filtered search)."""
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self._table = MetadataTable(self.index.entries)
        return self._table

    def matching(self, where: Filter | None) -> np.ndarray | None:
        """Ascending gallery rows ``where`` matches; None for every row (no filter, or all match).
        FilterError for a value of another type than its field holds."""
        if where is None:
            return None
        rows = np.flatnonzero(self.table.mask(where))
        return None if len(rows) == len(self.index) else rows

    def stage1_params(self, options: SearchOptions) -> Stage1Params:
        """The stage-1 kind and parameters ``options`` ask for, on this gallery's size."""
        return stage1.choose(options.stage1, len(self.index), nprobe=options.nprobe, ef_search=options.ef_search)

    def two_stage(self, params: Stage1Params, queries: TextFeatures | None = None) -> TwoStage:
        """The two-stage search for ``params`` (its kernel checked on the probe query, else on
        ``queries``), made on first use."""
        with self._lock:
            if params not in self._two_stage:
                check = self.probe if self.probe is not None else queries
                self._two_stage[params] = TwoStage(self.scorer, self.index, self.memory_mb, params,
                                                   check_queries=check)
            return self._two_stage[params]

    def group_by(self, options: SearchOptions) -> str | None:
        """The grouping a search with ``options`` uses here (None on a whole-file index)."""
        if not self.windowed:
            return None
        return options.group_by or "file"

    def search(self, queries: TextFeatures, options: SearchOptions) -> SearchAnswer:
        """Ranked result records of every query (ranks ``offset + 1`` to ``offset + top_k``; none
        where the filter matches no row)."""
        return self.records(self.hits(queries, options), options.offset)

    def records(self, hits: Hits, first: int = 0) -> SearchAnswer:
        """``hits`` as the records of a search answer, from rank ``first + 1`` on."""
        if hits.groups is not None:
            results = grouping.to_records(hits.groups, self.index, first=first)
        else:
            assert hits.top is not None
            results = [row_records(self.index, hits.top, q, first=first) for q in range(len(hits.top.indices))]
        return SearchAnswer(results, hits.two_stage, hits.group_by, list(hits.notes))

    def hits(self, queries: TextFeatures, options: SearchOptions) -> Hits:
        """The best ``offset + top_k`` rows (or files, grouped) of every query, in gallery rows."""
        group_by = self.group_by(options)
        rows = self.matching(options.where)
        if rows is not None and len(rows) == 0:
            return Hits.empty(len(queries), options.two_stage, group_by)
        if group_by == "file":
            return self._grouped(queries, options, rows)
        notes = []
        if options.two_stage:
            top = self.two_stage(self.stage1_params(options), queries).search(queries, options.depth, options.wide,
                                                                              rows=rows)
            short = int((top.indices < 0).any(axis=1).sum())
            if short:
                notes.append(f"for {short} queries stage 1 ({options.stage1}) found fewer than {top.indices.shape[1]} "
                             f"rows; raise --nprobe or --shortlist")
        elif rows is None:
            top = score_topk(self.scorer, queries, self.source, options.depth, self.biases, self.memory_mb)
        else:
            gallery = GallerySubset(self.index, rows, self.source)
            top = _in_gallery_rows(score_topk(self.scorer, queries, gallery, options.depth, gallery.biases(),
                                              self.memory_mb), rows)
        return Hits(top, None, options.two_stage, group_by, notes)

    def shortlist(self, queries: TextFeatures, options: SearchOptions) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 of two-stage search alone (among the rows ``options.where`` matches): per query
        its ``options.wide`` best rows as (stage-1 scores, gallery rows), best first, -inf / -1 where
        fewer were found."""
        rows = self.matching(options.where)
        if rows is not None and len(rows) == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        return self.two_stage(self.stage1_params(options), queries).shortlist(queries, options.wide, rows)

    def rerank(self, queries: TextFeatures, options: SearchOptions, candidates: list[np.ndarray]) -> Hits:
        """The second stage alone: the fused re-rank of each query's ``candidates`` (gallery rows,
        e.g. a shortlist made elsewhere), ranked and grouped as :meth:`hits` ranks a shortlist."""
        group_by = self.group_by(options)
        kernel = self.two_stage(self.stage1_params(options), queries)
        if group_by == "file":
            wide = kernel.rerank(queries, candidates, max(map(len, candidates), default=0))
            return Hits(None, grouping.group_rows(wide, self.index, options.depth, options.windows_per_file,
                                                  self.files), True, "file", [])
        return Hits(kernel.rerank(queries, candidates, options.depth), None, True, group_by, [])

    def _grouped(self, queries: TextFeatures, options: SearchOptions, rows: np.ndarray | None) -> Hits:
        k, per_file, notes = options.depth, options.windows_per_file, []
        if options.two_stage:
            wide = self.two_stage(self.stage1_params(options), queries).search(queries, options.wide, options.wide,
                                                                               rows=rows)
            groups = grouping.group_rows(wide, self.index, k, per_file, self.files)
            short = sum(len(g) < k for g in groups)
            files = len(self.files.file_ids) if rows is None else len(np.unique(self.files.file_of_row[rows]))
            if short and files > min(len(g) for g in groups):
                notes.append(f"for {short} queries the {options.wide} shortlisted windows came from fewer than {k} "
                             f"files; raise --shortlist to see more files")
        elif rows is None:
            groups = grouping.grouped_exhaustive(self.scorer, self.index, queries, k, per_file, self.memory_mb,
                                                 source=self.source, files=self.files)
        else:
            gallery = GallerySubset(self.index, rows, self.source)
            groups = grouping.grouped_exhaustive(self.scorer, gallery, queries, k, per_file, self.memory_mb,
                                                 source=gallery, files=grouping.RowFiles.of(gallery))
            for hits in groups:
                for hit in hits:
                    for window in hit.windows:
                        window.row = int(rows[window.row])
        return Hits(None, groups, options.two_stage, "file", notes)


@dataclass
class Hits:
    """What a search found before it becomes records: ``top`` (ranked gallery rows per query) or,
    grouped by file, ``groups`` (ranked files per query, their windows as gallery rows)."""

    top: TopK | None
    groups: list[list[grouping.FileHit]] | None
    two_stage: bool
    group_by: str | None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, queries: int, two_stage: bool, group_by: str | None) -> Hits:
        """No result for any of ``queries`` (e.g. a filter that matches no row)."""
        if group_by == "file":
            return cls(None, [[] for _ in range(queries)], two_stage, group_by)
        top = TopK(np.empty((queries, 0), np.int64), np.empty((queries, 0), np.float32),
                   {lv: np.empty((queries, 0), np.float32) for lv in LEVELS})
        return cls(top, None, two_stage, group_by)


def _in_gallery_rows(top: TopK, rows: np.ndarray) -> TopK:
    """``top`` of a subset of the gallery with its positions replaced by the gallery rows ``rows``."""
    return replace(top, indices=np.where(top.indices >= 0, rows[np.maximum(top.indices, 0)], -1))
