"""Search filters: a MongoDB-style ``where`` (as Chroma's) over the rows' fields, as a row mask.

A filter is a JSON object (docs/search.md, "Filters")::

    {"channel": "news"}                                  field equals a value ($eq)
    {"year": {"$gte": 2020, "$lt": 2024}}                operators on one field (all must hold)
    {"$and": [F, ...]}, {"$or": [F, ...]}, {"$not": F}   logic; several keys in one object: all hold
    {}                                                   every row

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $not`` (``$not`` takes an operator
object). Values are strings, numbers or booleans; ``$gt``-like operators take numbers or strings
(strings compare by code point), ``$in``/``$nin`` a list of values, ``$exists`` a boolean. On a
field holding lists of strings, ``$eq``/``$in`` match rows whose list holds the value. As in
MongoDB, ``$ne``, ``$nin`` and ``$not`` also match rows without the field; a field no row has
matches nothing (but ``$exists: false``).

Fields: the rows' user metadata, and what the index records of every row (:data:`ENTRY_FIELDS`:
id, duration_s, fps, width, height, frames, bytes, mtime, container; on windows file_id, start,
end). :func:`parse_filter` checks the grammar (:class:`FilterError` naming the place); a
:class:`MetadataTable` made once per opened index evaluates a parsed filter to a boolean row mask
with numpy, refusing a value of another type than the field holds.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import QueryError
from runtime.index import METADATA, RECORDED_FIELDS

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists", "$not")
LOGICAL = ("$and", "$or", "$not")
ORDERED = ("$gt", "$gte", "$lt", "$lte")
# Entry fields a filter may name besides the user metadata (the source path stays private).
ENTRY_FIELDS = ("id", *(f for f in RECORDED_FIELDS if f != METADATA))
MAX_DEPTH = 32  # nesting of $and/$or/$not a filter may have

Scalar = str | float | bool


class FilterError(QueryError):
    """A filter that is malformed, uses an unknown operator, or compares a field with a value of
    another type than the field holds (the service answers 422; the CLI exits with 2)."""


# ---- the parsed filter: frozen, hashable (a search option and a cache key) --------------------------
@dataclass(frozen=True)
class Condition:
    """``field`` ``op`` ``value`` (``$in``/``$nin``: a tuple of values; ``$not``: a Condition tuple)."""

    field: str
    op: str
    value: Any
    where: str  # the place in the filter, for messages


@dataclass(frozen=True)
class Logic:
    """``$and`` / ``$or`` of clauses, or ``$not`` of one."""

    op: str
    clauses: tuple[Filter, ...]


Filter = Condition | Logic


def parse_filter(value: Any, where: str = "filter") -> Filter:
    """The parsed filter of a JSON ``value``; FilterError naming the place of the first problem."""
    return _clause(value, where, 0)


def read_filter(text: str, where: str = "filter") -> Filter:
    """The parsed filter of JSON ``text`` (FilterError when it is not JSON or not a filter)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FilterError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    return parse_filter(value, where)


def _clause(value: Any, where: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise FilterError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, dict):
        raise FilterError(f"{where}: a filter is a JSON object, got {_kind_name(value)}")
    parts: list[Filter] = []
    for key, item in value.items():
        here = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(item, list) or not item:
                raise FilterError(f"{here}: expects a non-empty list of filters")
            parts.append(Logic(key, tuple(_clause(c, f"{here}.{i}", depth + 1) for i, c in enumerate(item))))
        elif key == "$not":
            parts.append(Logic("$not", (_clause(item, here, depth + 1),)))
        elif key.startswith("$"):
            raise FilterError(f"{here}: unknown operator {key!r} (logic: {', '.join(LOGICAL)}; on a field: "
                              f"{', '.join(OPERATORS)})")
        elif not key:
            raise FilterError(f"{where}: a field name is empty")
        else:
            parts.append(_field(key, item, here, depth))
    return parts[0] if len(parts) == 1 else Logic("$and", tuple(parts))


def _field(name: str, value: Any, where: str, depth: int) -> Filter:
    if not isinstance(value, dict):
        return Condition(name, "$eq", _scalar(value, where), where)
    if not value:
        raise FilterError(f"{where}: an empty operator object; give one of {', '.join(OPERATORS)}")
    parts: list[Filter] = []
    for op, operand in value.items():
        here = f"{where}.{op}"
        if op not in OPERATORS:
            raise FilterError(f"{here}: unknown operator {op!r} (one of {', '.join(OPERATORS)})")
        if depth > MAX_DEPTH:
            raise FilterError(f"{here}: nested deeper than {MAX_DEPTH} levels")
        if op == "$not":
            if not isinstance(operand, dict):
                raise FilterError(f"{here}: expects an operator object such as {{\"$gt\": 1}}")
            parts.append(Logic("$not", (_field(name, operand, here, depth + 1),)))
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise FilterError(f"{here}: expects a list of values")
            parts.append(Condition(name, op, tuple(_scalar(v, f"{here}.{i}") for i, v in enumerate(operand)), here))
        elif op == "$exists":
            if not isinstance(operand, bool):
                raise FilterError(f"{here}: expects true or false")
            parts.append(Condition(name, op, operand, here))
        else:
            scalar = _scalar(operand, here)
            if op in ORDERED and isinstance(scalar, bool):
                raise FilterError(f"{here}: expects a number or a string (booleans are not ordered)")
            parts.append(Condition(name, op, scalar, here))
    return parts[0] if len(parts) == 1 else Logic("$and", tuple(parts))


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf if value > 0 else -math.inf  # an int past float range (copysign would overflow too)
        if math.isnan(number):
            raise FilterError(f"{where}: NaN is not a value")
        return number
    raise FilterError(f"{where}: expects a string, a number or a boolean, got {_kind_name(value)}")


