"""Replication inside a shard group: the primary's links to its replicas, and a replica's side of a link.

The primary (`Replicator`) keeps one `Link` per other live member: one long-lived `Replicate` stream that
sends the member every op-log entry after the sequence it reports in the hello, in order and pipelined,
and reads its acknowledgements. A returning member catches up through the same path (the entries come
from the op log either way); once it has acknowledged everything written, the primary adds it to the
in-sync set. A write's caller is answered when every in-sync member acknowledged its sequence; a member
that does not within `ack_timeout` is removed from the in-sync set in etcd (term-fenced) first. A lost
compare there means another primary took over: the pending writes fail and `on_deposed` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from typing import Any

import grpc

from shoal._errors import FailedPrecondition, ShoalError, Unavailable
from shoal._meta import MetaStore
from shoal._metrics import set_replica
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials
from shoal.shard.core import Shard
from shoal.shard.faults import replica_delay_from_env
from shoal.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("shoal.shard.replication")

ACK_TIMEOUT = 2.0  # seconds an in-sync member may take to acknowledge a write before it is dropped from the set
BATCH = 256  # op-log entries read per look-up
RETRY = 0.2  # seconds between attempts to reach a member


def entry_digest(raw: bytes) -> bytes:
    """A short digest of an op-log entry: equal entries at one sequence mean the logs agree there."""
    return hashlib.blake2b(raw, digest_size=8).digest()


class Link:
    """The primary's stream to one other member: sends entries after its sequence, tracks what it acknowledged."""

    def __init__(self, replicator: Replicator, member: str, address: str) -> None:
        self.replicator, self.member, self.address = replicator, member, address
        self.acked = -1  # the member's acknowledged sequence (-1: not connected yet)
        self.diverged = False  # its log disagrees with the primary's: it must be copied anew
        self.wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"link to {member}")

    async def stop(self) -> None:
        """Close the stream."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("link to %s (%s): %s", self.member, self.address, exc)
                behind = isinstance(exc, FailedPrecondition)
            else:
                behind = False
            self.acked = -1
            # A member behind the op log copies this primary's data meanwhile (catchup.py): ask less often.
            await asyncio.sleep(5 * RETRY if behind else RETRY)

    async def _stream(self) -> None:
        rep = self.replicator
        shard = rep.shard
        async with member_channel(self.address, rep.credentials) as channel:
            call: Any = shard_pb2_grpc.ShardStub(channel).Replicate(metadata=rep.credentials.metadata)
            await call.write(shard_pb2.ReplicateRequest(term=rep.term, primary=rep.member))
            hello = await call.read()
            if hello is grpc.aio.EOF:
                raise Unavailable("the member closed the stream")
            sent = int(hello.seq)
            if not await asyncio.to_thread(self._agrees, sent, hello.digest):
                self.diverged = True
                rep.diverged(self)
                log.error(
                    "member %s has writes up to %d that this primary lacks: it needs a new copy", self.member, sent
                )
                await call.done_writing()
                await asyncio.sleep(5)
                return
            self.diverged = False  # a member copied anew agrees again (catchup.py)
            self.acked = sent
            rep.acked(self)
            reader = asyncio.create_task(self._read(call))
            try:
                while not reader.done():
                    self.wake.clear()
                    entries = await asyncio.to_thread(shard.storage.entries, sent, BATCH)
                    if not entries:
                        if sent + 1 < await asyncio.to_thread(shard.storage.log_start):
                            raise FailedPrecondition(f"member {self.member} is behind the op log: it needs a snapshot")
                        waker = asyncio.create_task(self.wake.wait())
                        await asyncio.wait({waker, reader}, return_when=asyncio.FIRST_COMPLETED)
                        waker.cancel()
                        continue
                    if entries[0][0] != sent + 1:
                        raise FailedPrecondition(
                            f"member {self.member} at {sent} is behind the op log: needs a snapshot"
                        )
                    for seq, raw in entries:
                        await call.write(shard_pb2.ReplicateRequest(term=rep.term, seq=seq, plan=raw))
                        sent = seq
                await reader
            finally:
                reader.cancel()
                call.cancel()

    def _agrees(self, seq: int, digest: bytes) -> bool:
        """Whether the member's entry at `seq` is this primary's (it has nothing this primary lacks)."""
        storage = self.replicator.shard.storage
        if seq > storage.seq:
            return False
        if seq == 0 or not digest:
            return True
        found = storage.entries(seq - 1, 1)
        if not found or found[0][0] != seq:
            return True  # trimmed here: cannot tell, assume the member followed this history
        return entry_digest(found[0][1]) == digest

    async def _read(self, call: Any) -> None:
        while (ack := await call.read()) is not grpc.aio.EOF:
            self.acked = int(ack.seq)
            self.replicator.acked(self)


class Replicator:
    """The primary's side: links to the other members, the in-sync set, and writes waiting for acknowledgements."""

    def __init__(
        self,
        shard: Shard,
        meta: MetaStore,
        group: str,
        member: str,
        term: int,
        in_sync: set[str],
        on_deposed: Callable[[], None],
        ack_timeout: float = ACK_TIMEOUT,
        credentials: ClusterCredentials | None = None,
    ) -> None:
        self.shard, self.meta, self.group, self.member, self.term = shard, meta, group, member, term
        self.credentials = credentials or ClusterCredentials()  # how the links reach the other members
        self.in_sync = set(in_sync) - {member}  # the other in-sync members
        self.ack_timeout = ack_timeout
        self.links: dict[str, Link] = {}
        self._waiting: list[tuple[int, float, Future[None]]] = []  # (seq, since, future) in seq order
        self._loop = asyncio.get_running_loop()
        self._on_deposed = on_deposed
        self._changing = False  # an in-sync change is being written to etcd
        self._lock = asyncio.Lock()  # one in-sync change at a time, each computed from the last
        self._monitor = asyncio.create_task(self._watch_timeouts(), name="replication timeouts")
        self.deposed = False

    def replicate(self, seq: int, raw: bytes) -> Future[None]:
        """From the committer thread: a durable write; the future resolves once every in-sync member has it."""
        future: Future[None] = Future()
        self._loop.call_soon_threadsafe(self._add, seq, future)
        return future

    def _add(self, seq: int, future: Future[None]) -> None:
        if self.deposed:
            future.set_exception(Unavailable(f"this shard is no longer the primary of group {self.group}"))
            return
        self._waiting.append((seq, time.monotonic(), future))
        for link in self.links.values():
            link.wake.set()
        self._release()

    def members(self, live: dict[str, str]) -> None:
        """The group's live members changed (member → address): open and close links to match."""
        for member in list(self.links):
            if live.get(member) != self.links[member].address:
                link = self.links.pop(member)
                lag = self.shard.sequence - max(link.acked, 0)
                set_replica(self.group, member, lag, "in_sync" if member in self.in_sync else "out_of_sync")
                asyncio.create_task(link.stop())
        for member, address in live.items():
            if member != self.member and member not in self.links:
                self.links[member] = Link(self, member, address)

    def acked(self, link: Link) -> None:
        """A member acknowledged up to `link.acked`: release writes, and add a caught-up member to the in-sync set."""
        self._add_caught_up(link)
        self._release()

    def _add_caught_up(self, link: Link) -> None:
        """Add the member of `link` to the in-sync set if it has every write and agrees with this primary."""
        caught_up = link.member not in self.in_sync and not link.diverged and link.acked >= self.shard.sequence
        if caught_up and not self._changing:
            asyncio.create_task(self._change_in_sync(add={link.member}))

    def diverged(self, link: Link) -> None:
        """A member's log has writes this primary lacks: it cannot count as in sync."""
        if link.member in self.in_sync:
            asyncio.create_task(self._change_in_sync(remove={link.member}))

    def _release(self) -> None:
        """Resolve every waiting write that all in-sync members acknowledged."""
        while self._waiting:
            seq, _, future = self._waiting[0]
            if any(self._acked(m) < seq for m in self.in_sync):
                return
            self._waiting.pop(0)
            if not future.done():
                future.set_result(None)

    def _acked(self, member: str) -> int:
        link = self.links.get(member)
        return link.acked if link is not None else -1

    def report(self) -> None:
        """Each other member's lag (in writes) and state as this primary sees them, into the metrics."""
        seq = self.shard.sequence
        for member, link in self.links.items():
            if member in self.in_sync:
                state = "in_sync"
            elif link.acked >= 0 and not link.diverged:
                state = "catching_up"
            else:
                state = "out_of_sync"
            set_replica(self.group, member, max(seq - link.acked, 0) if link.acked >= 0 else seq, state)

    async def _watch_timeouts(self) -> None:
        while True:
            await asyncio.sleep(self.ack_timeout / 4)
            self.report()
            # An addition etcd refused is tried again here: an idle group sends no acknowledgement to retry it.
            for link in list(self.links.values()):
                self._add_caught_up(link)
            if not self._waiting or self._changing:
                continue
            seq, since, _ = self._waiting[0]
            if time.monotonic() - since < self.ack_timeout:
                continue
            late = {m for m in self.in_sync if self._acked(m) < seq}
            if late:
                log.warning(
                    "group %s: %s did not acknowledge write %d in time: out of the in-sync set",
                    self.group,
                    sorted(late),
                    seq,
                )
                await self._change_in_sync(remove=late)

    async def _change_in_sync(
        self, add: AbstractSet[str] = frozenset(), remove: AbstractSet[str] = frozenset()
    ) -> None:
        async with self._lock:
            await self._write_in_sync((self.in_sync | add) - remove)

    async def _write_in_sync(self, members: set[str]) -> None:
        if members == self.in_sync:
            return
        self._changing = True
        try:
            await self.meta.set_in_sync(self.group, sorted(members | {self.member}), self.term)
        except FailedPrecondition as exc:
            log.error("group %s: deposed (%s)", self.group, exc)
            self.depose()
            return
        except ShoalError as exc:
            log.warning("group %s: cannot change the in-sync set: %s", self.group, exc)
            return
        finally:
            self._changing = False
        added, removed = members - self.in_sync, self.in_sync - members
        self.in_sync = set(members)
        log.info(
            "group %s term %d: in-sync %s (added %s, removed %s)",
            self.group,
            self.term,
            sorted(members | {self.member}),
            sorted(added),
            sorted(removed),
        )
        self._release()

    def depose(self) -> None:
        """Another primary took over: fail what waits and stop shipping."""
        if self.deposed:
            return
        self.deposed = True
        error = Unavailable(f"this shard is no longer the primary of group {self.group}")
        for _, _, future in self._waiting:
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        self._on_deposed()

    async def stop(self) -> None:
        """Close every link and stop watching for timeouts."""
        self._monitor.cancel()
        for link in list(self.links.values()):
            await link.stop()
        self.links.clear()


