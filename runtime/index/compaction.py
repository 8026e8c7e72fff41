"""``ucofia-run compact``: which shards to rewrite, and writing their live rows into new shards.

The writer commits the result (:meth:`runtime.index.IndexWriter.compact`): new shards, then one
state update, then the old shard directories go. Rows keep their order, so biases and caches stay
valid.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.index.format import SHARD_ARRAYS, ShardRecord
from runtime.index.shards import OpenShard, write_shard

# Live rows per shard that ``compact`` writes (coalescing smaller shards).
COMPACT_ROWS = 4096


@dataclass
class CompactionPlan:
    """The shards in gallery order: each one kept as it is, or in a run of neighbours rewritten together."""

    items: list[OpenShard | list[OpenShard]]
    rows_per_shard: int

    @property
    def rewritten(self) -> list[OpenShard]:
        """The shards whose files the compaction replaces."""
        return [shard for item in self.items if isinstance(item, list) for shard in item]

    @property
    def changes_nothing(self) -> bool:
        """Whether the plan would only rewrite one shard without removed rows as it is."""
        rewrite = self.rewritten
        return not rewrite or (len(rewrite) == 1 and rewrite[0].live is None)

    @property
    def rows_reclaimed(self) -> int:
        return sum(s.count - s.size for s in self.rewritten)


def plan_compaction(shards: Sequence[OpenShard], rows_per_shard: int = COMPACT_ROWS) -> CompactionPlan:
    """Rewrite the shards that hold removed rows or fewer than half ``rows_per_shard`` rows,
    coalescing neighbours; keep the others."""
    items: list[OpenShard | list[OpenShard]] = []
    run: list[OpenShard] = []
    for shard in shards:
        if shard.live is None and shard.count >= rows_per_shard // 2:
            if run:
                items.append(run)
                run = []
            items.append(shard)
        else:
            run.append(shard)
    if run:
        items.append(run)
    return CompactionPlan(items, rows_per_shard)


def write_compacted(plan: CompactionPlan, shard_root: Path, new_name: Callable[[], str], store: str,
                    progress: Callable[[int], None] | None = None) -> list[ShardRecord]:
    """Write the new shards of ``plan`` under ``shard_root`` (names from ``new_name``) and return the
    shard records of the compacted gallery, in order (kept shards' records as they are)."""
    records: list[ShardRecord] = []
    for item in plan.items:
        if not isinstance(item, list):
            records.append(item.record)
            continue
        for group in _groups(item, plan.rows_per_shard):
            ids, entries, features = _live_rows(group)
            if ids:
                records.append(write_shard(shard_root, new_name(), ids, features, entries, store))
            if progress:
                progress(sum(s.count for s in group))
    return records


def _groups(shards: list[OpenShard], rows: int) -> Iterator[list[OpenShard]]:
    """Consecutive groups of shards holding about ``rows`` live rows each."""
    group: list[OpenShard] = []
    total = 0
    for shard in shards:
        if group and total + shard.size > rows:
            yield group
            group, total = [], 0
        group.append(shard)
        total += shard.size
    if group:
        yield group


def _live_rows(group: list[OpenShard]) -> tuple[list[str], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Live ids, entries and float32 features of a group of shards."""
    ids: list[str] = []
    entries: list[dict[str, Any]] = []
    parts: dict[str, list[np.ndarray]] = {role: [] for role in SHARD_ARRAYS}
    for shard in group:
        if shard.size == 0:
            continue
        ids.extend(shard.ids)
        entries.extend(shard.entries())
        live = shard.physical(np.arange(shard.size))
        for role in SHARD_ARRAYS:
            parts[role].append(shard.read(role, live))
    return ids, entries, {role: np.concatenate(p) if p else np.empty((0,)) for role, p in parts.items()}
