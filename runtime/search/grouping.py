"""Search results grouped by file: each file once, with its best windows.

On a windowed index (``runtime.windows``) a long file has many rows; ranking rows would let one
file fill the whole top-k. Grouped search ranks files by their best window's fused score and lists
each file's best ``per_file`` windows:

* exhaustive (:func:`grouped_exhaustive`): pass 1 streams the gallery in chunks (bounded by
  ``--memory-mb``) and keeps each query's best score per file; pass 2 rescores the windows of each
  query's top-k files to order them. Exact. Features come from the index's shards, or from any
  source of the same rows (e.g. the service's features held in memory).
* two-stage (:func:`group_rows`): the FAISS shortlist re-ranked with the fused score is grouped;
  with a shortlist as large as the gallery this equals the exhaustive result.

On a whole-file index every row is its own file, so grouping changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.index import GalleryIndex, file_of, metadata_of, span_of
from runtime.scoring import (
    DEFAULT_MEMORY_MB,
    LEVELS,
    ArrayVideos,
    RowRange,
    Scorer,
    TextFeatures,
    TopK,
    VideoSource,
    fuse,
    gather_rows,
    score_matrix,
)

# Bytes per (text, row) pair held by pass 1: three level scores and the fused score, float32.
PAIR_SCORE_BYTES = 4 * (len(LEVELS) + 1)


@dataclass
class RowFiles:
    """Which file each gallery row belongs to."""

    file_ids: list[str]        # distinct files, in order of first row
    file_of_row: np.ndarray    # [V] int64 index into file_ids
    rows_of_file: list[np.ndarray]

    @classmethod
    def of(cls, index: GalleryIndex) -> RowFiles:
        position: dict[str, int] = {}
        owner = np.array([position.setdefault(file_of(e), len(position)) for e in index.entries], dtype=np.int64)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(position) + 1))
        rows = [order[bounds[f]:bounds[f + 1]] for f in range(len(position))]
        return cls(list(position), owner, rows)


@dataclass
class WindowHit:
    """One gallery row in a grouped result."""

    row: int
    score: float
    levels: dict[str, float]


@dataclass
class FileHit:
    """One file in a grouped result: its best windows, best first."""

    file_id: str
    windows: list[WindowHit]

    @property
    def score(self) -> float:
        return self.windows[0].score


def best_per_file(scorer: Scorer, index: GalleryIndex, files: RowFiles, queries: TextFeatures,
                  memory_mb: float = DEFAULT_MEMORY_MB, progress=None, source: VideoSource | None = None
                  ) -> np.ndarray:
    """[T, files] best fused score (with the index's SK biases) of any row of each file
    (``source``: where the rows' features are read, default the index)."""
    n_text, n_rows = len(queries), len(index)
    biases = index.biases()
    source = index if source is None else source
    best = np.full((n_text, len(files.file_ids)), -np.inf, dtype=np.float32)
    chunk = max(1, min(n_rows, int(memory_mb * 2**20 // (max(n_text, 1) * PAIR_SCORE_BYTES))))
    text_rows = np.arange(n_text)[:, None]
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        levels = score_matrix(scorer, queries, RowRange(source, start, stop), memory_mb, progress=progress)
        bias = None if biases is None else {lv: biases[lv][start:stop] for lv in LEVELS}
        np.maximum.at(best, (text_rows, files.file_of_row[None, start:stop]), fuse(levels, bias))
    return best


def _ranked(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best ``scores`` (ties: lower row first)."""
    return np.lexsort((rows, -scores))[:k]


def grouped_exhaustive(scorer: Scorer, index: GalleryIndex, queries: TextFeatures, k: int, per_file: int,
                       memory_mb: float = DEFAULT_MEMORY_MB, progress=None, source: VideoSource | None = None,
                       files: RowFiles | None = None) -> list[list[FileHit]]:
    """The ``k`` best files per query, each with its ``per_file`` best windows (exact). ``source``:
    where the rows' features are read (default the index); ``files``: ``RowFiles.of(index)``
    when the caller keeps it."""
    files = RowFiles.of(index) if files is None else files
    source = index if source is None else source
    best = best_per_file(scorer, index, files, queries, memory_mb, progress, source)
    biases = index.biases()
    first_rows = np.array([r[0] for r in files.rows_of_file], dtype=np.int64)
    out: list[list[FileHit]] = []
    for q in range(len(queries)):
        top_files = _ranked(best[q], first_rows, k)
        rows = np.sort(np.concatenate([files.rows_of_file[f] for f in top_files]))
        levels = score_matrix(scorer, queries.rows(q, q + 1), ArrayVideos(gather_rows(source, rows)), memory_mb)
        levels = {lv: levels[lv][0] for lv in LEVELS}
        bias = None if biases is None else {lv: biases[lv][rows] for lv in LEVELS}
        fused = fuse({lv: v[None] for lv, v in levels.items()}, bias)[0]
        order = _ranked(fused, rows, len(rows))
        out.append(_group(rows[order], fused[order], {lv: v[order] for lv, v in levels.items()}, files, k, per_file))
    return out


def group_rows(top: TopK, index: GalleryIndex, k: int, per_file: int, files: RowFiles | None = None
               ) -> list[list[FileHit]]:
    """Group ranked rows (e.g. a re-ranked two-stage shortlist) into the ``k`` best files."""
    files = RowFiles.of(index) if files is None else files
    return [_group(top.indices[q], top.fused[q], {lv: top.levels[lv][q] for lv in LEVELS}, files, k, per_file)
            for q in range(len(top.indices))]


def _group(rows: np.ndarray, fused: np.ndarray, levels: dict[str, np.ndarray], files: RowFiles, k: int,
           per_file: int) -> list[FileHit]:
    """Rows in rank order -> the first ``k`` files met, each with its first ``per_file`` rows."""
    hits: dict[int, FileHit] = {}
    for i, row in enumerate(rows):
        if row < 0:
            continue
        f = int(files.file_of_row[row])
        hit = hits.get(f)
        if hit is None:
            if len(hits) == k:
                continue
            hit = hits[f] = FileHit(files.file_ids[f], [])
        if len(hit.windows) < per_file:
            hit.windows.append(WindowHit(int(row), float(fused[i]), {lv: float(levels[lv][i]) for lv in LEVELS}))
    return list(hits.values())


def to_records(groups: list[list[FileHit]], index: GalleryIndex, first: int = 0) -> list[list[dict]]:
    """Grouped results as JSON-ready dicts per query: ``{rank, file_id, score, video_id, start, end,
    levels, metadata, windows: [{video_id, start, end, score, levels}]}`` (the top-level span, id,
    levels and metadata are the file's best window's), from file rank ``first + 1`` on."""
    entries = index.entries
    out = []
    for hits in groups:
        records = []
        for rank, hit in enumerate(hits[first:], first + 1):
            windows = []
            for w in hit.windows:
                entry = entries[w.row]
                span = span_of(entry)
                windows.append({"video_id": entry["id"], "start": None if span is None else span[0],
                                "end": None if span is None else span[1], "score": w.score, "levels": w.levels})
            best = windows[0]
            records.append({"rank": rank, "file_id": hit.file_id, "score": hit.score, "video_id": best["video_id"],
                            "start": best["start"], "end": best["end"], "levels": best["levels"],
                            "metadata": metadata_of(entries[hit.windows[0].row]), "windows": windows})
        out.append(records)
    return out
