"""The mover: moves a slot range from one shard group to another while reads and writes go on.

Phases (shoal._meta_values.Move; each change one compare-and-swap of the topology in etcd):

1. copy: the move is added. The target takes the mover's copies and hides them from reads. The mover
   asks the source's primary for its sequence s0, copies the range's points of every collection (throttled),
   then replays the changes the writes after s0 made to the range (the current state of each point they
   touched), until little is left.
2. frozen: the source refuses writes to the range (retryably). Once its primary applied that version (and
   every write checked before is durable), the mover replays the changes up to the sequence it then has.
3. cleanup: the range is the target's. Once every member of both groups applied that version, the
   mover deletes the range on the source, then removes the move.

A move cut off before the switch is rolled back (phase abort: the source owns, writes flow, the target
refuses copies; its copies are deleted, then the move removed); after the switch it is completed. The mover
holds the lease-backed mover lock while it works, so `resume` (a rerun of `shoal rebalance`, or a
coordinator's janitor once the lock is free) finishes what a dead mover left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from shoal._errors import FailedPrecondition, InvalidArgument, ShoalError
from shoal._meta import Membership, MetaStore
from shoal._meta_values import Move, Phase, Topology, owner_of
from shoal._tls import ClusterCredentials
from shoal.coordinator.group_calls import CALL_TIMEOUT, RETRY_STEP, GroupCalls
from shoal.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("shoal.coordinator.mover")

T = TypeVar("T")
LOCK_TTL = 3  # seconds: a dead mover's lock is free again after about this long
PAGE = 1024  # points per export page
TAIL_ROUNDS = 5  # change replays before freezing, at most (each one shorter than the last)
TAIL_SMALL = 256  # points changed since the last replay that are few enough to freeze
DELETE_TIMEOUT = 900.0  # seconds for a range delete, which may rebuild the group's index (a compaction)
JANITOR_EVERY = 1.0  # seconds between a coordinator's looks for moves left behind


@dataclass(frozen=True)
class MoveProgress:
    """Where a move is: its phase, the points copied so far (the copy, then the replays) and the rate."""

    move: Move
    phase: str  # copy, replay, frozen, cleanup, abort, done, rolled back
    points: int = 0
    rate: float = 0.0  # points per second since the move began
    elapsed: float = 0.0


Progress = Callable[[MoveProgress], None]


def _quiet(_: MoveProgress) -> None:
    pass


class _Lock:
    """The mover lock, shared by the moves one process runs at once (taken by the first, freed after the last)."""

    held: weakref.WeakKeyDictionary[MetaStore, tuple[Membership, int]] = weakref.WeakKeyDictionary()

    @classmethod
    @contextlib.asynccontextmanager
    async def of(cls, meta: MetaStore, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the lock (waiting while another mover has it, unless `wait` is False: then yield False)."""
        owner = f"mover-{uuid.uuid4().hex[:8]}"
        while (entry := cls.held.get(meta)) is None:
            membership = await meta.lock_mover(owner, LOCK_TTL)
            if membership is not None:
                cls.held[meta] = (membership, 0)
                continue
            if not wait:
                yield False
                return
            await asyncio.sleep(RETRY_STEP)
        cls.held[meta] = (entry[0], entry[1] + 1)
        try:
            yield True
        finally:
            membership, count = cls.held[meta]
            if count == 1:
                del cls.held[meta]
                with contextlib.suppress(ShoalError):
                    await membership.leave()
            else:
                cls.held[meta] = (membership, count - 1)


