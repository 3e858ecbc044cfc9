"""Calls through slot moves: a read of every shard runs again at one topology version, and ids whose group
no longer owns their slot are routed again by the newer topology, within the caller's deadline.

A shard at another topology version than the coordinator refuses a read (ABORTED); a write routed by an
older version reaches a group that no longer owns the slot (FAILED_PRECONDITION "not owned"). Either way the
coordinator waits briefly for its view of etcd to move on (`Refresh`) and tries again.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from shoal._errors import Aborted, FailedPrecondition, Unavailable
from shoal.coordinator.topology import Topology

T = TypeVar("T")
C = TypeVar("C")  # a shard connection
REFRESH_STEP = 0.25  # seconds a call waits at most for a newer topology before it tries again
MOVE_BUDGET = 30.0  # seconds a call without a deadline keeps retrying through a slot move
NOT_OWNED = "is not owned by this shard group"  # a write routed by an older topology (shard/ownership.py)
FROZEN = "slots moving"  # a write to slots frozen for a move's switch (shard/ownership.py)
SHARD_HAS = re.compile(r"shard has (\d+)")  # a read refused at another version names the shard's (shard/core.py)

# Wait until the routing is at a topology version or newer, at most some seconds (None: a fixed topology).
Refresh = Callable[[int, float], Awaitable[None]]


def stale_routing(exc: BaseException) -> bool:
    """Whether a shard refused a call for being routed by another topology version than its own, or (still,
    after the group connection's own retries) for writing to slots frozen by a move."""
    if isinstance(exc, Unavailable):
        return FROZEN in exc.message  # the move's switch, or its rollback once a dead mover's lock is free
    return isinstance(exc, Aborted) or (isinstance(exc, FailedPrecondition) and NOT_OWNED in exc.message)


def deadline_of(timeout: float | None) -> float:
    """The loop time by which a call's retries end."""
    return asyncio.get_running_loop().time() + (timeout if timeout is not None else MOVE_BUDGET)


def shard_version(exc: Aborted, routed: int) -> int:
    """The version to reach before a read refused at another version runs again: the refusing shard's when it
    is ahead (a shard behind already waited for its own watch: run again at once), else a newer one."""
    found = SHARD_HAS.search(exc.message)
    return int(found.group(1)) if found is not None else routed + 1


async def after_move(refresh: Refresh | None, version: int, deadline: float, error: BaseException) -> None:
    """Wait for the topology to reach `version` (a shard said the routing is stale), or re-raise `error`."""
    left = deadline - asyncio.get_running_loop().time()
    if refresh is None or left <= 0:
        raise error
    await refresh(version, min(left, REFRESH_STEP))


async def at_one_version(
    refresh: Refresh | None, version: Callable[[], int], run: Callable[[int], Awaitable[T]], timeout: float | None
) -> T:
    """Run a read of every shard at the current topology version; when a shard is at another one (slots
    moved), run it again once the routing caught up."""
    deadline = deadline_of(timeout)
    while True:
        current = version()
        try:
            return await run(current)
        except Aborted as exc:
            await after_move(refresh, shard_version(exc, current), deadline, exc)


async def by_slot(
    refresh: Refresh | None,
    routing: Callable[[], tuple[Topology, Sequence[C]]],
    ids: np.ndarray,
    call: Callable[[C, np.ndarray, int], Awaitable[T]],
    timeout: float | None,
    pick_error: Callable[[Sequence[BaseException]], BaseException],
) -> list[T]:
    """Call the shard of each id's slot with the positions of its ids (and the topology version); ids whose
    shard answers that it no longer owns their slot (it moved) are routed again by a newer topology."""
    deadline = deadline_of(timeout)
    todo = np.arange(len(ids))
    answers: list[T] = []
    while True:
        topology, shards = routing()
        groups = topology.route(ids[todo])
        results = await asyncio.gather(
            *(call(shards[i], todo[g], topology.version) for i, g in groups.items()), return_exceptions=True
        )
        stale: list[np.ndarray] = []
        errors: list[BaseException] = []
        for positions, result in zip(groups.values(), results, strict=True):
            if not isinstance(result, BaseException):
                answers.append(result)
            elif stale_routing(result):
                stale.append(todo[positions])
            else:
                errors.append(result)
        if errors:
            raise pick_error(errors)
        if not stale:
            return answers
        first = next(r for r in results if isinstance(r, BaseException))
        await after_move(refresh, topology.version + 1, deadline, first)
        todo = np.sort(np.concatenate(stale))
