"""The filter language's grammar (runtime.search.filters.parse_filter): what it refuses, naming
the place, and its nesting bound; numbers past float range; one-part filters equal their
operator form (a search option and a batch key compare parsed filters)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.search.filters import MAX_DEPTH, Condition, FilterError, MetadataTable, parse_filter, read_filter


def _nested_logic(levels: int) -> dict:
    clause: dict = {"a": 1}
    for _ in range(levels):
        clause = {"$and": [clause]}
    return clause


def _nested_not(levels: int) -> dict:
    operators: dict = {"$eq": 1}
    for _ in range(levels):
        operators = {"$not": operators}
    return {"a": operators}


def test_nesting_is_bounded_at_max_depth_levels():
    assert MAX_DEPTH == 32  # the bound docs/search.md gives
    parse_filter(_nested_logic(MAX_DEPTH))
    with pytest.raises(FilterError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_filter(_nested_logic(MAX_DEPTH + 1))
    parse_filter({"$not": _nested_logic(MAX_DEPTH - 1)})
    with pytest.raises(FilterError, match="nested deeper"):
        parse_filter({"$not": _nested_logic(MAX_DEPTH)})
    parse_filter(_nested_not(MAX_DEPTH))
    with pytest.raises(FilterError, match="nested deeper"):
        parse_filter(_nested_not(MAX_DEPTH + 1))
    with pytest.raises(FilterError, match="not valid JSON"):
        read_filter("[" * 100_000)


@pytest.mark.parametrize("value, message", [
    ({"$and": []}, "filter.$and: expects a non-empty list of filters"),
    ({"$or": {"a": 1}}, "filter.$or: expects a non-empty list of filters"),
    ({"": 1}, "filter: a field name is empty"),
    ({"a": {}}, "filter.a: an empty operator object"),
    ({"a": {"$not": 5}}, "filter.a.$not: expects an operator object"),
    ({"a": {"$in": 5}}, "filter.a.$in: expects a list of values"),
    ({"a": {"$exists": 1}}, "filter.a.$exists: expects true or false"),
    ({"a": {"$gt": True}}, "filter.a.$gt: expects a number or a string"),
    ({"a": float("nan")}, "filter.a: NaN is not a value"),
    ({"a": {"$in": [1, None]}}, "filter.a.$in.1: expects a string, a number or a boolean, got null"),
    ({"$nor": []}, "filter.$nor: unknown operator"),
    ({"a": {"$near": 1}}, "filter.a.$near: unknown operator"),
    ([{"a": 1}], "filter: a filter is a JSON object"),
])
def test_malformed_filters_are_refused_naming_the_place(value, message):
    with pytest.raises(FilterError) as error:
        parse_filter(value)
    assert str(error.value).startswith(message), str(error.value)


def test_numbers_past_float_range_compare_as_infinities():
    assert parse_filter({"n": {"$lt": 10**400}}) == Condition("n", "$lt", math.inf, "filter.n.$lt")
    assert parse_filter({"n": {"$gt": -(10**400)}}).value == -math.inf
    table = MetadataTable([{"id": "a", "metadata": {"n": 5}}, {"id": "b", "metadata": {"n": -7.5}}])
    assert table.mask(parse_filter({"n": {"$lt": 10**400}})).tolist() == [True, True]
    assert np.array_equal(table.mask(parse_filter({"n": {"$gt": -(10**400)}})), [True, True])


def test_a_one_part_filter_is_that_part():
    assert parse_filter({"a": 1}) == Condition("a", "$eq", 1.0, "filter.a")
    assert parse_filter({"a": {"$gte": 2}}) == Condition("a", "$gte", 2.0, "filter.a.$gte")
