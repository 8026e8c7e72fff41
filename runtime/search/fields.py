"""What metadata an index holds: one summary per field of the videos' metadata, for a client that
builds filter controls (the search page; ``GET /v1/info`` ``metadata_fields``).

A field's kind is the kind of value its videos hold (:func:`runtime.search.filters.value_kind`:
string, number, boolean, list of strings), or ``mixed`` when they disagree. A string or list field
with at most :data:`MAX_VALUES` distinct values (list items for a list) names them, sorted; a
number field gives its smallest and largest value. Fields whose name starts with ``$`` are left out:
a filter cannot name them (``$`` starts an operator).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.index import METADATA
from runtime.search.filters import value_kind

MAX_VALUES = 50  # distinct string values a summary lists (more: a free text control)
MIXED = "mixed"


@dataclass(frozen=True)
class FieldSummary:
    """One metadata field over an index's rows."""

    name: str
    kind: str  # string, number, boolean, list or mixed
    videos: int  # rows holding a value of the field
    values: tuple[str, ...] | None = None  # string / list fields with few distinct values
    minimum: float | None = None  # number fields
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``GET /v1/info``)."""
        return {"name": self.name, "kind": self.kind, "videos": self.videos,
                "values": None if self.values is None else list(self.values),
                "min": self.minimum, "max": self.maximum}


def metadata_fields(entries: Sequence[Mapping[str, Any]], max_values: int = MAX_VALUES) -> list[FieldSummary]:
    """The summaries of the metadata fields of ``entries``, in the order fields first appear."""
    kinds: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    strings: dict[str, set[str]] = {}
    numbers: dict[str, list[float]] = {}
    for entry in entries:
        for name, value in (entry.get(METADATA) or {}).items():
            kind = value_kind(value)
            if kind is None or name.startswith("$") or not name:
                continue
            kinds.setdefault(name, set()).add(kind)
            counts[name] = counts.get(name, 0) + 1
            if kind == "string":
                _add_strings(strings, name, (value,), max_values)
            elif kind == "list":
                _add_strings(strings, name, (str(v) for v in value), max_values)
            elif kind == "number" and math.isfinite(value):
                numbers.setdefault(name, []).append(float(value))
    out = []
    for name, seen in kinds.items():
        kind = next(iter(seen)) if len(seen) == 1 else MIXED
        values = strings.get(name) if kind in ("string", "list") else None
        span = numbers.get(name) if kind == "number" else None
        out.append(FieldSummary(name, kind, counts[name],
                                values=None if values is None or len(values) > max_values else tuple(sorted(values)),
                                minimum=min(span) if span else None, maximum=max(span) if span else None))
    return out


def _add_strings(strings: dict[str, set[str]], name: str, values, max_values: int) -> None:
    """Collect distinct values of ``name`` until there are more than ``max_values`` (then stop:
    the field lists none)."""
    bucket = strings.setdefault(name, set())
    if len(bucket) > max_values:
        return
    for value in values:
        bucket.add(value)
        if len(bucket) > max_values:
            return
