"""The stored features of an index, for other tools (``ucofia-run export-features``).

Every live row in gallery order: its ``id``, its metadata fields (one column each) and its
features decoded to float32 as search reads them (``video`` [D]; with ``roles``, also
``frame_features`` [F, D] and ``patches`` [P, D]), read and written ``rows_per_group`` rows at a
time, so memory stays bounded whatever the gallery size. Two formats, readable without ucofia:

* ``parquet`` (pyarrow, the ``parquet`` extra): one file; features as fixed-size lists of float32;
  a metadata column holds int64, float64, bool, string or list<string> values (null where a row
  has none; a field whose rows disagree on the type holds each value as JSON text); a metadata
  field named like a feature column or ``id`` becomes ``metadata.NAME``.
* ``npy`` (numpy only): a directory with ``id.npy`` (unicode strings), ``ROLE.npy`` per feature
  ([N, ...] float32, filled in place) and ``metadata.jsonl`` (one object per row, in row order).

The output is written under a temporary name beside ``out`` and renamed when complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import RuntimeUserError
from runtime.index import FEATURE_ROLES, GalleryIndex, metadata_of
from ucofia.progress import progress_bar

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "npy")
FEATURE_COLUMNS = FEATURE_ROLES  # the stored feature roles, one column each
DEFAULT_ROWS_PER_GROUP = 4096
PARQUET_EXTRA = "pip install 'ucofia[parquet]'"


@dataclass
class ExportOutcome:
    """What :func:`export_features` wrote."""

    out: Path
    format: str
    rows: int
    columns: list[str]


def export_features(index_dir: Path, out: Path, fmt: str, roles: Sequence[str] = ("video",),
                    rows_per_group: int = DEFAULT_ROWS_PER_GROUP) -> ExportOutcome:
    """Write ``index_dir``'s ids, metadata and ``roles`` features to ``out`` in ``fmt``."""
    if fmt not in FORMATS:
        raise RuntimeUserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    unknown = [role for role in roles if role not in FEATURE_COLUMNS]
    if unknown or "video" not in roles:
        raise RuntimeUserError(f"features must include video and be among {', '.join(FEATURE_COLUMNS)}")
    if rows_per_group < 1:
        raise RuntimeUserError("rows per group must be at least 1")
    index = GalleryIndex(index_dir)
    roles = tuple(r for r in FEATURE_COLUMNS if r in roles)
    write = _parquet if fmt == "parquet" else _npy
    columns = write(index, Path(out), roles, rows_per_group)
    logger.info("wrote %d rows of %s to %s", len(index), ", ".join(columns), out)
    return ExportOutcome(Path(out), fmt, len(index), columns)


def _groups(index: GalleryIndex, roles: tuple[str, ...], size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(start, stop, role -> float32 features) of consecutive row groups, with a progress bar."""
    with progress_bar(len(index), "exporting", "video") as update:
        for start in range(0, len(index), size):
            stop = min(start + size, len(index))
            yield start, stop, index.features(start, stop, roles=roles)
            update(stop - start)


def metadata_columns(index: GalleryIndex) -> dict[str, str]:
    """Column name -> metadata field, in order of first appearance (renamed where a field's name is
    taken by ``id`` or a feature column)."""
    fields: dict[str, None] = {}
    for entry in index.entries:
        fields.update(dict.fromkeys(metadata_of(entry)))
    taken = {"id", *FEATURE_COLUMNS}
    return {(f"metadata.{name}" if name in taken else name): name for name in fields}


# ---- parquet ------------------------------------------------------------------------------------
def _arrow_type(values: list[Any]):
    """The arrow type of a metadata field and a function making its cell values (None: no value)."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.string(), lambda v: None
    if kinds == {bool}:
        return pa.bool_(), lambda v: v
    if kinds == {int}:
        return pa.int64(), lambda v: v
    if kinds <= {int, float}:
        return pa.float64(), lambda v: None if v is None else float(v)
    if kinds == {str}:
        return pa.string(), lambda v: v
    if kinds == {list}:
        return pa.list_(pa.string()), lambda v: v
    return pa.string(), lambda v: None if v is None else json.dumps(v)


def _require_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeUserError(f"--format parquet needs pyarrow: {PARQUET_EXTRA} (or use --format npy, which needs "
                               f"numpy only)") from None
    return pa, pq


def _feature_array(pa, values: np.ndarray):
    """[n, ...] float32 as nested fixed-size lists of float32."""
    array = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def _parquet(index: GalleryIndex, out: Path, roles: tuple[str, ...], size: int) -> list[str]:
    pa, pq = _require_pyarrow()
    entries = index.entries
    names = metadata_columns(index)
    values = {column: [metadata_of(e).get(field) for e in entries] for column, field in names.items()}
    types = {column: _arrow_type(column_values) for column, column_values in values.items()}
    shapes = {role: index.shards[0].layout(role).row_shape for role in roles} if len(index) else {}
    feature_type = {role: pa.float32() for role in roles}
    for role, shape in shapes.items():
        for dim in reversed(shape):
            feature_type[role] = pa.list_(feature_type[role], dim)
    schema = pa.schema([("id", pa.string()), *((c, t) for c, (t, _) in types.items()),
                        *((role, feature_type[role]) for role in roles)])
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start, stop, features in _groups(index, roles, size):
                arrays = [pa.array(index.ids[start:stop], pa.string())]
                arrays += [pa.array([make(v) for v in values[c][start:stop]], types[c][0]) for c, (_, make) in
                           types.items()]
                arrays += [_feature_array(pa, features[role]) for role in roles]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=size)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return list(schema.names)


# ---- npy ----------------------------------------------------------------------------------------
def _npy(index: GalleryIndex, out: Path, roles: tuple[str, ...], size: int) -> list[str]:
    if out.exists():
        raise RuntimeUserError(f"{out} exists; --format npy writes a new directory: remove it or choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        np.save(tmp / "id.npy", np.array(index.ids, dtype=str))
        with open(tmp / "metadata.jsonl", "w") as fh:
            fh.writelines(json.dumps(metadata_of(e), ensure_ascii=False) + "\n" for e in index.entries)
        arrays = {}
        for role in roles:
            shape = index.shards[0].layout(role).row_shape if len(index) else ()
            arrays[role] = np.lib.format.open_memmap(tmp / f"{role}.npy", mode="w+", dtype=np.float32,
                                                     shape=(len(index), *shape))
        for start, stop, features in _groups(index, roles, size):
            for role in roles:
                arrays[role][start:stop] = features[role]
        for array in arrays.values():
            array.flush()
        del arrays
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return ["id", "metadata", *roles]
