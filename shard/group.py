"""A shard's membership of its shard group: lease, election, role, term fencing, topology and catalogue.

The member joins its group in etcd under a lease and watches the group. While the group has no live
primary it tries to become one (`MetaStore.elect`: term + 1, only from the in-sync set). A new primary
first records its term, pulls from any live in-sync member that is ahead the writes it lacks, sets the
in-sync set to the live in-sync members, then ships every write through a `Replicator` and applies the
catalogue (collection create and drop) as writes, so replicas get them in order. A replica refuses
callers' writes and applies its primary's stream (`ReplicaSide`). Every member refuses a term lower than
the highest it accepted, and keeps that term in RocksDB. A replica outside the in-sync set whose next write
its primary's op log no longer holds copies the primary's data first (catchup.py).

A member started with `join` and no group name takes a new group's name (the first free gN, claimed in
etcd) and keeps it in its data folder, so a restart rejoins that group; with a name, it joins that group
(a new one, or as a new replica of an existing one, which catch-up fills).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Mapping
from typing import Any

from shoal._errors import AlreadyExists, FailedPrecondition, NotFound, ShoalError
from shoal._meta import Membership, MetaStore
from shoal._meta_values import GroupState, Section, Topology
from shoal._metrics import CATCHUPS
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials
from shoal._token import BEHIND, WAIT_SECONDS
from shoal.shard.catchup import copy_from
from shoal.shard.core import Shard
from shoal.shard.faults import CrashPoints
from shoal.shard.ownership import ownership
from shoal.shard.replication import ACK_TIMEOUT, ReplicaSide, Replicator
from shoal.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("shoal.shard.group")

LEASE_TTL = 3  # seconds: a dead primary is noticed (and replaced) after about this long
RESYNC = 1.0  # seconds between re-reads of the group besides watch events (a watch can break)
GROUP_FILE = "group"  # in a joined member's data folder: the group it joined


class GroupMember:
    """One shard's life in its group; `start` it once the shard is open, `stop` before closing the shard."""

    def __init__(
        self,
        shard: Shard,
        endpoint: str,
        cluster: str,
        group: str,
        member: str,
        address: str,
        lease_ttl: int = LEASE_TTL,
        ack_timeout: float = ACK_TIMEOUT,
        credentials: ClusterCredentials | None = None,
        join: bool = False,
    ) -> None:
        self.shard, self.endpoint, self.cluster = shard, endpoint, cluster
        self.join = join  # claim a new group's name in etcd ("" group: the first free one)
        self.credentials = credentials or ClusterCredentials()  # how it reaches the others: TLS, cluster secret
        self.group, self.member, self.address = group, member, address
        self.lease_ttl, self.ack_timeout = lease_ttl, ack_timeout
        self.role = ""  # "primary", "replica", or "" before joining
        self.term = shard.storage.term  # the highest term accepted
        self.replicator: Replicator | None = None
        self.replica = ReplicaSide(shard, self.accept_term, lambda: self.term, lambda: self.role == "primary")
        self._meta: MetaStore | None = None
        self._membership: Membership | None = None
        self._changed = asyncio.Event()
        self._catalogue = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._copying: asyncio.Task[None] | None = None  # a catch-up by snapshot under way
        self._behind = False  # seen outside the in-sync set: the next entry into it is a catch-up
        self._copied = False  # ...by snapshot (else by the op log)
        self._crash = CrashPoints(shard.options.crashpoint)
        shard.gate = self._gate

    def _gate(self) -> None:
        if self.role != "primary":
            raise FailedPrecondition(f"not the primary of group {self.group}")

    async def caught_up(self, token: Mapping[str, int]) -> None:
        """Return once this member has the writes of a caller's consistency token (a primary has every
        acknowledged one); a replica behind it waits a little, then refuses, and the caller asks the primary."""
        need = token.get(self.group, 0)
        if not need or self.role == "primary" or await self.replica.reach(need, WAIT_SECONDS):
            return
        raise FailedPrecondition(
            f"member {self.member} of group {self.group} is at write {self.replica.applied}, {BEHIND} ({need})"
        )

    def accept_term(self, term: int) -> None:
        """Refuse a term lower than the highest accepted; durably record a higher one (any thread)."""
        if term < self.term:
            raise FailedPrecondition(f"term {term} is older than term {self.term} of group {self.group}")
        if term > self.term:
            self.shard.storage.accept_term(term)
            self.term = term

    async def start(self) -> None:
        """Connect to etcd and run the member's loop in the background."""
        self._tasks.append(asyncio.create_task(self._run(), name=f"group {self.group}"))

    async def stop(self) -> None:
        """Step down, leave the group (revoking the lease) and close the etcd connection."""
        if self._copying is not None:
            self._tasks.append(self._copying)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._step_down()
        if self._membership is not None:
            with contextlib.suppress(Exception):
                await self._membership.leave()
        if self._meta is not None:
            with contextlib.suppress(Exception):
                await self._meta.close()

    async def _run(self) -> None:
        while self._meta is None:
            try:
                self._meta = await MetaStore.connect(self.endpoint, self.cluster)
            except ShoalError as exc:
                log.warning("etcd at %s: %s", self.endpoint, exc)
                await asyncio.sleep(RESYNC)
        meta = self._meta
        if self.join:
            self.group = await self._choose_group(meta)
        while True:  # through etcd's errors (a leader election, say), as every later step goes
            try:
                revision = await meta.revision()
                self._owned(await meta.get_topology())
                break
            except ShoalError as exc:
                log.warning("etcd at %s: %s", self.endpoint, exc)
                await asyncio.sleep(RESYNC)
        for section in ("topology", "groups", "catalogue"):
            self._tasks.append(asyncio.create_task(self._watch(section, revision + 1)))
        self._tasks.append(asyncio.create_task(self._trim()))
        while True:
            if self._membership is None or self._membership.lost.is_set():
                await self._step_down()
                self._membership = await self._join(meta)
                self.role = "replica"
            try:
                state = await meta.get_group(self.group)
                # A watch can miss a change without an error (cut off with its etcd member): read it here too.
                self._owned(await meta.get_topology())
                await self._react(state)
                self._catch_up(state)
                if self.role == "primary" and self._catalogue.is_set():
                    self._catalogue.clear()
                    await self._sync_catalogue()
            except ShoalError as exc:
                log.warning("group %s: %s", self.group, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), RESYNC)
            self._changed.clear()

    async def _choose_group(self, meta: MetaStore) -> str:
        """The group a joining member belongs to: the one its data folder names, the one asked for, or a new one."""
        saved = self.shard.data / GROUP_FILE
        name = self.group or (saved.read_text().strip() if saved.exists() else "")
        while True:
            try:
                taken = set(await meta.get_groups()) | {r.group for r in (await meta.get_topology()).ranges}
                if name and name not in taken and await meta.register_group(name):
                    log.info("group %s: registered as a new group", name)
                # A name in use (or claimed just now by another) is an existing group: this is a new replica of it.
                for i in itertools.count(len(taken)):
                    if name:
                        break
                    if f"g{i}" not in taken and await meta.register_group(f"g{i}"):
                        name = f"g{i}"
                        log.info("group %s: registered as a new group", name)
                break
            except ShoalError as exc:
                log.warning("cannot register a group in etcd: %s", exc)
                await asyncio.sleep(RESYNC)
        temporary = saved.with_suffix(".tmp")
        temporary.write_text(name + "\n")
        temporary.replace(saved)
        return name

    async def _join(self, meta: MetaStore) -> Membership:
        while True:
            try:
                membership = await meta.join(self.group, self.member, self.address, self.lease_ttl)
                log.info("joined group %s as %s (%s)", self.group, self.member, self.address)
                return membership
            except AlreadyExists:
                # The lease of this member's previous process has not run out yet.
                await asyncio.sleep(RESYNC / 2)
            except ShoalError as exc:
                log.warning("group %s: cannot join: %s", self.group, exc)
                await asyncio.sleep(RESYNC)

    async def _watch(self, section: Section, revision: int) -> None:
        assert self._meta is not None
        while True:
            try:
                async for change in self._meta.watch(section, revision):
                    revision = change.revision + 1
                    if section == "topology":
                        self._owned(await self._meta.get_topology())
                    elif section == "groups" and change.key.startswith(f"groups/{self.group}/"):
                        self._changed.set()
                    elif section == "catalogue":
                        self._catalogue.set()
                        self._changed.set()
            except ShoalError as exc:
                log.warning("watch of %s: %s", section, exc)
                await asyncio.sleep(RESYNC)
                with contextlib.suppress(ShoalError):  # etcd away for longer: try again after the next pause
                    now = await self._meta.revision() + 1
                    if section == "topology":  # what changed meanwhile, as a watch event would have said
                        self._owned(await self._meta.get_topology())
                    revision = now  # only once the change is applied: else the watch replays it
                self._catalogue.set()
                self._changed.set()

    def _owned(self, topology: Topology) -> None:
        own = self.shard.ownership
        # The watch and the periodic read both apply what they read: an older read never undoes a newer one.
        if topology.ranges and (own is None or topology.version > own.version):
            self.shard.set_ownership(ownership(topology, self.group, own))

    async def _react(self, state: GroupState) -> None:
        if self.role == "primary":
            if state.primary != self.member or state.term != self.term:
                log.warning("group %s: no longer primary (now %s, term %d)", self.group, state.primary, state.term)
                await self._step_down()
            elif self.replicator is not None:
                if self.replicator.deposed:
                    await self._step_down()
                else:
                    self.replicator.members(state.members)
            return
        if state.primary is None and (not state.in_sync or self.member in state.in_sync):
            assert self._meta is not None
            try:
                term = await self._meta.elect(self.group, self.member)
            except FailedPrecondition as exc:
                log.info("group %s: not elected: %s", self.group, exc)
                return
            await self._become_primary(term, state)

    def _catch_up(self, state: GroupState) -> None:
        """As a replica outside the in-sync set: copy the primary's data if its op log no longer reaches this
        member (in the background); once back in the set, count the catch-up by the path it took."""
        if self.role != "replica" or state.primary in (None, self.member):
            return
        if self.member in state.in_sync:
            if self._behind:
                path = "snapshot" if self._copied else "log"
                log.info("group %s: %s is in sync again, caught up by %s", self.group, self.member, path)
                CATCHUPS.labels(self.group, path).inc()
                self._behind = self._copied = False
            return
        self._behind = True
        address = state.members.get(state.primary or "")
        if address and (self._copying is None or self._copying.done()):
            self._copying = asyncio.create_task(self._copy(address), name=f"copy for {self.group}")

    async def _copy(self, address: str) -> None:
        def pause() -> None:
            self.replica.paused = True

        try:
            if not await copy_from(self.shard, address, self.credentials, self._crash, pause):
                return
            self._copied = True
            self.replica.reset()
            storage = self.shard.storage
            if storage.term < self.term:  # the copy carries the primary's term; never go below one accepted
                await asyncio.to_thread(storage.accept_term, self.term)
            self.term = storage.term
        except Exception as exc:
            log.warning("group %s: catch-up by snapshot from %s failed: %s", self.group, address, exc)
        finally:
            self.replica.paused = False

    async def _become_primary(self, term: int, state: GroupState) -> None:
        assert self._meta is not None
        await asyncio.to_thread(self.accept_term, term)
        live_in_sync = {m for m in state.in_sync if m in state.members} | {self.member}
        for other in sorted(live_in_sync - {self.member}):
            with contextlib.suppress(Exception):
                await self._pull(state.members[other])
        await self._meta.set_in_sync(self.group, sorted(live_in_sync), term)
        self.replicator = Replicator(
            self.shard,
            self._meta,
            self.group,
            self.member,
            term,
            live_in_sync,
            self._deposed,
            self.ack_timeout,
            self.credentials,
        )
        self.replicator.members(state.members)
        self.shard.set_replicate(self.replicator.replicate)
        self.role = "primary"
        log.info("group %s: primary %s with term %d at sequence %d", self.group, self.member, term, self.shard.sequence)
        await self._sync_catalogue()

    async def _pull(self, address: str) -> None:
        """Apply the writes a member at `address` has after this shard's sequence (it is ahead: it got more)."""
        metadata = self.credentials.metadata
        async with member_channel(address, self.credentials) as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            state = await stub.ReplicaState(shard_pb2.ReplicaStateRequest(), timeout=2, metadata=metadata)
            if state.seq <= self.shard.sequence:
                return
            log.info("group %s: pulling writes %d..%d from %s", self.group, self.shard.sequence + 1, state.seq, address)
            futures = []
            async for entry in stub.ReadLog(
                shard_pb2.ReadLogRequest(after=self.shard.sequence), timeout=30, metadata=metadata
            ):
                futures.append(self.shard.submit_replicated(int(entry.seq), entry.plan))
            for future in futures:
                await asyncio.wrap_future(future)

    def _deposed(self) -> None:
        self._changed.set()

    async def _step_down(self) -> None:
        if self.role == "primary":
            self.role = "replica"
        self.shard.set_replicate(None)
        replicator, self.replicator = self.replicator, None
        if replicator is not None:
            replicator.depose()
            await replicator.stop()

    async def _sync_catalogue(self) -> None:
        """Make this primary's collections the catalogue's (each create or drop a replicated write)."""
        assert self._meta is not None
        await self._adopt()
        wanted = {c.name: c for c in await self._meta.list_collections()}
        futures = []
        for name in set(self.shard.list_collections()) - set(wanted):
            futures.append(self.shard.submit_catalogue(None, name))
        for config in wanted.values():
            futures.append(self.shard.submit_catalogue(config, config.name))
        for future in futures:
            try:
                await asyncio.wrap_future(future)
            except (AlreadyExists, NotFound) as exc:
                log.error("group %s: catalogue and shard disagree: %s", self.group, exc)

    async def _adopt(self) -> None:
        """Under an etcd it never followed (a restored or pre-etcd data folder), add its collections to the
        catalogue first, so that syncing with the catalogue keeps them rather than dropping them."""
        assert self._meta is not None
        cluster_id = await self._meta.cluster_id()
        storage = self.shard.storage
        if storage.etcd_cluster == cluster_id:
            return
        for name in self.shard.list_collections():
            config = (await asyncio.to_thread(self.shard.describe, name)).config
            try:
                await self._meta.create_collection(config)
            except AlreadyExists as exc:
                log.error("group %s: collection %s differs from the catalogue's: %s", self.group, name, exc)
        await asyncio.to_thread(storage.follow_etcd, cluster_id)
        log.info("group %s: follows the catalogue of etcd cluster %x", self.group, cluster_id)

    async def _trim(self) -> None:
        while True:
            await asyncio.sleep(self.shard.options.oplog_trim_every)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.shard.storage.trim_oplog, self.shard.options.oplog_keep)

    def state(self) -> shard_pb2.ReplicaStateResponse:
        """This member's replication state."""
        storage = self.shard.storage
        return shard_pb2.ReplicaStateResponse(
            seq=storage.seq,
            term=self.term,
            group=self.group,
            member=self.member,
            role=self.role,
            log_start=storage.log_start(),
        )
