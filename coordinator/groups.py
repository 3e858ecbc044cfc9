"""The coordinator over shard groups in etcd: a live view of topology, groups and catalogue, and one
connection per group that sends writes to its primary and reads to any in-sync member.

`GroupView` reads the cluster's topology and groups once, then follows etcd's watches (re-reading on any
change), and tells the core (`Coordinator.retarget`) whenever the routing changes. `GroupConnection`
is the core's ShardConnection for one group: a write goes to the group's primary and, when that member
is unreachable or answers "not the primary", waits for the view to change and tries again within the
caller's deadline; a read goes to the in-sync member with the fewest calls in flight and, when that
member fails, is retried on another one, so one member's death costs no failed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shoal._config import SLOTS
from shoal._errors import FailedPrecondition, ShoalError, Unavailable
from shoal._meta import MetaStore
from shoal._meta_values import GroupState, Section
from shoal._meta_values import Topology as MetaTopology
from shoal._tls import TLS
from shoal._token import BEHIND
from shoal.coordinator.shards import ShardClient
from shoal.coordinator.topology import SlotRange, Topology
from shoal.v1 import types_pb2 as pb

log = logging.getLogger("shoal.coordinator.groups")

T = TypeVar("T")
RETRY_BUDGET = 8.0  # seconds a call keeps retrying on other members or a new primary
WAIT_STEP = 0.05  # seconds between retries when no change arrives
WATCH_LAG = 0.02  # seconds a caller waits for the watch to bring a version before it reads etcd itself


def routing_topology(
    topology: MetaTopology, groups: dict[str, GroupState], last: dict[str, str] | None = None
) -> Topology:
    """The core's topology: each slot range's group named by its primary's address, else by its last
    primary's (`last`: group → address, so a dead primary is reported under its own address), else a placeholder."""
    names = list(dict.fromkeys(r.group for r in topology.ranges))

    def address(i: int, group: str) -> str:
        state = groups.get(group)
        if state is not None and state.primary is not None and state.primary in state.members:
            return state.members[state.primary]
        if last and group in last and last[group] not in taken:
            return last[group]
        return f"{group}.unavailable:{i + 1}"

    taken = {s.members[s.primary] for s in groups.values() if s.primary is not None and s.primary in s.members}

    addresses = {g: address(i, g) for i, g in enumerate(names)}
    ranges = tuple(SlotRange(addresses[r.group], r.start, r.end) for r in topology.ranges)
    return Topology(max(topology.version, 1), ranges or (SlotRange("none.unavailable:1", 0, SLOTS),))


