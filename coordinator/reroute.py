"""Calls through slot moves: a read of every shard runs again at one topology version, and ids whose group
no longer owns their slot are routed again by the newer topology, within the caller's deadline.

A shard at another topology version than the coordinator refuses a read (ABORTED); a write routed by an
older version reaches a group that no longer owns the slot (FAILED_PRECONDITION "not owned"). Either way the
coordinator waits briefly for its view of etcd to move on (`Refresh`) and tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from shoal._errors import Aborted, FailedPrecondition
from shoal.coordinator.topology import Topology

T = TypeVar("T")
C = TypeVar("C")  # a shard connection
REFRESH_STEP = 0.25  # seconds a call waits for a newer topology before it tries again (the shard may lag)
MOVE_BUDGET = 30.0  # seconds a call without a deadline keeps retrying through a slot move
NOT_OWNED = "is not owned by this shard group"  # a write routed by an older topology (shard/ownership.py)

# Wait until the routing is newer than a topology version, at most some seconds (None: a fixed topology).
Refresh = Callable[[int, float], Awaitable[None]]


def stale_routing(exc: BaseException) -> bool:
    """Whether a shard refused a call for being routed by another topology version than its own."""
    return isinstance(exc, Aborted) or (isinstance(exc, FailedPrecondition) and NOT_OWNED in exc.message)


def deadline_of(timeout: float | None) -> float:
    """The loop time by which a call's retries end."""
    return asyncio.get_running_loop().time() + (timeout if timeout is not None else MOVE_BUDGET)


async def after_move(refresh: Refresh | None, version: int, deadline: float, error: BaseException) -> None:
    """Wait for a topology newer than `version` (a shard said the routing is stale), or re-raise `error`."""
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
            await after_move(refresh, current, deadline, exc)


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
        await after_move(refresh, topology.version, deadline, first)
        todo = np.sort(np.concatenate(stale))