class ReplicaSide:
    """A member's side of the primary's stream: check terms, apply entries strictly in order, acknowledge."""

    def __init__(
        self,
        shard: Shard,
        accept_term: Callable[[int], None],
        current_term: Callable[[], int],
        is_primary: Callable[[], bool],
    ) -> None:
        self.shard = shard
        # The last primary's write applied here and visible to reads (the shard is open: all it holds is applied).
        self.applied = shard.storage.seq
        self._advanced = asyncio.Event()  # set (and replaced) whenever `applied` grows
        self._delay = replica_delay_from_env(os.environ)  # test-only
        self._accept_term = accept_term  # raises FailedPrecondition for a term lower than the highest seen
        self._current_term = current_term
        self._is_primary = is_primary
        self.paused = False  # the member is replacing its data with a copy (catchup.py): no stream meanwhile

    def reset(self) -> None:
        """The shard's data was replaced: what is applied is what it holds now."""
        self.applied = self.shard.storage.seq
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def serve(self, requests: AsyncIterator[shard_pb2.ReplicateRequest]) -> AsyncIterator[shard_pb2.ReplicateAck]:
        """The acknowledgements of one stream: the hello's answer, then one per applied entry."""
        if self.paused:
            raise Unavailable("this member is replacing its data with a copy of its primary's")
        stream = aiter(requests)
        hello = await anext(stream)
        term = int(hello.term)
        await asyncio.to_thread(self._accept_term, term)
        if self._is_primary():
            raise FailedPrecondition("this member is a primary itself")
        storage = self.shard.storage
        seq = storage.seq
        last = await asyncio.to_thread(storage.entries, seq - 1, 1) if seq else []
        digest = entry_digest(last[0][1]) if last and last[0][0] == seq else b""
        yield shard_pb2.ReplicateAck(seq=seq, term=term, digest=digest)
        applied: asyncio.Queue[tuple[int, Future[Any]] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in stream:
                    if term < self._current_term() or self._is_primary():
                        raise FailedPrecondition(f"term {request.term} is over (or this member is primary now)")
                    if self.paused:
                        raise Unavailable("this member is replacing its data with a copy of its primary's")
                    if self._delay:
                        await asyncio.sleep(self._delay)
                    await applied.put((int(request.seq), self.shard.submit_replicated(int(request.seq), request.plan)))
            finally:
                await applied.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await applied.get()) is not None:
                seq, future = item
                await asyncio.wrap_future(future)
                self._applied(seq)
                yield shard_pb2.ReplicateAck(seq=seq, term=term)
            await reader
        finally:
            reader.cancel()

    def _applied(self, seq: int) -> None:
        if seq > self.applied:
            self.applied = seq
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()

    async def reach(self, seq: int, timeout: float) -> bool:
        """Wait until the primary's write `seq` is applied here, at most `timeout` seconds; whether it is."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.applied < seq and (left := end - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), left)
        return self.applied >= seq
