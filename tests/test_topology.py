"""The topology: even splits, the JSON file and its validation, and routing ids to their shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal._config import SLOTS
from shoal._hash import slots_of
from shoal.coordinator.topology import SlotRange, Topology, TopologyError


def ranges_of(topology: Topology) -> list[tuple[str, int, int]]:
    return [(r.address, r.start, r.end) for r in topology.ranges]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 64, 1000, SLOTS])
def test_even_split_gives_shard_i_the_range_i_n(n: int) -> None:
    addresses = [f"shard-{i}:7000" for i in range(n)]
    topology = Topology.even(addresses)
    assert topology.addresses == tuple(addresses)
    assert ranges_of(topology) == [(a, i * SLOTS // n, (i + 1) * SLOTS // n) for i, a in enumerate(addresses)]
    sizes = np.bincount(topology.owner, minlength=n)
    assert sizes.sum() == SLOTS and sizes.max() - sizes.min() <= 1


def test_even_split_of_three() -> None:
    topology = Topology.even(["a:1", "b:2", "c:3"])
    assert ranges_of(topology) == [("a:1", 0, 1365), ("b:2", 1365, 2730), ("c:3", 2730, 4096)]
    assert topology.version == 1
    assert topology.shard_of_slots(np.array([0, 1364, 1365, 2729, 2730, 4095])).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ([], "at least one shard"),
        (["a:1", "b:2", "a:1"], "shard address a:1 is given twice"),
        ([f"h:{i + 1}" for i in range(SLOTS + 1)], f"at most {SLOTS} shards"),
        (["localhost"], "must be 'host:port'"),
        (["host:0"], "must be 'host:port'"),
        (["host:70000"], "must be 'host:port'"),
        ([":7000"], "must be 'host:port'"),
    ],
)
def test_even_split_rejects(addresses: list[str], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology.even(addresses)


def doc(*shards: tuple[str, int, int], version: Any = 1) -> dict[str, Any]:
    return {"version": version, "shards": [{"address": a, "slots": [s, e]} for a, s, e in shards]}


def test_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(doc(("10.0.0.2:7000", 2048, 4096), ("10.0.0.1:7000", 0, 2048), version=7)))
    topology = Topology.from_file(path)
    assert topology.version == 7
    assert topology.addresses == ("10.0.0.2:7000", "10.0.0.1:7000")
    assert topology.owner[0] == 1 and topology.owner[2047] == 1 and topology.owner[2048] == 0
    assert Topology.from_dict(topology.to_dict()) == topology


def test_an_address_with_several_ranges_is_one_shard() -> None:
    topology = Topology.from_dict(doc(("a:1", 0, 100), ("b:2", 100, 4000), ("a:1", 4000, 4096)))
    assert topology.addresses == ("a:1", "b:2")
    assert np.bincount(topology.owner).tolist() == [196, 3900]


def test_ipv6_and_names_are_addresses() -> None:
    topology = Topology.from_dict(doc(("[::1]:7000", 0, 10), ("shard-0.shoal.svc:7000", 10, SLOTS)))
    assert topology.addresses == ("[::1]:7000", "shard-0.shoal.svc:7000")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "a topology is a JSON object"),
        ({"shards": doc(("a:1", 0, SLOTS))["shards"]}, "no 'version'"),
        (doc(("a:1", 0, SLOTS), version="1"), "version must be a non-negative integer"),
        (doc(("a:1", 0, SLOTS), version=True), "version must be a non-negative integer"),
        (doc(("a:1", 0, SLOTS), version=-1), "version must be a non-negative integer"),
        ({"version": 1}, "'shards' must be a non-empty list"),
        ({"version": 1, "shards": []}, "'shards' must be a non-empty list"),
        ({"version": 1, "shards": {"a:1": [0, SLOTS]}}, "'shards' must be a non-empty list"),
        ({"version": 1, "shards": ["a:1"]}, r"shards\[0\] must be an object"),
        ({**doc(("a:1", 0, SLOTS)), "replicas": 2}, r"the topology has unknown keys \['replicas'\]"),
        ({"version": 1, "shards": [{"address": "a:1", "slots": [0, SLOTS], "weight": 1}]}, "unknown keys"),
        ({"version": 1, "shards": [{"slots": [0, SLOTS]}]}, r"shards\[0\].address must be a string"),
        ({"version": 1, "shards": [{"address": 7, "slots": [0, SLOTS]}]}, r"address must be a string"),
        ({"version": 1, "shards": [{"address": "a:1"}]}, r"shards\[0\].slots must be \[start, end\]"),
        ({"version": 1, "shards": [{"address": "a:1", "slots": [0, 1, 2]}]}, "slots must be"),
        ({"version": 1, "shards": [{"address": "a:1", "slots": [0, 4096.0]}]}, "slots must be"),
        ({"version": 1, "shards": [{"address": "a:1", "slots": [False, SLOTS]}]}, "slots must be"),
        (doc(("a", 0, SLOTS)), "shard address 'a' must be 'host:port'"),
        (doc(("a:1", 0, 0), ("b:2", 0, SLOTS)), r"shard a:1: slots \[0, 0\) must satisfy"),
        (doc(("a:1", -1, SLOTS)), r"slots \[-1, 4096\) must satisfy"),
        (doc(("a:1", 0, SLOTS + 1)), r"slots \[0, 4097\) must satisfy"),
        (doc(("a:1", 0, 2000), ("b:2", 1999, SLOTS)), "slot 1999 is assigned twice: to a:1 and to b:2"),
        (doc(("a:1", 0, SLOTS), ("a:1", 5, 6)), "slot 5 is assigned twice"),
        (doc(("a:1", 0, 2000), ("b:2", 2001, SLOTS)), "1 slots have no shard, the first is slot 2000"),
        (doc(("a:1", 10, SLOTS)), "10 slots have no shard, the first is slot 0"),
        (doc(("a:1", 0, 4000)), "96 slots have no shard, the first is slot 4000"),
    ],
)
def test_bad_topologies_are_rejected(document: Any, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology.from_dict(document)


def test_unreadable_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read topology file"):
        Topology.from_file(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "shards": [')
    with pytest.raises(TopologyError, match="is not valid JSON"):
        Topology.from_file(bad)


def test_a_topology_needs_a_shard() -> None:
    with pytest.raises(TopologyError, match="at least one shard"):
        Topology(1, ())


def check_route(topology: Topology, ids: np.ndarray) -> dict[int, np.ndarray]:
    """Route, and check the groups against the slot ranges: every id once, in its owner's ranges."""
    groups = topology.route(ids)
    everything = np.concatenate(list(groups.values()))
    assert sorted(everything.tolist()) == list(range(len(ids)))
    slots = slots_of(ids)
    for shard, positions in groups.items():
        assert len(positions) > 0
        assert (np.diff(positions) > 0).all()
        address = topology.addresses[shard]
        for slot in slots[positions]:
            assert any(r.address == address and r.start <= slot < r.end for r in topology.ranges)
    return groups