class _Run:
    """One move's work: copy, replay, freeze, switch, clean up (or roll back)."""

    def __init__(self, meta: MetaStore, groups: GroupCalls, move: Move, rate: float, progress: Progress) -> None:
        self.meta, self.groups, self.move = meta, groups, move
        self.rate, self.report = rate, progress
        self.points = 0
        self.started = time.monotonic()
        self._last_put = 0.0

    def _progress(self, phase: str) -> None:
        elapsed = time.monotonic() - self.started
        self.report(MoveProgress(self.move, phase, self.points, self.points / elapsed if elapsed else 0.0, elapsed))

    async def _record(self, phase: str) -> None:
        self._progress(phase)
        now = time.monotonic()
        if now - self._last_put > 1.0 or phase != "copy":
            self._last_put = now
            elapsed = now - self.started
            value = {"points": self.points, "rate": self.points / elapsed if elapsed else 0.0, "phase": phase}
            with contextlib.suppress(ShoalError):
                await self.meta.put_progress(self.move.id, value)

    async def _throttle(self) -> None:
        if self.rate > 0:
            ahead = self.points / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def _import(self, answer: shard_pb2.ExportResponse) -> int:
        n = len(answer.points.ids.u64) // 8 + len(answer.points.ids.str)
        gone = len(answer.deleted.u64) // 8 + len(answer.deleted.str)
        if not n and not gone:
            return 0
        request = shard_pb2.ImportRequest(points=answer.points, deleted=answer.deleted)

        async def put(stub: shard_pb2_grpc.ShardStub, md: Any) -> None:
            await stub.Import(request, timeout=CALL_TIMEOUT, metadata=md)

        await self.groups.primary(self.move.target, put)
        self.points += n + gone
        return n + gone

    async def copy(self, collections: list[str]) -> dict[str, int]:
        """Copy every collection's points of the range; the source sequence each one's replays start after
        (a collection dropped meanwhile is left out)."""
        after = {}
        for name in collections:
            after[name] = await self.groups.sequence(self.move.source, 0)
            with _unless_dropped():
                await self._copy(name)
        return after

    async def _copy(self, name: str) -> None:
        m = self.move
        cursor = ""
        while True:
            request = shard_pb2.ExportRangeRequest(collection=name, start=m.start, end=m.end, cursor=cursor, limit=PAGE)

            async def page(stub: shard_pb2_grpc.ShardStub, md: Any, r: Any = request) -> Any:
                return await stub.ExportRange(r, timeout=CALL_TIMEOUT, metadata=md)

            answer = await self.groups.primary(m.source, page)
            await self._import(answer)
            await self._record("copy")
            await self._throttle()
            cursor = answer.cursor
            if not cursor:
                break

    async def replay(self, after: dict[str, int], upto: int = 0) -> int:
        """Replay on the target the changes to the range after each collection's sequence (up to `upto`, or to
        the end of the source's log now); how many points changed."""
        changed = 0
        for name in list(after):
            with _unless_dropped():
                changed += await self._replay(name, after, upto)
        await self._record("replay")
        return changed

    async def _replay(self, name: str, after: dict[str, int], upto: int) -> int:
        m, changed = self.move, 0
        while True:
            request = shard_pb2.ExportChangesRequest(
                collection=name, start=m.start, end=m.end, after=after[name], upto=upto
            )

            async def read(stub: shard_pb2_grpc.ShardStub, md: Any, r: Any = request) -> Any:
                return await stub.ExportChanges(r, timeout=CALL_TIMEOUT, metadata=md)

            answer = await self.groups.primary(m.source, read)
            changed += await self._import(answer)
            if answer.seq <= after[name]:
                break
            after[name] = int(answer.seq)
            if upto and after[name] >= upto:
                break
        return changed

    async def step(self, topology: Topology, phase: Phase | None) -> Topology:
        """Take the move to `phase` (None: remove it) by compare-and-swap, reading the topology again if needed."""
        while True:
            try:
                return await self.meta.advance_move(topology, self.move.id, phase)
            except FailedPrecondition:
                topology = await self.meta.get_topology()  # another move changed it meanwhile

    async def forward(self, topology: Topology) -> None:
        """Run the move from phase copy to its end; roll it back if anything fails before the switch."""
        m = self.move
        try:
            await self.groups.applied(m.target, topology.version)  # the target takes copies from now on
            collections = [c.name for c in await self.meta.list_collections()]
            after = await self.copy(collections)
            for _ in range(TAIL_ROUNDS):
                if await self.replay(after) <= TAIL_SMALL:
                    break
            topology = await self.step(topology, "frozen")
            self._progress("frozen")
            upto = await self.groups.sequence(m.source, topology.version)
            await self.replay(after, upto)
            for config in await self.meta.list_collections():  # created during the copy: the range is still now
                if config.name not in after:
                    with _unless_dropped():
                        await self._copy(config.name)
            topology = await self.step(topology, "cleanup")
        except BaseException:
            log.warning("move %s of slots [%d, %d) failed before the switch: rolling back", m.id, m.start, m.end)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.roll_back())
            raise
        await self.clean_up(topology)

    async def clean_up(self, topology: Topology) -> None:
        """After the switch: once both groups applied it, delete the range on the source, then remove the move."""
        m = self.move
        self._progress("cleanup")
        await self.groups.applied(m.source, topology.version)
        await self.groups.applied(m.target, topology.version)
        await self._delete_range(m.source)
        await self.step(topology, None)
        await self._finish("done")

    async def roll_back(self) -> None:
        """Before the switch: the source keeps the range; the target's copies are deleted, then the move removed."""
        m = self.move
        topology = await self.meta.get_topology()
        current = topology.move(m.id)
        if current is None:
            return
        if current.phase in ("copy", "frozen"):
            topology = await self.step(topology, "abort")
        self._progress("abort")
        await self.groups.sequence(m.target, topology.version)  # no copy lands after this
        await self._delete_range(m.target)
        await self.step(topology, None)
        await self._finish("rolled back")

    async def _delete_range(self, group: str) -> None:
        m = self.move
        for config in await self.meta.list_collections():
            request = shard_pb2.DeleteRangeRequest(collection=config.name, start=m.start, end=m.end)

            async def delete(stub: shard_pb2_grpc.ShardStub, md: Any, r: Any = request) -> None:
                await stub.DeleteRange(r, timeout=DELETE_TIMEOUT, metadata=md)

            try:
                await self.groups.primary(group, delete)
            except ShoalError as exc:
                if exc.code is not grpc.StatusCode.NOT_FOUND:  # a collection dropped meanwhile has nothing left
                    raise

    async def _finish(self, phase: str) -> None:
        self._progress(phase)
        with contextlib.suppress(ShoalError):
            await self.meta.drop_progress(self.move.id)


