"""Write planning as values: each write kind planned against an in-memory view, with no RocksDB and no threads."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from shoal._config import CollectionConfig
from shoal._errors import AlreadyExists, NotFound
from shoal._filter import Node, parse_json
from shoal.shard import records
from shoal.shard.payload_index import LIVE, indexed
from shoal.shard.payload_mirror import FilterIndex
from shoal.shard.storage import pack_key
from shoal.shard.writes import (
    IDS,
    INDEX,
    POINTS,
    CreateCollection,
    CreatePlan,
    Delete,
    DropCollection,
    DropPlan,
    StoreView,
    Upsert,
    WritePlan,
    plan_delete,
    plan_delete_filter,
    plan_from_bytes,
    plan_set_payload,
    plan_upsert,
    plan_write,
)

DIM = 2


class FakeView:
    """A StoreView over dicts: key8 -> record, string id -> key8."""

    def __init__(self, id_type: str = "uint64", next_key: int = 1, born: int = 1) -> None:
        self.config = CollectionConfig("c", DIM, id_type=id_type)
        self.born = born
        self.next_key = next_key
        self.points: dict[bytes, bytes] = {}
        self.names: dict[str, bytes] = {}

    def records(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.points.get(k) for k in keys]

    def keys_of(self, ids: Sequence[str] | np.ndarray) -> list[bytes | None]:
        return [self.names.get(s) for s in ids]

    def ids_of(self, keys: list[bytes]) -> list[bytes | None]:
        back = {v: k.encode() for k, v in self.names.items()}
        return [back.get(k) for k in keys]

    def match(self, node: Node) -> np.ndarray:
        mirror = FilterIndex()
        keys = np.array([int.from_bytes(k, "big") for k in sorted(self.points)], np.uint64)
        mirror.upsert(keys, [indexed(records.payload(self.points[k], DIM)).fields for k in sorted(self.points)])
        return mirror.match(node)


class FakeCatalogue:
    """A Catalogue over a dict of views."""

    def __init__(self, *views: FakeView) -> None:
        self.views = {v.config.name: v for v in views}

    def view(self, name: str) -> StoreView | None:
        return self.views.get(name)


def vec(*values: float) -> np.ndarray:
    return np.array(values, np.float32).reshape(-1, DIM)


def test_an_upsert_plans_points_index_entries_log_and_index_updates() -> None:
    view = FakeView()
    view.points[pack_key(2)] = records.pack(vec(9, 9).tobytes(), b'{"a":1}')
    plan = plan_upsert(view, np.array([1, 2], np.uint64), vec(1, 2, 3, 4), [b'{"a":2}', b""])
    assert plan.result == 2 and plan.next_key is None
    points = {k: v for cf, k, v in plan.puts if cf == POINTS}
    assert points == {pack_key(1): vec(1, 2).tobytes() + b'{"a":2}', pack_key(2): vec(3, 4).tobytes()}
    index_puts = {k for cf, k, _ in plan.puts if cf == INDEX}
    assert LIVE + pack_key(1) in index_puts and LIVE + pack_key(2) not in index_puts  # 2 was live already
    assert {cf for cf, _ in plan.deletes} == {INDEX} and len(plan.deletes) == 2  # 2's old "a" entries go
    assert plan.logged == pack_key(1) + pack_key(2)
    assert plan.index_keys.tolist() == [1, 2] and plan.index_vectors is not None
    assert plan.mirror_keys.tolist() == [1, 2] and plan.mirror_fields[1] == ()
    assert not len(plan.removed) and view.next_key == 1  # planning changed nothing it read


def test_new_string_ids_get_keys_from_the_counter() -> None:
    view = FakeView("string", next_key=5)
    view.names["old"] = pack_key(3)
    plan = plan_upsert(view, np.array(["old", "new"], dtype=object), vec(1, 2, 3, 4), [])
    assert plan.index_keys.tolist() == [3, 5] and plan.next_key == 6
    assert sorted(k for cf, k, _ in plan.puts if cf == IDS) == [b"k" + pack_key(5), b"snew"]


def test_deletes_by_id_and_by_filter_remove_only_what_exists() -> None:
    view = FakeView("string")
    for i, name in enumerate(["a", "b"], start=1):
        view.names[name] = pack_key(i)
        view.points[pack_key(i)] = records.pack(vec(i, i).tobytes(), json.dumps({"i": i}).encode())
    plan = plan_delete(view, np.array(["a", "zzz"], dtype=object))
    assert plan.result == 1 and plan.removed.tolist() == [1] and plan.logged == pack_key(1)
    assert (POINTS, pack_key(1)) in plan.deletes and (IDS, b"sa") in plan.deletes
    assert (INDEX, LIVE + pack_key(1)) in plan.deletes and not plan.puts
    node = parse_json('{"i": {"$gt": 1}}')
    assert node is not None
    by_filter = plan_delete_filter(view, node)
    assert by_filter.result == 1 and by_filter.removed.tolist() == [2] and (IDS, b"sb") in by_filter.deletes
    none = plan_delete(view, np.array(["zzz"], dtype=object))
    assert none.result == 0 and not none.writes


def test_set_payload_rewrites_changed_records_only() -> None:
    view = FakeView()
    view.points[pack_key(1)] = records.pack(vec(1, 1).tobytes(), b'{"a":1,"b":{"c":2}}')
    view.points[pack_key(2)] = records.pack(vec(2, 2).tobytes(), b'{"a":5}')
    plan = plan_set_payload(view, np.array([1, 2, 3], np.uint64), {"a": 5}, ["b.c"])
    assert plan.result == 2 and plan.mirror_keys.tolist() == [1]
    assert [(cf, k) for cf, k, _ in plan.puts if cf == POINTS] == [(POINTS, pack_key(1))]
    new = next(v for cf, _, v in plan.puts if cf == POINTS)
    assert records.payload(new, DIM) == b'{"a":5,"b":{}}' and records.vector_bytes(new, DIM) == vec(1, 1).tobytes()
    assert plan.index_vectors is None and not len(plan.removed)


def test_a_plan_round_trips_through_bytes() -> None:
    view = FakeView("string")
    view.names["x"] = pack_key(1)
    view.points[pack_key(1)] = records.pack(vec(0, 1).tobytes(), b'{"t":"x","n":[1,2.5],"f":true}')
    for plan in (
        plan_upsert(view, np.array(["x", "y"], dtype=object), vec(1, 2, 3, 4), [b'{"t":"y","n":null}', b""]),
        plan_delete(view, np.array(["x"], dtype=object)),
        plan_set_payload(view, np.array(["x"], dtype=object), {"f": False}, []),
    ):
        back = WritePlan.from_bytes(plan.to_bytes())
        assert back.to_bytes() == plan.to_bytes()
        assert (back.collection, back.result, back.puts, back.deletes) == (
            plan.collection,
            plan.result,
            plan.puts,
            plan.deletes,
        )
        assert (back.next_key, back.logged, back.mirror_fields) == (plan.next_key, plan.logged, plan.mirror_fields)
        for a, b in ((back.index_keys, plan.index_keys), (back.removed, plan.removed)):
            assert a.dtype == np.uint64 and a.tolist() == b.tolist()
        assert (back.index_vectors is None) == (plan.index_vectors is None)
        if plan.index_vectors is not None and back.index_vectors is not None:
            assert back.index_vectors.tobytes() == plan.index_vectors.tobytes()


def test_create_plans_column_families_only_for_a_new_collection() -> None:
    catalogue = FakeCatalogue(FakeView())
    new = plan_write(CreateCollection(CollectionConfig("s", DIM, id_type="string")), catalogue)
    assert isinstance(new, CreatePlan) and new.created and new.families == ("p.s", "i.s", "x.s")
    numeric = plan_write(CreateCollection(CollectionConfig("n", DIM)), catalogue)
    assert isinstance(numeric, CreatePlan) and numeric.families == ("p.n", "x.n")
    same = plan_write(CreateCollection(CollectionConfig("c", DIM)), catalogue)
    assert isinstance(same, CreatePlan) and not same.created and same.families == ()
    with pytest.raises(AlreadyExists, match="another config"):
        plan_write(CreateCollection(CollectionConfig("c", DIM + 1)), catalogue)
    assert set(catalogue.views) == {"c"}  # planning created nothing


def test_drop_plans_the_column_families_of_an_existing_collection_only() -> None:
    catalogue = FakeCatalogue(FakeView("string"))
    drop = plan_write(DropCollection("c"), catalogue)
    assert isinstance(drop, DropPlan) and drop.dropped and drop.families == ("p.c", "i.c", "x.c")
    missing = plan_write(DropCollection("nope"), catalogue)
    assert isinstance(missing, DropPlan) and not missing.dropped and missing.families == ()
    assert set(catalogue.views) == {"c"}


def test_a_point_write_to_another_incarnation_is_not_found() -> None:
    view = FakeView(born=7)
    view.points[pack_key(1)] = records.pack(vec(1, 1).tobytes(), b"")
    catalogue = FakeCatalogue(view)
    ids = np.array([1], np.uint64)
    assert plan_write(Delete("c", 7, ids), catalogue).result == 1
    for request in (Delete("c", 3, ids), Delete("gone", 7, ids), Upsert("c", 8, ids, vec(1, 2))):
        with pytest.raises(NotFound, match="does not exist"):
            plan_write(request, catalogue)


def test_create_and_drop_plans_round_trip_through_bytes() -> None:
    config = CollectionConfig("s", DIM, metric="l2", precision="f16", id_type="string")
    catalogue = FakeCatalogue(FakeView())
    for planned in (
        plan_write(CreateCollection(config), catalogue),
        plan_write(CreateCollection(CollectionConfig("c", DIM)), catalogue),
        plan_write(DropCollection("c"), catalogue),
        plan_write(DropCollection("nope"), catalogue),
    ):
        back = plan_from_bytes(planned.to_bytes())
        assert type(back) is type(planned) and back == planned and back.to_bytes() == planned.to_bytes()
    points = plan_upsert(FakeView(), np.array([1], np.uint64), vec(1, 2), [])
    back = plan_from_bytes(points.to_bytes())
    assert isinstance(back, WritePlan) and back.to_bytes() == points.to_bytes()
