"""The filter language: parsing with errors that point at the offending part, and its reference semantics."""

import re
from typing import Any

import pytest

from shoal import InvalidArgument
from shoal._filter import And, Cond, Not, Or, matches, parse, parse_json, to_json

DOC = {
    "lang": "en",
    "year": 2021,
    "score": 4.5,
    "draft": False,
    "tags": ["a", "b"],
    "meta": {"src": "web"},
    "none": None,
}


def test_parse_builds_the_tree() -> None:
    assert parse({"lang": "en"}) == Cond("lang", "$eq", "en")
    assert parse({"year": {"$gte": 2020, "$lt": 2025}}) == And((Cond("year", "$gte", 2020), Cond("year", "$lt", 2025)))
    assert parse({"$or": [{"a": 1}, {"$not": {"b": True}}]}) == Or((Cond("a", "$eq", 1), Not(Cond("b", "$eq", True))))
    assert parse({"t": {"$in": ["x", "y"]}}) == Cond("t", "$in", ("x", "y"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "filter: expected a non-empty object"),
        ([1], "filter: expected a non-empty object"),
        ({"$xor": []}, "filter.$xor: unknown operator '$xor'"),
        ({"year": {"$gt": 1, "$foo": 2}}, "filter.year.$foo: unknown operator '$foo'"),
        ({"year": {"$gt": [1]}}, "filter.year.$gt: expected a string, number or boolean"),
        ({"year": {"$gt": True}}, "filter.year.$gt: ranges take a number or a string"),
        ({"t": {"$in": []}}, "filter.t.$in: expected a non-empty list"),
        ({"t": {"$in": ["a", {"b": 1}]}}, "filter.t.$in[1]: expected a string"),
        ({"t": {"$exists": 1}}, "filter.t.$exists: expected true or false"),
        ({"$or": [{"a": 1}, {}]}, "filter.$or[1]: expected a non-empty object"),
        ({"$and": {}}, "filter.$and: expected a non-empty list"),
        ({"a..b": 1}, "dotted path"),
        ({"x": float("nan")}, "filter.x: expected a string, number or boolean"),
        ({"x": None}, "filter.x: expected a string, number or boolean"),
        ({"x": {}}, "filter.x: expected at least one operator"),
        ({"x": {"$lt": 10**400}}, "filter.x.$lt: expected a string, number or boolean"),
    ],
)
def test_malformed_filters_point_at_the_offending_part(spec: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse(spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"lang": "en"}, True),
        ({"lang": "fr"}, False),
        ({"year": {"$gte": 2020, "$lt": 2025}}, True),
        ({"year": {"$gt": 2021}}, False),
        ({"score": {"$lte": 4.5}}, True),
        ({"year": 2021.0}, True),
        ({"draft": False}, True),
        ({"draft": 0}, False),
        ({"year": True}, False),
        ({"tags": "a"}, True),
        ({"tags": {"$in": ["z", "b"]}}, True),
        ({"tags": {"$nin": ["a"]}}, False),
        ({"tags": {"$ne": "c"}}, True),
        ({"meta.src": "web"}, True),
        ({"meta.src.deeper": "web"}, False),
        ({"missing": {"$ne": 1}}, True),
        ({"missing": {"$nin": [1]}}, True),
        ({"missing": {"$exists": False}}, True),
        ({"none": {"$exists": True}}, True),
        ({"none": {"$eq": "x"}}, False),
        ({"lang": {"$gt": "a"}}, True),
        ({"year": {"$gt": "a"}}, False),
        ({"$or": [{"lang": "fr"}, {"year": 2021}]}, True),
        ({"$and": [{"lang": "en"}, {"year": 1999}]}, False),
        ({"$not": {"lang": "en"}}, False),
    ],
)
def test_reference_semantics(spec: dict[str, Any], expected: bool) -> None:
    assert matches(parse(spec), DOC) is expected


def test_no_payload_matches_only_negations() -> None:
    assert matches(parse({"a": {"$ne": 1}}), None)
    assert not matches(parse({"a": 1}), None)


def test_wire_form() -> None:
    assert parse_json("") is None
    assert parse_json(to_json({"a": {"$in": [1, 2]}})) == Cond("a", "$in", (1, 2))
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_json("{nope")
    with pytest.raises(InvalidArgument, match="unknown operator"):
        to_json({"$bad": 1})
