"""The ``--videos`` list of ``ucofia-run index``, with per-video metadata.

Besides a directory and the plain list (``path`` or ``id<TAB>path`` lines, ``runtime.sources``), a
list may be JSON Lines (``.jsonl``: one object per line) or CSV with a header (``.csv``). Their rows
carry ``id`` and ``path`` (relative paths are taken from the list file's folder; a URL is kept as
a str, ``runtime.remote``) and any other
fields: the row's metadata, stored in its index entry (docs/index-format.md) and shown in search
results. Values are strings, numbers, booleans or lists of strings; in a CSV file every column
whose non-empty cells are all numbers (or all ``true``/``false``) holds numbers (booleans), and an
empty cell means the row has no value for that column. Errors name the file and the line.
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import RuntimeUserError
from runtime.index import RECORDED_FIELDS
from runtime.remote import Source, is_url
from runtime.sources import list_videos

METADATA_SUFFIXES = (".jsonl", ".csv")
# Row fields that are not metadata: what the row is and where its file is.
ROW_FIELDS = ("id", "path")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_BOOLEANS = {"true": True, "false": False}

Metadata = dict[str, Any]


@dataclass
class VideoList:
    """(id, path) pairs in list order, and the metadata of the ids whose row gave some."""

    pairs: list[tuple[str, Source]]
    metadata: dict[str, Metadata] = field(default_factory=dict)


def read_video_list(source: str | Path) -> VideoList:
    """The videos of ``--videos``: a directory or plain list (no metadata), or a .jsonl / .csv list."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() in METADATA_SUFFIXES:
        rows = _jsonl_rows(source) if source.suffix.lower() == ".jsonl" else _csv_rows(source)
        return _from_rows(source, rows)
    return VideoList(list_videos(source))


def check_metadata(values: Mapping[str, Any], where: str) -> Metadata:
    """``values`` as metadata, or RuntimeUserError naming ``where`` (file and line) and the field:
    names must be non-empty, not start with ``$`` and not be a field the index records itself;
    values strings, finite numbers, booleans or lists of strings."""
    out: Metadata = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name or name.startswith("$"):
            raise RuntimeUserError(f"{where}: field name {name!r} is not allowed (names must be non-empty and not "
                                   f"start with '$')")
        if name in RECORDED_FIELDS:
            raise RuntimeUserError(f"{where}: field {name!r} is one the index records itself "
                                   f"({', '.join(RECORDED_FIELDS)}); rename it")
        out[name] = _check_value(value, f"{where}: field {name!r}")
    return out


def _check_value(value: Any, what: str) -> Any:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise RuntimeUserError(f"{what}: {value} is not a finite number")
        return value
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise RuntimeUserError(f"{what}: a list must hold strings only")
        return list(value)
    kind = "a nested object" if isinstance(value, dict) else "null" if value is None else type(value).__name__
    raise RuntimeUserError(f"{what} is {kind}; values must be strings, numbers, booleans or lists of strings")


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RuntimeUserError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise RuntimeUserError(f"{path} line {number}: expected a JSON object with id and path")
        rows.append((number, item))
    return rows


def _csv_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if len(set(header)) != len(header):
            raise RuntimeUserError(f"{path} line 1: the header names a column twice")
        raw = []
        for row in reader:
            if None in row:
                raise RuntimeUserError(f"{path} line {reader.line_num}: more cells than the header has columns")
            raw.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}))
    kinds = {column: _csv_kind([cells[column] for _, cells in raw if column in cells])
             for column in header if column not in ROW_FIELDS}
    return [(number, {k: v if k in ROW_FIELDS else _csv_value(v, kinds[k]) for k, v in cells.items()})
            for number, cells in raw]


def _csv_kind(cells: list[str]) -> str:
    """What a CSV column holds: ``int``, ``float``, ``bool`` or ``str`` (every non-empty cell fits)."""
    if cells and all(_INT.fullmatch(c) for c in cells):
        return "int"
    if cells and all(_FLOAT.fullmatch(c) and any(ch.isdigit() for ch in c) for c in cells):
        return "float"
    if cells and all(c in _BOOLEANS for c in cells):
        return "bool"
    return "str"


def _csv_value(cell: str, kind: str) -> Any:
    return {"int": int, "float": float, "bool": _BOOLEANS.__getitem__}.get(kind, str)(cell)


def _from_rows(source: Path, rows: list[tuple[int, dict[str, Any]]]) -> VideoList:
    pairs: list[tuple[str, Source]] = []
    metadata: dict[str, Metadata] = {}
    first_line: dict[str, int] = {}
    for number, row in rows:
        where = f"{source} line {number}"
        for name in ROW_FIELDS:
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise RuntimeUserError(f"{where}: no {name!r} (every row needs a non-empty id and path)")
        vid = row["id"]
        if vid in first_line:
            raise RuntimeUserError(f"{where}: video id {vid!r} is already used on line {first_line[vid]}; ids must "
                                   f"be unique")
        first_line[vid] = number
        if is_url(row["path"]):
            pairs.append((vid, row["path"]))
        else:
            path = Path(row["path"])
            pairs.append((vid, path if path.is_absolute() else source.parent / path))
        meta = check_metadata({k: v for k, v in row.items() if k not in ROW_FIELDS}, where)
        if meta:
            metadata[vid] = meta
    if not pairs:
        raise RuntimeUserError(f"video list {source} names no videos")
    return VideoList(pairs, metadata)