def _kind_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


# ---- the table a filter is evaluated on ------------------------------------------------------------
KINDS = ("number", "string", "boolean", "list")


def value_kind(value: Any) -> str | None:
    """number, string, boolean or list (of strings); None for a value a filter cannot match."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    return None


class Column:
    """One field over every row: per kind, where rows hold a value of that kind and the values."""

    def __init__(self, values: Sequence[Any]) -> None:
        n = len(values)
        kinds = [value_kind(v) for v in values]
        self.present = np.fromiter((k is not None for k in kinds), bool, n)
        self.kinds = {k for k in kinds if k is not None}
        self.numbers = np.full(n, np.nan)
        self.has_number = np.zeros(n, bool)
        self.strings: dict[int, str] = {}
        self.booleans = np.zeros(n, np.int8)  # -1 false, 1 true, 0 other
        self.lists: dict[int, frozenset[str]] = {}
        for row, (value, kind) in enumerate(zip(values, kinds)):
            if kind == "number":
                self.numbers[row], self.has_number[row] = value, True
            elif kind == "string":
                self.strings[row] = value
            elif kind == "boolean":
                self.booleans[row] = 1 if value else -1
            elif kind == "list":
                self.lists[row] = frozenset(str(v) for v in value)
        self._string_rows = np.fromiter(self.strings, np.int64, len(self.strings))
        self._string_values = np.array(list(self.strings.values()), dtype=object)

    def _strings_where(self, n: int, test: Callable[[str], bool]) -> np.ndarray:
        out = np.zeros(n, bool)
        if len(self._string_rows):
            out[self._string_rows] = np.fromiter((test(s) for s in self._string_values), bool,
                                                 len(self._string_rows))
        return out

    def isin(self, values: Sequence[Scalar]) -> np.ndarray:
        """Rows equal to one of ``values`` (a list of strings: holding one of them)."""
        n = len(self.present)
        flags = {1 if v else -1 for v in values if isinstance(v, bool)}
        numbers = [v for v in values if isinstance(v, float)]
        strings = {v for v in values if isinstance(v, str)}
        out = np.isin(self.booleans, list(flags)) if flags else np.zeros(n, bool)
        if numbers:
            out |= self.has_number & np.isin(self.numbers, numbers)
        if strings:
            out |= self._strings_where(n, strings.__contains__)
            for row, items in self.lists.items():
                out[row] |= not items.isdisjoint(strings)
        return out

    def ordered(self, op: str, value: Scalar) -> np.ndarray:
        compare = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
        if isinstance(value, float):
            with np.errstate(invalid="ignore"):
                return self.has_number & compare(self.numbers, value)
        return self._strings_where(len(self.present), lambda s: bool(compare(s, value)))


class MetadataTable:
    """The filterable fields of an index's rows (user metadata and :data:`ENTRY_FIELDS`), made
    once per opened index; :meth:`mask` evaluates a parsed filter."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.rows = len(entries)
        names: dict[str, None] = {}
        for entry in entries:
            names.update(dict.fromkeys(entry.get(METADATA) or ()))
        values: dict[str, list[Any]] = {name: [None] * self.rows for name in (*ENTRY_FIELDS, *names)}
        for row, entry in enumerate(entries):
            for name in ENTRY_FIELDS:
                if name in entry:
                    values[name][row] = entry[name]
            for name, value in (entry.get(METADATA) or {}).items():
                values[name][row] = value
        self.columns = {name: Column(column) for name, column in values.items()}

    @property
    def fields(self) -> list[str]:
        """Fields some row holds a value for."""
        return [name for name, column in self.columns.items() if column.kinds]

    def mask(self, where: Filter) -> np.ndarray:
        """bool [rows]: the rows ``where`` matches; FilterError for a value of another type than its
        field holds."""
        if isinstance(where, Logic):
            masks = [self.mask(c) for c in where.clauses]
            if where.op == "$not":
                return ~masks[0]
            if not masks:  # {}: no condition, every row
                return np.ones(self.rows, bool)
            return np.logical_and.reduce(masks) if where.op == "$and" else np.logical_or.reduce(masks)
        column = self.columns.get(where.field)
        if column is None or not column.kinds:  # no row has the field
            return np.full(self.rows, where.op in ("$ne", "$nin") or (where.op == "$exists" and not where.value))
        if where.op == "$exists":
            return column.present if where.value else ~column.present
        values = where.value if where.op in ("$in", "$nin") else (where.value,)
        for value in values:
            self._check_kind(column, where, value)
        if where.op in ORDERED:
            return column.ordered(where.op, where.value)
        hit = column.isin(values)
        return ~hit if where.op in ("$ne", "$nin") else hit

    @staticmethod
    def _check_kind(column: Column, where: Condition, value: Scalar) -> None:
        kind = value_kind(value)
        fits = kind in column.kinds or (kind == "string" and "list" in column.kinds and where.op not in ORDERED)
        if not fits:
            holds = " and ".join(sorted({"lists of strings" if k == "list" else f"{k}s" for k in column.kinds}))
            raise FilterError(f"{where.where}: field {where.field!r} holds {holds}; {where.op} compares it with "
                              f"{_kind_name(value)} ({value!r})")
