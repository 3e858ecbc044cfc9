"""The filter language: MongoDB-style dicts over payload fields, parsed once into a small tree.

    {"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "tag": {"$in": ["a", "b"]},
     "$or": [{"meta.source": "web"}, {"stars": {"$gt": 4.5}}], "$not": {"draft": True}}

Fields are dotted paths into the payload. Values are strings, integers, floats and booleans; a boolean
never equals a number. A field holding a list matches when any element does (`$ne` and `$nin`: when
none does), as in MongoDB. A missing field matches only `$ne`, `$nin` and `$exists: false`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shoal._errors import InvalidArgument
from shoal._wire import load_json

Scalar = str | int | float | bool
_MISSING = object()
COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
MAX_FILTER_DEPTH = 32
MAX_IN_VALUES = 10_000


@dataclass(frozen=True)
class Cond:
    """One comparison of a field: `op` is one of COMPARISONS; `value` a scalar, tuple of scalars, or bool."""

    path: str
    op: str
    value: Any


@dataclass(frozen=True)
class And:
    """All children match."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """At least one child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The child does not match."""

    child: Node


Node = Cond | And | Or | Not


def kind(value: Any) -> str:
    """The comparison class of a scalar: 'bool', 'num' or 'str' (bools are not numbers here)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    raise TypeError(value)


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, bool | str) or (isinstance(value, int | float) and _finite(value)):
        return value
    raise InvalidArgument(f"{where}: expected a string, number or boolean, got {json.dumps(value)[:60]}", field=where)


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond the float range cannot be compared like the other numbers
        return False


def parse(spec: Any, where: str = "filter", depth: int = 0) -> Node:
    """Parse and validate a filter dict; InvalidArgument names the offending part."""
    if depth > MAX_FILTER_DEPTH:
        raise InvalidArgument(f"{where}: nested deeper than {MAX_FILTER_DEPTH} levels", field=where)
    if not isinstance(spec, dict) or not spec:
        raise InvalidArgument(f"{where}: expected a non-empty object, got {json.dumps(spec)[:60]}", field=where)
    parts: list[Node] = []
    for key, value in spec.items():
        here = f"{where}.{key}" if where != "filter" else f"filter.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidArgument(f"{here}: expected a non-empty list of filters", field=here)
            children = tuple(parse(v, f"{here}[{i}]", depth + 1) for i, v in enumerate(value))
            parts.append(And(children) if key == "$and" else Or(children))
        elif key == "$not":
            parts.append(Not(parse(value, here, depth + 1)))
        elif key.startswith("$"):
            raise InvalidArgument(
                f"{here}: unknown operator {key!r}; expected $and, $or, $not or a field name", field=here
            )
        elif not key or any(not p for p in key.split(".")):
            raise InvalidArgument(f"{here}: a field name must be a dotted path of non-empty names", field=here)
        elif isinstance(value, dict):
            if not value:
                raise InvalidArgument(f"{here}: expected at least one operator", field=here)
            parts.extend(_condition(key, op, operand, f"{here}.{op}") for op, operand in value.items())
        else:
            parts.append(Cond(key, "$eq", _scalar(value, here)))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def check_path(path: str, where: str = "path") -> str:
    """A dotted payload path of non-empty names, as filters and payload updates take them."""
    if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
        raise InvalidArgument(f"{where} {str(path)[:60]!r} must be a dotted path of non-empty names")
    return path


def _condition(path: str, op: str, operand: Any, where: str) -> Cond:
    if op not in COMPARISONS:
        raise InvalidArgument(
            f"{where}: unknown operator {op!r}; expected one of {', '.join(COMPARISONS)}", field=where
        )
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidArgument(f"{where}: expected true or false", field=where)
        return Cond(path, op, operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise InvalidArgument(f"{where}: expected a non-empty list of values", field=where)
        if len(operand) > MAX_IN_VALUES:
            raise InvalidArgument(f"{where}: at most {MAX_IN_VALUES} values", field=where)
        return Cond(path, op, tuple(_scalar(v, f"{where}[{i}]") for i, v in enumerate(operand)))
    value = _scalar(operand, where)
    if op in ("$gt", "$gte", "$lt", "$lte") and kind(value) == "bool":
        raise InvalidArgument(f"{where}: ranges take a number or a string, not a boolean", field=where)
    return Cond(path, op, value)


def parse_json(raw: str | bytes) -> Node | None:
    """Parse a filter as it travels on the wire (JSON text); empty means no filter."""
    if not raw:
        return None
    return parse(load_json(raw, "filter", field="filter"))


def to_json(spec: dict[str, Any] | None) -> str:
    """A filter dict as wire JSON, validated first so bad filters fail before any call."""
    if spec is None:
        return ""
    parse(spec)
    return json.dumps(spec, separators=(",", ":"), ensure_ascii=False)


def lookup(payload: Any, path: str) -> Any:
    """The value at a dotted path of a payload, or _MISSING."""
    value = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _values(found: Any) -> list[Any]:
    """The scalars a field holds: its elements when it is a list."""
    if found is _MISSING or found is None:
        return []
    return list(found) if isinstance(found, list) else [found]


def _compare(have: Any, op: str, want: Any) -> bool:
    try:
        if kind(have) != kind(want):
            return False
    except TypeError:
        return False
    if op == "$eq":
        return bool(have == want)
    if op == "$gt":
        return bool(have > want)
    if op == "$gte":
        return bool(have >= want)
    if op == "$lt":
        return bool(have < want)
    return bool(have <= want)  # $lte


def matches(node: Node, payload: dict[str, Any] | None) -> bool:
    """Whether a payload satisfies the filter (the reference semantics every index must agree with)."""
    if isinstance(node, And):
        return all(matches(c, payload) for c in node.children)
    if isinstance(node, Or):
        return any(matches(c, payload) for c in node.children)
    if isinstance(node, Not):
        return not matches(node.child, payload)
    found = lookup(payload or {}, node.path)
    if node.op == "$exists":
        return (found is not _MISSING) == node.value
    values = _values(found)
    if node.op == "$ne":
        return not any(_compare(v, "$eq", node.value) for v in values)
    if node.op == "$in":
        return any(_compare(v, "$eq", w) for v in values for w in node.value)
    if node.op == "$nin":
        return not any(_compare(v, "$eq", w) for v in values for w in node.value)
    return any(_compare(v, node.op, node.value) for v in values)
