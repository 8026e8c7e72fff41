"""Merging what the shards found into what one process over the whole gallery finds.

Every ranking in the runtime is by fused score, then lower gallery row; every shard returns its
own best ``offset + top_k`` in gallery rows, so the best of their union under the same order is
the one-process answer. Grouped by file, files are ranked by their best window (score, then that
window's row); a file never spans shards (``runtime.cluster.partition``). A two-stage shortlist
is merged the same way on the stage-1 score.
"""
from __future__ import annotations

import numpy as np

from runtime.scoring import LEVELS, TopK
from runtime.search.grouping import FileHit
from runtime.search.searcher import Hits


def merge_top(parts: list[TopK], depth: int) -> TopK:
    """Per query the ``depth`` best rows of all ``parts`` (fused score, then row); -1 pads."""
    queries = parts[0].indices.shape[0]
    out = TopK(np.full((queries, depth), -1, np.int64), np.full((queries, depth), -np.inf, np.float32),
               {lv: np.full((queries, depth), np.nan, np.float32) for lv in LEVELS})
    rows = np.concatenate([p.indices for p in parts], axis=1)
    fused = np.concatenate([p.fused for p in parts], axis=1)
    levels = {lv: np.concatenate([p.levels[lv] for p in parts], axis=1) for lv in LEVELS}
    for q in range(queries):
        found = np.flatnonzero(rows[q] >= 0)
        order = found[np.lexsort((rows[q, found], -fused[q, found]))][:depth]
        out.indices[q, :len(order)] = rows[q, order]
        out.fused[q, :len(order)] = fused[q, order]
        for lv in LEVELS:
            out.levels[lv][q, :len(order)] = levels[lv][q, order]
    return out


def merge_groups(parts: list[list[list[FileHit]]], depth: int) -> list[list[FileHit]]:
    """Per query the ``depth`` best files of all ``parts`` (best window's score, then its row)."""
    merged = []
    for per_query in zip(*parts):
        files = [hit for hits in per_query for hit in hits]
        files.sort(key=lambda hit: (-hit.score, hit.windows[0].row))
        merged.append(files[:depth])
    return merged


def merge_hits(parts: list[Hits], depth: int) -> Hits:
    """The hits of all shards as one answer of ``depth`` ranks per query (notes kept once)."""
    first = parts[0]
    notes = list(dict.fromkeys(note for part in parts for note in part.notes))
    if first.groups is not None:
        return Hits(None, merge_groups([p.groups for p in parts], depth), first.two_stage, first.group_by, notes)
    return Hits(merge_top([p.top for p in parts], depth), None, first.two_stage, first.group_by, notes)


def merge_shortlists(parts: list[tuple[np.ndarray, np.ndarray]], wide: int) -> list[list[np.ndarray]]:
    """The global stage-1 shortlist of ``wide`` rows per query from every shard's own (scores,
    rows), best first (stage-1 score, then row), handed back per shard: ``[shard][query]`` the
    shortlisted gallery rows that shard owns."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    rows = np.concatenate([r for _, r in parts], axis=1)
    owner = np.concatenate([np.full(r.shape[1], shard, np.int64) for shard, (_, r) in enumerate(parts)])
    out: list[list[np.ndarray]] = [[] for _ in parts]
    for q in range(rows.shape[0]):
        found = np.flatnonzero(rows[q] >= 0)
        keep = found[np.lexsort((rows[q, found], -scores[q, found]))][:wide]
        for shard in range(len(parts)):
            out[shard].append(np.sort(rows[q, keep[owner[keep] == shard]]))
    return out