@contextlib.contextmanager
def _unless_dropped() -> Iterator[None]:
    """Skip a collection dropped during the move: it has nothing left to move."""
    try:
        yield
    except ShoalError as exc:
        if exc.code is not grpc.StatusCode.NOT_FOUND:
            raise


async def move(
    meta: MetaStore,
    start: int,
    end: int,
    target: str,
    *,
    rate: float,
    progress: Progress = _quiet,
    credentials: ClusterCredentials | None = None,
) -> None:
    """Move slots [start, end) to group `target` (rate: points per second, 0: unthrottled); returns once done.

    Raises InvalidArgument when one group does not own the whole range (or owns it already); a move that
    fails is rolled back before the switch (the error is raised) and completed after it.
    """
    groups = GroupCalls(meta, credentials or ClusterCredentials())
    try:
        async with _Lock.of(meta):
            topology = await meta.get_topology()
            source = owner_of(topology.ranges, start, end)
            if source is None or source == target:
                raise InvalidArgument(f"slots [{start}, {end}) are not all owned by one group other than {target}")
            the_move = Move(uuid.uuid4().hex[:12], start, end, source, target)
            topology = await meta.begin_move(topology, the_move)
            log.info("moving slots [%d, %d) from %s to %s (move %s)", start, end, source, target, the_move.id)
            await _Run(meta, groups, the_move, rate, progress).forward(topology)
    finally:
        await groups.close()


async def resume(
    meta: MetaStore, progress: Progress = _quiet, credentials: ClusterCredentials | None = None, wait: bool = True
) -> int:
    """Finish the moves a dead mover left: roll back those before the switch, complete those after it; how many.

    Without `wait`, returns 0 at once when another mover holds the lock.
    """
    groups = GroupCalls(meta, credentials or ClusterCredentials())
    done = 0
    try:
        async with _Lock.of(meta, wait) as locked:
            if not locked:
                return 0
            if _Lock.held[meta][1] > 1:
                return 0  # this process's own moves are in progress: they are not left behind
            for left in (await meta.get_topology()).moves:
                run = _Run(meta, groups, left, 0.0, progress)
                topology = await meta.get_topology()
                if left.phase == "cleanup":
                    log.info("move %s: completing its cleanup", left.id)
                    await run.clean_up(topology)
                else:
                    log.info("move %s: rolling back from phase %s", left.id, left.phase)
                    await run.roll_back()
                done += 1
    finally:
        await groups.close()
    return done


async def janitor(meta: MetaStore, credentials: ClusterCredentials | None = None) -> None:
    """A coordinator's background task: resume moves left behind whenever nobody holds the mover lock."""
    while True:
        await asyncio.sleep(JANITOR_EVERY)
        try:
            if (await meta.get_topology()).moves and await meta.mover() is None:
                await resume(meta, credentials=credentials, wait=False)
        except ShoalError as exc:
            log.warning("moves left behind: %s", exc)