def test_route_groups_integer_ids_by_shard() -> None:
    topology = Topology.even(["a:1", "b:2", "c:3"])
    ids = np.random.default_rng(0).integers(0, 2**63, 5000, dtype=np.uint64) * np.uint64(2)
    groups = check_route(topology, ids)
    assert sorted(groups) == [0, 1, 2]
    assert all(len(g) > 1400 for g in groups.values())


def test_route_groups_string_ids_by_shard() -> None:
    topology = Topology.from_dict(doc(("a:1", 0, 100), ("b:2", 100, 4000), ("a:1", 4000, SLOTS)))
    ids = np.array([f"doc-{i}" for i in range(3000)] + ["é", "日本語"], dtype=object)
    groups = check_route(topology, ids)
    assert sorted(groups) == [0, 1]


def test_route_by_hand() -> None:
    ids = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint64)
    slots = slots_of(ids)
    # Put the first id's slot alone on shard b: only that id goes there.
    s = int(slots[0])
    ranges = [SlotRange("a:1", 0, s), SlotRange("b:2", s, s + 1), SlotRange("a:1", s + 1, SLOTS)]
    topology = Topology(2, tuple(r for r in ranges if r.start < r.end))
    groups = topology.route(ids)
    b = topology.addresses.index("b:2")
    expected_b = np.flatnonzero(slots == s)
    assert groups[b].tolist() == expected_b.tolist()
    assert sorted(groups[1 - b].tolist() + expected_b.tolist()) == list(range(6))


def test_route_of_nothing_and_of_one_shard() -> None:
    assert Topology.even(["a:1", "b:2"]).route(np.zeros(0, dtype=np.uint64)) == {}
    groups = Topology.even(["a:1"]).route(np.array(["x", "y", "z"], dtype=object))
    assert list(groups) == [0] and groups[0].tolist() == [0, 1, 2]


def shard_of_each(topology: Topology, ids: np.ndarray) -> list[int]:
    out = np.empty(len(ids), dtype=np.int64)
    for shard, positions in topology.route(ids).items():
        out[positions] = shard
    return out.tolist()


def test_route_is_pinned() -> None:
    # Golden values: the same ids go to the same shards in every process and every version.
    topology = Topology.even(["a:1", "b:2", "c:3", "d:4"])
    assert shard_of_each(topology, np.arange(20, dtype=np.uint64)) == [
        3,
        3,
        1,
        3,
        2,
        0,
        0,
        3,
        1,
        0,
        3,
        0,
        3,
        2,
        1,
        0,
        0,
        0,
        0,
        2,
    ]
    strings = np.array(["a", "b", "c", "doc-1", "doc-2"], dtype=object)
    assert shard_of_each(topology, strings) == [2, 0, 3, 1, 3]
