"""What a row's entry (one object of a shard's ``entries.json``) says about where the row came from.

The fields are specified in docs/index-format.md and, for time windows, docs/index-format-windows.md.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The entry field holding the row's user metadata (from a .jsonl / .csv video list); absent when none.
METADATA = "metadata"
# Fields the index records about a row itself (besides id and path): user metadata may not use these names,
# so that a search filter names one field whichever it is.
RECORDED_FIELDS = ("sha256", "bytes", "mtime", "etag", "last_modified", "duration_s", "fps", "width", "height",
                   "frames", "container", "file_id", "start", "end", "window", "stride", METADATA)


def source_key(entry: Mapping[str, Any]) -> str:
    """What a row was made from: its ``file_id`` (time windows of one file) or source ``path``, else
    its id. Replacing a changed file replaces every row with the same key."""
    return str(entry.get("file_id") or entry.get("path") or entry["id"])


def is_windowed(entry: Mapping[str, Any]) -> bool:
    """Whether an entry is a time window of a file (rather than a whole file)."""
    return "file_id" in entry and "start" in entry and "end" in entry


def file_of(entry: Mapping[str, Any]) -> str:
    """The file a row belongs to: its ``file_id``, or its own id for a whole-file row."""
    return str(entry["file_id"]) if is_windowed(entry) else str(entry["id"])


def span_of(entry: Mapping[str, Any]) -> tuple[float, float] | None:
    """(start, end) seconds of a row: its window, or ``(0, duration_s)`` for a whole-file row
    (None when the entry has no duration, e.g. a format 1 index)."""
    if is_windowed(entry):
        return float(entry["start"]), float(entry["end"])
    duration = entry.get("duration_s")
    return None if duration is None else (0.0, float(duration))


def metadata_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The user metadata of a row (empty for rows listed without any, and for older indexes)."""
    return dict(entry.get(METADATA) or {})
