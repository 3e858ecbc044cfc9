"""A shard's side of slot moves, in process: ownership per phase, hidden points, exports, imports, range deletes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from shoal._config import SLOTS, CollectionConfig
from shoal._errors import Aborted, FailedPrecondition, Unavailable
from shoal._hash import slots_of
from shoal._meta_values import Move, SlotRange, Topology
from shoal._search import Search, SearchShape
from shoal.shard.core import Shard
from shoal.shard.options import ShardOptions
from shoal.shard.ownership import check_write, ownership, slots_of_keys
from shoal.shard.storage import pack_keys
from tests.conftest import clustered

HALF = SLOTS // 2
MOVING = (0, 512)
DIM = 8


def topology(phase: str | None, version: int) -> Topology:
    """g0 and g1 own half each; slots MOVING go from g0 to g2 in `phase` (None: no move)."""
    ranges = (SlotRange(0, HALF, "g0"), SlotRange(HALF, SLOTS, "g1"))
    if phase == "cleanup":
        ranges = (SlotRange(0, MOVING[1], "g2"), SlotRange(MOVING[1], HALF, "g0"), ranges[1])
    moves = () if phase is None else (Move("m", *MOVING, "g0", "g2", phase),)  # type: ignore[arg-type]
    return Topology(ranges, version, moves=moves)


def test_each_phase_sets_what_the_source_and_the_target_own_freeze_import_and_hide() -> None:
    inside = np.array([MOVING[0]])
    for phase, source, target in [
        ("copy", (True, False, False, False), (False, False, True, True)),
        ("frozen", (True, True, False, False), (False, False, True, True)),
        ("cleanup", (False, False, False, True), (True, False, False, False)),
        ("abort", (True, False, False, False), (False, False, False, True)),
        (None, (True, False, False, False), (False, False, False, False)),
    ]:
        for group, want in (("g0", source), ("g2", target)):
            own = ownership(topology(phase, 5), group)
            got = (bool(own.owned[inside][0]), bool(own.frozen[inside][0]), bool(own.importing[inside][0]), own.hiding)
            assert got == want, (phase, group)
    frozen = ownership(topology("frozen", 5), "g0")
    with pytest.raises(Unavailable) as info:
        check_write(frozen, inside)
    assert info.value.retry_after is not None and "slots moving" in info.value.message
    check_write(frozen, np.array([MOVING[1]]))  # the rest of g0's slots take writes
    with pytest.raises(FailedPrecondition):
        check_write(ownership(topology("copy", 5), "g2"), inside)  # a caller's write before the switch
    with pytest.raises(FailedPrecondition):
        check_write(ownership(topology("abort", 5), "g2"), inside, importing=True)  # no copies after a rollback


@pytest.fixture(params=["uint64", "string"])
def shard(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Shard, np.ndarray]]:
    """A shard of group g0 with 800 points; the ids (of the collection's id type)."""
    with Shard(tmp_path, options=ShardOptions(threads=1, oplog=True)) as s:
        s.create_collection(CollectionConfig("c", dim=DIM, metric="l2", id_type=request.param))
        n = 800
        ids = (
            np.arange(n, dtype=np.uint64)
            if request.param == "uint64"
            else np.array([f"p{i}" for i in range(n)], object)
        )
        s.upsert("c", ids, clustered(n, DIM))
        s.set_ownership(ownership(topology(None, 1), "g0"))
        yield s, ids


def slots(ids: np.ndarray) -> np.ndarray:
    return slots_of(ids if ids.dtype == np.uint64 else list(ids))


def test_a_range_exports_whole_and_the_changes_after_a_sequence(shard: tuple[Shard, np.ndarray]) -> None:
    s, ids = shard
    inside = ids[(slots(ids) >= MOVING[0]) & (slots(ids) < MOVING[1])]
    got, cursor = [], ""
    while True:
        page = s.export_range("c", *MOVING, cursor, 7)
        got.extend(page.found.ids.tolist())
        assert page.found.vectors is not None and len(page.found.vectors) == len(page.found.ids)
        cursor = page.cursor
        if not cursor:
            break
    assert sorted(got) == sorted(inside.tolist())
    s.set_owned([(0, SLOTS)])  # callers may write every id here
    start = s.sequence
    s.upsert("c", ids[:50], clustered(50, DIM, seed=3))
    s.delete("c", ids[50:100])
    changes = s.export_changes("c", *MOVING, start)
    first = ids[:100]
    moved = first[(slots(first) >= MOVING[0]) & (slots(first) < MOVING[1])]
    assert changes.seq == s.sequence
    assert sorted(changes.found.ids.tolist()) == sorted(x for x in moved.tolist() if x in set(ids[:50].tolist()))
    assert sorted(changes.deleted.tolist()) == sorted(x for x in moved.tolist() if x in set(ids[50:100].tolist()))


def test_the_target_hides_imported_copies_until_it_owns_them(shard: tuple[Shard, np.ndarray]) -> None:
    s, ids = shard
    inside = ids[(slots(ids) >= MOVING[0]) & (slots(ids) < MOVING[1])]
    s.set_owned([(0, SLOTS)])
    s.delete("c", ids[(slots(ids) < MOVING[0]) | (slots(ids) >= MOVING[1])])  # it holds just the range's points
    # This shard is the target now: g2, importing MOVING from g0 (its points stand in for earlier copies).
    s.set_ownership(ownership(topology("copy", 2), "g2"))
    x = clustered(len(inside), DIM, seed=4)
    written = sum(f.result() for f in s.submit_import("c", inside, x, [], ids[:0]))
    assert written == len(inside)
    assert s.count("c", version=2) == 0  # all hidden
    assert s.describe("c").count == 0
    assert s.search("c", x[:3], k=2).counts.tolist() == [0, 0, 0]
    assert len(s.get("c", inside, version=2).ids) == 0
    assert len(s.scroll("c", version=2).ids) == 0
    with pytest.raises(Aborted):
        s.count("c", version=1)
    with pytest.raises(FailedPrecondition):
        s.delete_range("c", *MOVING)  # never the slots being imported
    s.set_ownership(ownership(topology("cleanup", 3), "g2"))
    assert s.count("c", version=3) == len(inside)  # owned now: visible, the rest stays hidden
    found = s.search("c", x[:3], k=1)
    assert found.ids[:, 0].tolist() == inside[:3].tolist()
    assert sorted(s.get("c", ids, version=3).ids.tolist()) == sorted(inside.tolist())
    # The source's side of the same version: it hides its old copies, then deletes them.
    s.set_ownership(ownership(topology("cleanup", 3), "g0"))
    assert s.count("c", version=3) == 0
    assert s.delete_range("c", *MOVING) == len(inside)
    s.set_ownership(ownership(topology(None, 4), "g0"))
    assert s.count("c", version=4) == 0 and s.verify("c").consistent


def test_reads_of_older_versions_are_served_while_only_move_phases_changed() -> None:
    v1 = ownership(topology(None, 1), "g0")
    v2 = ownership(topology("copy", 2), "g0", v1)
    v3 = ownership(topology("frozen", 3), "g0", v2)
    assert [v3.serves(v) for v in (0, 1, 2, 3, 4)] == [True, True, True, True, False]  # newer: the servicer waits
    v4 = ownership(topology("cleanup", 4), "g0", v3)  # the switch: the slots changed hands
    assert [v4.serves(v) for v in (1, 2, 3, 4)] == [False, False, False, True]
    v5 = ownership(Topology(v4.ranges, 5), "g0", v4)  # the move ends, g2 keeps the slots
    assert [v5.serves(v) for v in (3, 4, 5)] == [False, True, True]
    skipped = ownership(topology(None, 5), "g0", v3)  # version 4 was never seen here: it may have moved slots
    assert [skipped.serves(v) for v in (3, 4, 5)] == [False, False, True]
    assert not ownership(topology("copy", 2), "g0").serves(1)  # nothing before: its own version only


def test_a_shard_answers_an_older_version_of_the_same_slots(shard: tuple[Shard, np.ndarray]) -> None:
    s, ids = shard
    s.set_ownership(ownership(topology("copy", 2), "g0", s.ownership))
    s.set_ownership(ownership(topology("frozen", 3), "g0", s.ownership))
    assert s.count("c", version=1) == s.count("c", version=3) == len(ids)
    s.set_ownership(ownership(topology("cleanup", 4), "g0", s.ownership))
    for version in (1, 3, 5):
        with pytest.raises(Aborted, match="shard has 4"):
            s.count("c", version=version)


def test_string_ids_slots_are_read_from_rocksdb_once_while_points_are_hidden(tmp_path: Path) -> None:
    """While a group hides points, each write makes reads recompute what is visible: of string ids only the
    new keys' ids are read again, and the slots found agree with the ids' own."""
    with Shard(tmp_path, options=ShardOptions(threads=1, oplog=True)) as s:
        s.create_collection(CollectionConfig("c", dim=DIM, metric="l2", id_type="string"))
        ids = np.array([f"p{i}" for i in range(300)], object)
        s.upsert("c", ids, clustered(300, DIM))
        own = ownership(topology("cleanup", 3), "g0")  # g2 owns MOVING now: g0 hides its old copies
        s.set_ownership(own)
        coll = s._collection("c")
        read: list[int] = []
        ids_of = coll.store.ids_of
        coll.store.ids_of = lambda keys: read.append(len(keys)) or ids_of(keys)  # type: ignore[method-assign]
        owned = int(own.owned[slots(ids)].sum())
        assert 0 < s.count("c", version=3) == owned < len(ids)
        assert read == [300]
        s.upsert("c", np.array(["new"], object), clustered(1, DIM, seed=9))
        assert s.count("c", version=3) == owned + int(own.owned[slots(np.array(["new"], object))[0]])
        assert read == [300, 1]
        keys = coll.filters.live()
        want = slots_of([coll.store.ids_of(pack_keys(keys[i : i + 1]))[0].decode() for i in range(len(keys))])
        assert slots_of_keys(coll, keys).tolist() == want.tolist()


def test_a_range_delete_waits_for_the_reads_admitted_before_its_switch(shard: tuple[Shard, np.ndarray]) -> None:
    """A search admitted while the source still owned the range may run after the switch: the range delete waits
    for it, so it does not lose the points the search found (its payload look-up would find them deleted)."""
    s, ids = shard
    inside = ids[(slots(ids) >= MOVING[0]) & (slots(ids) < MOVING[1])]
    found = s.get("c", inside[:1], with_vectors=True)
    assert found.vectors is not None
    release = threading.Event()
    s._worker.call(release.wait)  # the index worker is busy: the search waits behind it
    search = s.submit_search(Search(SearchShape("c", 1, with_payload=True), found.vectors), version=1)
    s.set_ownership(ownership(topology("cleanup", 2), "g0"))  # the switch: the range is g2's now
    with ThreadPoolExecutor(1) as pool:
        deleting = pool.submit(s.delete_range, "c", *MOVING)
        time.sleep(0.3)
        assert not deleting.done()
        release.set()
        hits = search.result(10)[0]
        assert hits.ids[0, 0] == inside[0] and hits.counts[0] == 1
        assert deleting.result(10) == len(inside)
