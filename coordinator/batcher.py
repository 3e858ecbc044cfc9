"""Coalesce concurrent searches of one shape and dimension into one fan-out: one message per shard carries many.

A search waits only while `max_inflight` fan-outs of its shape are already running: under light load it
goes out at once (with those that arrived in the same turn of the event loop), under heavy load the
waiting searches leave together as one batch when a fan-out comes back. So the wait is bounded by one
fan-out, and no timer adds latency: waiting longer for fuller batches was measured to lose throughput and
latency alike (loadtest/bench.py; the README's Performance section). A failed fan-out fails every
search it carried with the same error, which is the error each would have got alone: they share the
whole SearchShape (filter included) and the dimension, and each was validated on its own before it joined.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shoal import _tracing
from shoal._coalesce import row_slices, stack
from shoal._errors import DeadlineExceeded
from shoal._metrics import SEARCH_BATCH_QUERIES
from shoal._results import TopK, answer_rows
from shoal._search import Search, SearchShape


@dataclass(frozen=True)
class BatchConfig:
    """How searches are coalesced."""

    # Query rows in one coalesced fan-out; bounds the latency the last-joined search adds.
    max_rows: int = 512
    # Fan-outs of one shape at once. One: the next batch gathers while the shards (all searching in parallel,
    # so every core is busy) answer the last; measured faster than 2 or 4 on 2 cores (loadtest/bench.py).
    max_inflight: int = 1

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_inflight < 1:
            raise ValueError(f"max_rows and max_inflight must be at least 1: {self}")


DEFAULT_BATCHING = BatchConfig()

# The answer to a search: its merged top-k and how each shard ran it ("addr: plan; ..."; "" unfiltered).
Answer = tuple[TopK, str]
# What searches must share to travel in one message: their shape and the dimension of their queries.
LaneKey = tuple[SearchShape, int]
# Runs one fan-out: one search (possibly many callers' rows stacked) and the timeout in seconds (None: none).
Run = Callable[[Search, float | None], Awaitable[Answer]]


@dataclass
class _Waiting:
    search: Search
    deadline: float | None
    future: asyncio.Future[Answer]
    trace: Any = None  # with tracing on: the search's trace context and when it began to wait
    queued_ns: int = 0


@dataclass
class _Lane:
    """The searches of one lane key: those waiting and the number of fan-outs running."""

    limit: int  # query rows in one batch
    waiting: deque[_Waiting] = field(default_factory=deque)
    rows: int = 0
    inflight: int = 0
    timer: asyncio.Handle | None = None  # a partial batch is due on the next turn of the event loop


def rows_of(result: TopK, part: slice) -> TopK:
    """Some rows of a result, as views."""
    return TopK(
        result.ids[part],
        result.distances[part],
        result.counts[part],
        None if result.payloads is None else result.payloads[part],
        None if result.vectors is None else result.vectors[part],
    )


_BATCH_QUERIES = SEARCH_BATCH_QUERIES.labels("coordinator")


class SearchBatcher:
    """Coalesces searches per lane key; `submit` answers each with its own rows of the shared result."""

    def __init__(self, run: Run, config: BatchConfig = DEFAULT_BATCHING) -> None:
        self._run = run
        self.max_rows = config.max_rows
        self.max_inflight = config.max_inflight
        self._lanes: dict[LaneKey, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the running fan-outs, held so they are not collected
        self.batches = 0  # fan-outs started, for tests and metrics
        self.searches = 0  # searches answered through a coalesced fan-out

    def submit(self, search: Search, timeout: float | None) -> asyncio.Future[Answer]:
        """The future answer of `search`, possibly computed together with other searches of its lane.

        Cancelling the future withdraws the search if it has not been sent yet.
        """
        loop = asyncio.get_running_loop()
        queries = search.queries
        key = (search.shape, queries.shape[1])
        lane = self._lanes.get(key)
        limit = self._rows_for(key) if lane is None else lane.limit
        if len(queries) >= limit:  # already a full batch: nothing to gain by waiting
            return loop.create_task(self._run_alone(search, timeout))
        if lane is None:
            lane = self._lanes[key] = _Lane(limit)
        future: asyncio.Future[Answer] = loop.create_future()
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = _Waiting(search, deadline, future)
        if _tracing.ENABLED and _tracing.recording():
            waiting.trace, waiting.queued_ns = _tracing.context_of(""), time.time_ns()
        lane.waiting.append(waiting)
        lane.rows += len(queries)
        self._pump(key, lane)
        return future

    def _rows_for(self, key: LaneKey) -> int:
        """Rows in one batch of this lane: max_rows, fewer when their answer would not fit in one message."""
        shape, dim = key
        return max(1, min(self.max_rows, answer_rows(shape.k, dim, shape.with_payload, shape.with_vectors)))

    async def _run_alone(self, search: Search, timeout: float | None) -> Answer:
        _BATCH_QUERIES.observe(len(search.queries))
        return await self._run(search, timeout)

    def _pump(self, key: LaneKey, lane: _Lane) -> None:
        """Send full batches while fan-outs are free; otherwise send a partial one on the next turn."""
        while lane.waiting and lane.inflight < self.max_inflight and lane.rows >= lane.limit:
            self._flush(key, lane)
        if lane.waiting and lane.inflight < self.max_inflight and lane.timer is None:
            # Searches that arrive in the same turn of the event loop join this batch.
            lane.timer = asyncio.get_running_loop().call_soon(self._on_timer, key, lane)

    def _on_timer(self, key: LaneKey, lane: _Lane) -> None:
        lane.timer = None
        self._flush(key, lane)
        self._pump(key, lane)

    def _flush(self, key: LaneKey, lane: _Lane) -> None:
        """Start one fan-out with the searches waiting in the lane, up to the lane's limit of rows."""
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        now = time.monotonic()
        taken: list[_Waiting] = []
        rows = 0
        while lane.waiting and (not taken or rows + len(lane.waiting[0].search.queries) <= lane.limit):
            item = lane.waiting.popleft()
            lane.rows -= len(item.search.queries)
            if item.future.done():
                continue  # its caller went away
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the deadline passed before the search was sent"))
                continue
            taken.append(item)
            rows += len(item.search.queries)
        if not taken:
            return
        lane.inflight += 1
        self.batches += 1
        _BATCH_QUERIES.observe(rows)
        task = asyncio.get_running_loop().create_task(self._fan_out(key, lane, taken))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def withdrawn(_: asyncio.Future[Answer]) -> None:
            # Every caller went away: the fan-out stops, and the shards drop the search (coordinator/shards.py).
            if not task.done() and all(w.future.cancelled() for w in taken):
                task.cancel()

        for w in taken:
            w.future.add_done_callback(withdrawn)

    async def _fan_out(self, key: LaneKey, lane: _Lane, taken: list[_Waiting]) -> None:
        deadlines = [w.deadline for w in taken if w.deadline is not None]
        # The fan-out lasts as long as its most patient search; the others' calls end at their own deadline.
        timeout = max(0.0, max(deadlines) - time.monotonic()) if len(deadlines) == len(taken) else None
        blocks = [w.search.queries for w in taken]
        search = taken[0].search if len(taken) == 1 else Search(key[0], stack(blocks))
        stopping = False
        try:
            answer = await self._traced_run(taken, search, timeout)
        except Exception as exc:
            for w in taken:
                if not w.future.done():
                    w.future.set_exception(exc)
        except BaseException:
            if all(w.future.cancelled() for w in taken):  # withdrawn by its callers: the lane goes on
                raise
            stopping = True  # the coordinator is stopping: nothing more is sent
            for w in (*taken, *lane.waiting):
                w.future.cancel()
            lane.waiting.clear()
            lane.rows = 0
            raise
        else:
            if len(taken) == 1:
                if not taken[0].future.done():
                    taken[0].future.set_result(answer)
            else:
                result, plan = answer
                for w, rows in zip(taken, row_slices(blocks), strict=True):
                    if not w.future.done():
                        w.future.set_result((rows_of(result, rows), plan))
            self.searches += len(taken)
        finally:
            lane.inflight -= 1
            if lane.waiting and not stopping:
                self._flush(key, lane)  # those that waited for this fan-out go now, together
                self._pump(key, lane)
            self._settle(key, lane)

    async def _traced_run(self, taken: list[_Waiting], search: Search, timeout: float | None) -> Answer:
        """Run a fan-out; with tracing, after each search's queue-wait span, in a span of the first search's trace
        linked to the others'."""
        first = taken[0].trace
        if first is None:
            return await self._run(search, timeout)
        now = time.time_ns()
        for w in taken:
            _tracing.record("queue wait", w.trace, w.queued_ns, now)
        links = [_tracing.span_context(w.trace) for w in taken[1:]]
        with _tracing.span("fan-out", first, links=links) as span:
            span.set_attribute("shoal.batch_queries", len(search.queries))
            return await self._run(search, timeout)

    def _settle(self, key: LaneKey, lane: _Lane) -> None:
        """Forget an idle lane, so shapes seen once do not accumulate."""
        if not lane.waiting and lane.inflight == 0 and lane.timer is None and self._lanes.get(key) is lane:
            del self._lanes[key]
