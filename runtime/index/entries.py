"""What a row's entry (one object of a shard's ``entries.json``) says about where the row came from.

The fields are specified in docs/index-format.md and, for time windows, docs/index-format-windows.md.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def source_key(entry: Mapping[str, Any]) -> str:
    """What a row was made from: its ``file_id`` (time windows of one file) or source ``path``, else
    its id. Replacing a changed file replaces every row with the same key."""
    return str(entry.get("file_id") or entry.get("path") or entry["id"])
