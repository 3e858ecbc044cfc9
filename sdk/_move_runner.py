"""`shoal rebalance` and `shoal drain`: finish moves left behind, plan the rest, run them a few at a time.

Server-side imports (the etcd client), loaded only by those commands, never by `import shoal`; the mover's
`move` and `resume` are passed in by the command.
A run first resumes (completes or rolls back) any move an earlier run was cut off in, then plans from the
topology as it is now: so rerunning an interrupted command carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shoal._config import DEFAULT_MOVE_PARALLEL, DEFAULT_MOVE_SLOTS
from shoal._errors import FailedPrecondition
from shoal._meta import MetaStore
from shoal._move_plan import RangeMove, plan

REPORT_EVERY = 2.0  # seconds between progress lines
ATTEMPTS = 3  # tries of a move rolled back because the topology changed under it (say, by a move beside it)

Report = Callable[[str], None]
Progress = Callable[[int], None]  # points of the current move copied so far
MoveFn = Callable[[MetaStore, RangeMove, float, Progress], Awaitable[None]]
ResumeFn = Callable[[MetaStore, Progress], Awaitable[int]]  # how many moves left behind it finished


@dataclass
class RunProgress:
    """How far a run is: ranges and slots done, points moved, and from that the rate and the time left."""

    ranges: int
    slots: int
    ranges_done: int = 0
    slots_done: int = 0
    points: int = 0
    started: float = field(default_factory=time.monotonic)
    copied: dict[RangeMove, int] = field(default_factory=dict)  # points so far of each move in flight

    def moved(self) -> int:
        """Points moved: those of finished moves and of moves in flight."""
        return self.points + sum(self.copied.values())

    def line(self, now: float | None = None) -> str:
        """One line: ranges and points moved, the rate, the time left (from the slots left at the rate so far)."""
        elapsed = max((now if now is not None else time.monotonic()) - self.started, 1e-9)
        moved = self.moved()
        text = f"{self.ranges_done}/{self.ranges} ranges, {moved:,} points moved, {moved / elapsed:,.0f} points/s"
        if self.slots_done and self.slots_done < self.slots:
            left = elapsed * (self.slots - self.slots_done) / self.slots_done
            text += f", about {_duration(left)} left"
        return text


def _duration(seconds: float) -> str:
    """A duration as 45 s, 12 min or 2.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def run_moves(
    meta: MetaStore,
    move: MoveFn,
    resume: ResumeFn,
    report: Report,
    *,
    drain: tuple[str, ...] = (),
    rate: float,
    parallel: int = DEFAULT_MOVE_PARALLEL,
    max_slots: int = DEFAULT_MOVE_SLOTS,
    dry_run: bool = False,
) -> RunProgress:
    """Resume moves left behind, then move ranges until every group has its share (drained groups none).

    `rate` (points/s) bounds the whole run: each of the `parallel` moves in flight gets its part.
    """
    if not dry_run and (left := await resume(meta, lambda points: None)):
        report(f"finished {left} move(s) an earlier run left behind (completed after the switch, else rolled back)")
    topology = await meta.get_topology()
    live = [name for name, state in (await meta.get_groups()).items() if state.members]
    moves = plan(topology.ranges, live, drain, max_slots)
    progress = RunProgress(len(moves), sum(m.slots for m in moves))
    if not moves:
        report("nothing to move: every group owns its share")
        return progress
    for m in moves:
        report(f"{'would move' if dry_run else 'to move'}: slots {m.start}-{m.end - 1} from {m.source} to {m.target}")
    if dry_run:
        return progress
    limit = asyncio.Semaphore(max(1, parallel))
    each = rate / max(1, min(parallel, len(moves)))

    async def one(m: RangeMove) -> None:
        async with limit:
            progress.copied[m] = 0

            def copied(points: int) -> None:
                progress.copied[m] = points

            for attempt in range(1, ATTEMPTS + 1):
                try:
                    await move(meta, m, each, copied)
                    break
                except FailedPrecondition as exc:
                    if attempt == ATTEMPTS:
                        raise
                    report(f"slots {m.start}-{m.end - 1}: rolled back ({exc.message}); moving them again")
                    progress.copied[m] = 0
            progress.points += progress.copied.pop(m)
            progress.ranges_done += 1
            progress.slots_done += m.slots
            report(f"moved slots {m.start}-{m.end - 1} from {m.source} to {m.target}; {progress.line()}")

    reporter = asyncio.create_task(_report_every(progress, report))
    try:
        await asyncio.gather(*(one(m) for m in moves))
    finally:
        reporter.cancel()
    report(f"done: {progress.line()}")
    return progress


async def _report_every(progress: RunProgress, report: Report) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY)
        if progress.copied:
            report(progress.line())
