"""Measuring tools of the benchmark: exact truth, recall, latency percentiles, CPU accounting, load generators."""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A client's way to ask: ask(i) answers item i with its (rows, k) ids; close() ends the client's session.
Ask = Callable[[int], Awaitable[np.ndarray]]
Close = Callable[[], Awaitable[None]]
Session = Callable[[], Awaitable[tuple[Ask, Close]]]


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact top-k row indices by numpy, in blocks so memory stays bounded."""
    out = np.empty((len(queries), k), dtype=np.int64)
    b = base / np.linalg.norm(base, axis=1, keepdims=True) if metric == "cosine" else base
    sq = (base * base).sum(1)
    for lo in range(0, len(queries), 100):
        q = queries[lo : lo + 100]
        if metric == "cosine":
            d = -(q / np.linalg.norm(q, axis=1, keepdims=True)) @ b.T
        elif metric == "ip":
            d = -q @ base.T
        else:
            d = sq[None, :] - 2 * q @ base.T
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, 1), axis=1)
        out[lo : lo + 100] = np.take_along_axis(part, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean recall@k of found ids (q, >=k) against the truth (q, k)."""
    k = truth.shape[1]
    hits = (found[:, :k, None].astype(np.int64) == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def percentiles(latencies: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 in milliseconds (zeros without samples)."""
    if not latencies:
        return 0.0, 0.0, 0.0
    p50, p95, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def qps_at_recall(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Queries/s at `target` recall on a (recall, qps) curve, interpolated in log(qps); None if never reached.

    Below the curve's lowest recall the lowest point is taken (an underestimate: less recall would be faster).
    """
    pts = sorted(curve)
    if not pts or pts[-1][0] < target:
        return None
    if pts[0][0] >= target:
        return pts[0][1]
    for (r0, q0), (r1, q1) in itertools.pairwise(pts):
        if r0 < target <= r1:
            f = (target - r0) / (r1 - r0)
            return math.exp(math.log(q0) + f * (math.log(q1) - math.log(q0)))
    return None


class CpuMeter:
    """CPU seconds used by some processes (this one included) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"client": os.getpid(), **pids}
        self._start: dict[str, float] = {}

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # no procfs (or the process is gone): no accounting
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        """Take the first reading."""
        self._start = {name: self._cpu(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds per process since start()."""
        return {name: self._cpu(pid) - self._start.get(name, 0.0) for name, pid in self.pids.items()}


@dataclass
class Run:
    """What one measurement saw: first-pass answers, latencies (s), answered items and wall time (s)."""

    answers: list[np.ndarray | None]
    latencies: list[float]
    items: int
    wall: float


async def drive(session: Session, items: int, clients: int, seconds: float, rate: float | None = None) -> Run:
    """Ask items 0..items-1 (then again, cyclically) from `clients` concurrent sessions.

    Closed loop (rate None): each client asks its next item as soon as the last is answered, until every item
    was asked once and `seconds` have passed. Open loop: item j is due at j / rate seconds; a client sends it
    then, or late when all were busy, and its latency counts from when it was due (no coordinated omission).
    """
    loop = asyncio.get_running_loop()
    answers: list[np.ndarray | None] = [None] * items
    latencies: list[float] = []
    counter = itertools.count()
    t0 = loop.time()
    end = t0 + seconds

    async def client() -> None:
        ask, close = await session()
        try:
            while True:
                j = next(counter)
                now = loop.time()
                if rate is None:
                    if j >= items and now >= end:
                        return
                    start = now
                else:
                    start = t0 + j / rate
                    if start >= end and j >= items:
                        return
                    if start > now:
                        await asyncio.sleep(start - now)
                ids = await ask(j % items)
                latencies.append(loop.time() - start)
                if j < items:
                    answers[j] = ids
        finally:
            await close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return Run(answers, latencies, len(latencies), loop.time() - t0)


def drive_threads(ask: Callable[[int], np.ndarray], items: int, clients: int, seconds: float) -> Run:
    """The closed loop of `drive` from `clients` threads with a blocking ask."""
    answers: list[np.ndarray | None] = [None] * items
    latencies: list[float] = []
    lock = threading.Lock()
    counter = itertools.count()
    t0 = time.perf_counter()
    end = t0 + seconds

    def client() -> None:
        while True:
            with lock:
                j = next(counter)
            start = time.perf_counter()
            if j >= items and start >= end:
                return
            ids = ask(j % items)
            with lock:
                latencies.append(time.perf_counter() - start)
            if j < items:
                answers[j] = ids

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Run(answers, latencies, len(latencies), time.perf_counter() - t0)


def repeat_for(fn: Callable[[], np.ndarray], seconds: float) -> tuple[np.ndarray, list[float], float]:
    """Call fn until `seconds` passed (at least once): its first answer, each call's latency, the wall time."""
    latencies: list[float] = []
    first: np.ndarray | None = None
    t0 = time.perf_counter()
    while not latencies or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        out = fn()
        latencies.append(time.perf_counter() - t)
        if first is None:
            first = out
    assert first is not None
    return first, latencies, time.perf_counter() - t0


def drive_processes(
    address: str, collection: str, queries: np.ndarray, k: int, ef: int, clients: int, seconds: float
) -> tuple[Run, float]:
    """The closed loop of `drive` from `clients` separate processes, each with its own blocking Client (as many
    application servers would be); and the CPU seconds those processes spent while the clock ran."""
    ctx = multiprocessing.get_context("spawn")  # a fork would copy this process's gRPC state
    go, results = ctx.Event(), ctx.Queue()
    args = (address, collection, queries, k, ef, clients, seconds, go, results)
    procs = [ctx.Process(target=_client_process, args=(i, *args), daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    ready = [results.get(timeout=120) for _ in procs]  # each connected and searched once
    assert all(r == "ready" for r in ready), ready
    t0 = time.perf_counter()
    go.set()
    answers: list[np.ndarray | None] = [None] * len(queries)
    latencies: list[float] = []
    cpu = 0.0
    for _ in procs:
        mine, ids, lat, spent = results.get(timeout=seconds + 120)
        for j, row in zip(mine, ids, strict=True):
            answers[j] = row
        latencies.extend(lat)
        cpu += spent
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    return Run(answers, latencies, len(latencies), wall), cpu


def _client_process(
    i: int,
    address: str,
    collection: str,
    queries: np.ndarray,
    k: int,
    ef: int,
    clients: int,
    seconds: float,
    go: Any,
    results: Any,
) -> None:
    import shoal  # in the child: the parent's modules are not carried over a spawn

    with shoal.Client(address, timeout=600) as client:
        client.search(collection, queries[i : i + 1], k=k, ef=ef, with_payload=False)
        results.put("ready")
        go.wait()
        cpu0, start = time.process_time(), time.perf_counter()
        end = start + seconds
        mine, ids, latencies = [], [], []
        j = i
        while j < len(queries) or time.perf_counter() < end:
            t = time.perf_counter()
            found = client.search(collection, queries[j % len(queries)], k=k, ef=ef, with_payload=False).ids
            latencies.append(time.perf_counter() - t)
            if j < len(queries):
                mine.append(j)
                ids.append(found)
            j += clients
        results.put((mine, ids, latencies, time.process_time() - cpu0))