class GroupView:
    """The topology and groups as etcd has them, kept current by watches."""

    def __init__(self, meta: MetaStore, tls: TLS | None = None, cluster_secret: bytes | None = None) -> None:
        self.meta = meta
        self._tls, self._secret = tls, cluster_secret  # how members are reached (as ShardPool does)
        self.topology = MetaTopology()
        self.groups: dict[str, GroupState] = {}
        self.connections: dict[str, GroupConnection] = {}
        self.clients: dict[str, ShardClient] = {}
        self.on_change: Callable[[], None] = lambda: None
        self._changed = asyncio.Event()  # set (and replaced) on every change
        self._tasks: list[asyncio.Task[None]] = []
        self._reading: asyncio.Task[None] | None = None  # a direct read of etcd for callers the watch left behind

    async def start(self) -> None:
        """Read everything once, then follow changes."""
        revision = await self.meta.revision()
        await self._reload()
        for section in ("topology", "groups"):
            self._tasks.append(asyncio.create_task(self._watch(section, revision + 1)))
        self._tasks.append(asyncio.create_task(self._poll()))

    async def _reload(self) -> None:
        topology = await self.meta.get_topology()
        if topology.version < self.topology.version:
            topology = self.topology  # an older read that finished after a newer one
        names = list(dict.fromkeys(r.group for r in topology.ranges))
        groups = dict(zip(names, await asyncio.gather(*(self.meta.get_group(g) for g in names)), strict=True))
        self.topology, self.groups = topology, groups
        for name in names:
            if name not in self.connections:
                self.connections[name] = GroupConnection(self, name)
            state, conn = groups[name], self.connections[name]
            if state.members:
                conn.last_seen = sorted(state.members.values())
            if state.primary is not None and state.primary in state.members:
                conn.last_primary = state.members[state.primary]
        self.on_change()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _watch(self, section: Section, revision: int) -> None:
        while True:
            try:
                async for change in self.meta.watch(section, revision):
                    revision = change.revision + 1
                    await self._reload()
            except ShoalError as exc:
                log.warning("watch of %s: %s", section, exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(ShoalError):
                    revision = await self.meta.revision() + 1
                    await self._reload()

    async def _poll(self) -> None:
        # A safety net beside the watches (a broken watch, a missed lease expiry).
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(ShoalError):
                await self._reload()

    async def changed(self, timeout: float) -> None:
        """Wait for the next change, at most `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(timeout, 0.0))

    async def reach(self, version: int, timeout: float) -> None:
        """Wait until the topology is at `version` or newer, at most `timeout` seconds: woken by the watch, and
        reading etcd directly (once, shared by every waiter) when the watch lags behind a version a shard has."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        read = False
        while self.topology.version < version and loop.time() < end:
            if read:
                await self.changed(end - loop.time())
                continue
            await self.changed(min(WATCH_LAG, end - loop.time()))
            if self.topology.version < version and loop.time() < end:
                read = True
                if self._reading is None or self._reading.done():
                    self._reading = asyncio.create_task(self._reload())
                    self._reading.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen: not logged
                with contextlib.suppress(ShoalError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._reading), max(end - loop.time(), 0.0))

    def routing(self) -> tuple[Topology, list[GroupConnection]]:
        """The core's topology and one connection per shard of it, in its order."""
        last = {name: c.last_primary for name, c in self.connections.items() if c.last_primary}
        topology = routing_topology(self.topology, self.groups, last)
        by_address = {}
        for r_meta, r in zip(self.topology.ranges, topology.ranges, strict=True):
            by_address[r.address] = self.connections[r_meta.group]
        return topology, [by_address[a] for a in topology.addresses]

    def client(self, address: str) -> ShardClient:
        """The one connection to a member's address."""
        client = self.clients.get(address)
        if client is None:
            client = self.clients[address] = ShardClient(address, self._tls, self._secret)
        return client

    async def close(self) -> None:
        """Stop watching and close every connection."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)


class GroupConnection:
    """The core's connection to one shard group (a ShardConnection): writes to the primary, reads spread."""

    def __init__(self, view: GroupView, group: str) -> None:
        self.view, self.group = view, group
        self.outstanding: dict[str, int] = {}  # member address → calls in flight
        self.last_seen: list[str] = []  # the addresses of the members last listed (named when none is)
        self.last_primary = ""  # the address of the last primary seen
        self._turn = 0  # rotates reads among the members with equally few calls in flight

    @property
    def address(self) -> str:
        """The primary's address (what describe and errors name)."""
        state = self.view.groups.get(self.group)
        if state is not None and state.primary is not None and state.primary in state.members:
            return state.members[state.primary]
        return self.last_primary or self.group

    def _primary(self) -> str | None:
        state = self.view.groups.get(self.group)
        if state is None or state.primary is None:
            return None
        return state.members.get(state.primary)

    def readers(self) -> list[str]:
        """The addresses of the live in-sync members (those that may answer reads)."""
        return self._readers(set())

    def _readers(self, avoid: set[str]) -> list[str]:
        state = self.view.groups.get(self.group)
        if state is None:
            return []
        names = state.in_sync or ((state.primary,) if state.primary else ())
        addresses = [state.members[m] for m in names if m in state.members and state.members[m] not in avoid]
        # The coordinator's batcher often has a single call in flight per group: without the rotation every
        # tie went to the first member, and a second copy took no reads at all (measured).
        self._turn += 1
        turn = self._turn % len(addresses) if addresses else 0
        return sorted(addresses[turn:] + addresses[:turn], key=lambda a: self.outstanding.get(a, 0))

    async def _retry(
        self,
        pick: Callable[[set[str], set[str]], str | None],
        call: Callable[[Any, float | None], Awaitable[T]],
        timeout: float | None,
        write: bool,
    ) -> T:
        loop = asyncio.get_running_loop()
        # Retry through a failover (about 3 s), but answer with the member's error before the caller's
        # deadline passes, so a group that stays down is reported as UNAVAILABLE naming its member.
        budget = min(RETRY_BUDGET, 0.9 * timeout) if timeout is not None else RETRY_BUDGET
        deadline = loop.time() + budget
        end = None if timeout is None else loop.time() + timeout  # the caller's: each attempt may use it all
        failed: set[str] = set()
        behind: set[str] = set()  # members that refused a read for being behind the caller's token
        where = ", ".join(self.last_seen) or "none"
        last: ShoalError = Unavailable(f"shard group {self.group} has no reachable member (last listed: {where})")
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise last
            address = pick(failed, behind)
            if address is None:
                failed.clear()
                await self.view.changed(min(left, 0.5))
                continue
            self.outstanding[address] = self.outstanding.get(address, 0) + 1
            try:
                return await call(self.view.client(address), None if end is None else end - loop.time())
            except Unavailable as exc:
                last = exc
                failed.add(address)
            except FailedPrecondition as exc:
                if not write and BEHIND in exc.message:  # a replica behind the caller's token: ask the primary
                    last = exc
                    failed.add(address)
                    behind.add(address)
                    continue
                if not write or "not the primary" not in exc.message:
                    raise
                last = Unavailable(f"shard group {self.group} is electing a primary")
                await self.view.changed(min(left, WAIT_STEP * 4))
            finally:
                self.outstanding[address] -= 1
            if write:
                await self.view.changed(min(deadline - loop.time(), WAIT_STEP))

    async def _write(self, call: Callable[[Any, float | None], Awaitable[T]], timeout: float | None) -> T:
        return await self._retry(lambda failed, behind: self._primary(), call, timeout, True)

    async def _read(self, call: Callable[[Any, float | None], Awaitable[T]], timeout: float | None) -> T:
        def pick(failed: set[str], behind: set[str]) -> str | None:
            primary = self._primary()
            if behind and primary is not None and primary not in failed:
                return primary  # it has every acknowledged write
            readers = self._readers(failed)
            return readers[0] if readers else None

        return await self._retry(pick, call, timeout, False)

    async def create_collection(self, request: pb.CreateCollectionRequest, timeout: float | None) -> Any:
        """Create on the primary (only used without a catalogue)."""
        return await self._write(lambda c, t: c.create_collection(request, t), timeout)

    async def drop_collection(self, request: pb.DropCollectionRequest, timeout: float | None) -> Any:
        """Drop on the primary (only used without a catalogue)."""
        return await self._write(lambda c, t: c.drop_collection(request, t), timeout)

    async def list_collections(self, timeout: float | None) -> Any:
        """The primary's collections."""
        return await self._write(lambda c, t: c.list_collections(t), timeout)

    async def describe_collection(self, request: pb.DescribeCollectionRequest, timeout: float | None) -> Any:
        """The primary's view of a collection (its count is the acknowledged one)."""
        return await self._write(lambda c, t: c.describe_collection(request, t), timeout)

    async def upsert(self, request: pb.UpsertRequest, timeout: float | None) -> Any:
        """Upsert through the primary."""
        return await self._write(lambda c, t: c.upsert(request, t), timeout)

    async def delete(self, request: pb.DeleteRequest, timeout: float | None) -> Any:
        """Delete through the primary."""
        return await self._write(lambda c, t: c.delete(request, t), timeout)

    async def set_payload(self, request: pb.SetPayloadRequest, timeout: float | None) -> Any:
        """Set payloads through the primary."""
        return await self._write(lambda c, t: c.set_payload(request, t), timeout)

    async def get(self, request: pb.GetRequest, timeout: float | None) -> Any:
        """Get from an in-sync member."""
        return await self._read(lambda c, t: c.get(request, t), timeout)

    async def count(self, request: pb.CountRequest, timeout: float | None) -> Any:
        """Count on an in-sync member."""
        return await self._read(lambda c, t: c.count(request, t), timeout)

    async def scroll(self, request: pb.ScrollRequest, timeout: float | None) -> Any:
        """Scroll on the primary (cursors are per member only by chance equal: keep one member)."""
        return await self._write(lambda c, t: c.scroll(request, t), timeout)

    async def status(self, timeout: float | None) -> Any:
        """The primary's process status."""
        return await self._write(lambda c, t: c.status(t), timeout)

    async def search(self, request: pb.SearchRequest, timeout: float | None) -> Any:
        """Search on an in-sync member (least outstanding), another one if it fails."""
        return await self._read(lambda c, t: c.search(request, t), timeout)


class MetaCatalogue:
    """The collection catalogue in etcd, as the coordinator core uses it."""

    def __init__(self, view: GroupView) -> None:
        self.meta = view.meta
        self.view = view

    async def applied(self, name: str, exists: bool, timeout: float | None) -> bool:
        """Whether every live in-sync member of every group has (or, for a drop, no longer has) the collection.

        Every member is asked, not only primaries: a primary shows a new collection before its replicas have
        acknowledged it, and a search may go to any in-sync member.
        """

        async def has(address: str) -> bool:
            names = (await self.view.client(address).list_collections(timeout)).names
            return name in names

        addresses = [a for c in self.view.connections.values() for a in c.readers()]
        try:
            found = await asyncio.gather(*(has(a) for a in addresses))
        except Unavailable:
            return False
        return bool(addresses) and all(f == exists for f in found)

    async def create(self, config: Any) -> bool:
        """Add a collection; False if it exists with this config."""
        return await self.meta.create_collection(config)

    async def drop(self, name: str) -> bool:
        """Remove a collection; False if it was not there."""
        return await self.meta.drop_collection(name)

    async def names(self) -> list[str]:
        """Every collection's name, sorted."""
        return sorted(c.name for c in await self.meta.list_collections())
