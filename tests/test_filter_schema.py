"""protos/shoal/v1/filter.schema.json and the parser agree: a filter passes both or fails both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal._errors import InvalidArgument
from shoal._filter import COMPARISONS, MAX_FILTER_DEPTH, parse

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "protos/shoal/v1/filter.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def by_schema(spec: Any) -> bool:
    return VALIDATOR.is_valid(spec)


def by_parser(spec: Any) -> bool:
    try:
        parse(spec)
    except InvalidArgument:
        return False
    return True


FIELDS = st.sampled_from(["a", "year", "meta.lang", "x.y.z", "a$", "é.ü", "with space", "b.$c"])
BAD_FIELDS = st.sampled_from(["", "a..b", ".a", "a.", "$foo", "$", "$eq", "."])
NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.just(10**400))
SCALARS = st.one_of(st.text(max_size=4), st.booleans(), NUMBERS)
ORDERED = st.one_of(st.text(max_size=4), NUMBERS)


def _operators() -> st.SearchStrategy[dict[str, Any]]:
    one = st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne"]), SCALARS),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ORDERED),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(SCALARS, min_size=1, max_size=4)),
        st.tuples(st.just("$exists"), st.booleans()),
    )
    return st.lists(one, min_size=1, max_size=3).map(dict)


def _valid(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    logical = st.one_of(
        st.tuples(st.sampled_from(["$and", "$or"]), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("$not"), children),
    )
    condition = st.tuples(FIELDS, st.one_of(SCALARS, _operators()))
    return st.lists(st.one_of(condition, logical), min_size=1, max_size=3).map(dict)


VALID = st.recursive(st.tuples(FIELDS, SCALARS).map(lambda kv: {kv[0]: kv[1]}), _valid, max_leaves=12)

# Anything JSON can hold, with keys that are often operators or field names, valid or not.
KEYS = st.one_of(FIELDS, BAD_FIELDS, st.sampled_from([*COMPARISONS, "$and", "$or", "$not", "$regex"]))
ANY = st.recursive(
    st.one_of(st.none(), SCALARS),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=3)),
    max_leaves=12,
)


def _mutants(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid filter with one of its values or keys replaced: often still valid, often not."""

    def swap_value(new: Any) -> dict[str, Any]:
        key = next(iter(spec))
        return {**spec, key: new}

    def swap_key(new: str) -> dict[str, Any]:
        key, value = next(iter(spec.items()))
        rest = {k: v for k, v in spec.items() if k != key}
        return {**rest, new: value}

    return st.one_of(ANY.map(swap_value), KEYS.map(swap_key))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(VALID)
def test_valid_filters_pass_both(spec: dict[str, Any]) -> None:
    if 10**400 in _leaves(spec):
        assert not by_schema(spec) and not by_parser(spec)  # beyond the float range: refused by both
    else:
        assert by_schema(spec) and by_parser(spec), spec


@pytest.mark.slow  # about 10 s of generated filters
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(ANY, VALID.flatmap(_mutants)))
def test_schema_and_parser_agree_on_anything(spec: Any) -> None:
    assert by_schema(spec) == by_parser(spec), spec


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def test_hand_picked_corners() -> None:
    valid = [
        {"a": 1},
        {"a": {"$gte": 1, "$lt": "z"}},
        {"$or": [{"a": True}, {"$not": {"b.c": {"$exists": False}}}]},
        {"tags": {"$in": ["x", 1, False]}},
    ]
    invalid = [
        {},
        {"a": None},
        {"a": []},
        {"a": {}},
        {"a": {"$gt": True}},
        {"a": {"$in": []}},
        {"a": {"$in": [None]}},
        {"a": {"$exists": 1}},
        {"a": {"$regex": "x"}},
        {"$and": []},
        {"$and": {"a": 1}},
        {"$not": {}},
        {"$nor": [{"a": 1}]},
        {"a..b": 1},
        {"": 1},
        {"a": {"$in": list(range(10_001))}},
        [],
        "a",
    ]
    for spec in valid:
        assert by_schema(spec) and by_parser(spec), spec
    for spec in invalid:
        assert not by_schema(spec) and not by_parser(spec), spec
    deep: dict[str, Any] = {"a": 1}
    for _ in range(MAX_FILTER_DEPTH + 1):
        deep = {"$not": deep}
    assert by_schema(deep) and not by_parser(deep)  # the one limit a schema cannot state (its description says so)
