"""One encoded batch into the index: rows with unusable features are screened out (and listed in
failed.jsonl with the fix), the rest become one shard."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.finite import NON_FINITE_FIX, non_finite_rows
from runtime.index import IndexWriter
from runtime.index.store import unstorable_rows
from runtime.ingest.report import IngestReport

ReplaceFor = Callable[[list[dict[str, Any]]], list[str]]


def screen_features(entries: list[dict[str, Any]], features: dict[str, np.ndarray], store: str
                    ) -> tuple[np.ndarray, list[tuple[dict[str, Any], str]]]:
    """(rows to drop, [(entry, error)] for each): rows whose features are NaN/inf, or beyond what
    ``store`` can hold, must never be stored; each error names the video and the fix."""
    bad = non_finite_rows(features.values())
    too_big = unstorable_rows(features, store) & ~bad
    bad |= too_big
    errors = []
    for i in np.flatnonzero(bad):
        what = f"{entries[i]['id']} ({entries[i]['path']})"
        errors.append((entries[i], f"the video encoder produced features beyond the float16 range for {what}; "
                                   f"index with --store float32" if too_big[i] else
                                   f"the video encoder produced non-finite features (NaN/inf) for {what}; "
                                   f"{NON_FINITE_FIX}"))
    return bad, errors


def store_batch(writer: IndexWriter, entries: list[dict[str, Any]], features: dict[str, np.ndarray],
                report: IngestReport, replace_for: ReplaceFor | None = None) -> list[str]:
    """Add one encoded batch to the index as a shard and return the ids stored.

    Rows :func:`screen_features` drops are never stored: they are listed in failed.jsonl with the
    cause and the fix. ``replace_for(stored entries)`` names the rows the stored ones supersede
    (an earlier version of a changed file), removed in the same commit."""
    bad, errors = screen_features(entries, features, writer.store)
    if bad.any():
        for entry, error in errors:
            writer.record_failure(entry["id"], entry["path"], error)
            report.failed.append((entry["id"], error))
        entries = [entry for entry, failed in zip(entries, bad) if not failed]
        features = {role: value[~bad] for role, value in features.items()}
    ids = [entry["id"] for entry in entries]
    replace = replace_for(entries) if replace_for is not None and entries else []
    writer.add_batch(ids, features, entries, replace)  # no-op when every row failed
    report.indexed += len(ids)
    return ids
