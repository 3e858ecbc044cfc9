"""Benchmark Shoal against in-process usearch on the same data and cores, in the same run.

    python loadtest/bench.py --data ../shared/data/wordnet-minilm --n 100000
    python loadtest/bench.py --data ../shared/data/wordnet-minilm --n 100000 --precision f32,bf16,f16,i8
    python loadtest/bench.py --generate 50000 --dim 128 --ef 16,32,64
    python loadtest/bench.py --address 127.0.0.1:7070 ...    # a running cluster instead of a fresh local one

It starts a local cluster (or uses --address), loads the data through the SDK (durable acknowledgements),
builds the same index in this process with usearch on the same cores, then sweeps ef. Systems and modes
are measured interleaved, --repeat times, so both see the same machine load; ratios are taken per round
and the median is reported. Modes:

    usearch  all            every query in one call, on all cores (the ceiling the targets refer to)
    usearch  batch          --batch queries per call, on all cores
    usearch  single         one query per call, one thread
    shoal    batch          one client, --batch queries per `search` call, one call at a time
    shoal    batch-stream   one client, --batch queries per message over one search stream, --pipeline in flight
    shoal    single-unary   --clients tasks of one AsyncClient, one query per unary Search call
    shoal    single-async   --clients tasks of one AsyncClient calling `search` (its stream; concurrent ones coalesce)
    shoal    single-stream  --clients tasks, each one query at a time over its own `search_stream`
    shoal    single-sync    --clients threads sharing the blocking Client (its stream; concurrent ones coalesce)
    shoal    single-procs   --clients separate processes, a blocking Client each (nothing coalesces in a client)

Shoal's throughput at the target recall is interpolated on its recall-throughput curve and divided by
in-process `all` at the same recall. The single-query modes are then run again at half their top load
(open loop, latency from when each query was due) for p50/p95/p99. On a local cluster the CPU time of
every process is reported per query, which shows where the time goes. Writes OUT/bench.json and
OUT/bench.png (recall against queries/s, one panel per precision).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import usearch
from loadgen import (
    CpuMeter,
    Run,
    Session,
    drive,
    drive_processes,
    drive_threads,
    ground_truth,
    percentiles,
    recall,
    repeat_for,
)
from report import (
    SINGLE_MODES,
    HalfLoad,
    Ingest,
    OneClient,
    Point,
    plot,
    print_report,
    ratios,
    require_plotting,
    summarize,
)
from usearch.index import Index

import shoal
from shoal._local import LocalCluster

K = 10  # neighbours per query: recall@10 throughout
METRIC = {"cosine": "cos", "l2": "l2sq", "ip": "ip"}
USEARCH_MODES = ["all", "batch", "single"]
SHOAL_MODES = ["batch", "batch-stream", "single-unary", "single-async", "single-stream", "single-sync", "single-procs"]


def load(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray]:
    """Base vectors and held-out queries: from a .npy dataset or generated clustered data."""
    if args.data:
        path = Path(args.data)
        raw = np.load(path / "base.npy" if path.is_dir() else path, mmap_mode="r")
        n = min(args.n, len(raw))
        qfile = path / "queries.npy" if path.is_dir() else None
        given = np.load(qfile).astype(np.float32) if qfile and qfile.exists() else np.zeros((0, raw.shape[1]))
        missing = max(0, args.queries - len(given))
        if missing and n + missing > len(raw):
            n = max(1, len(raw) - missing)  # hold the queries out of the base
        extra = np.asarray(raw[n : n + missing], dtype=np.float32)
        queries = np.concatenate([given, extra]).astype(np.float32)[: args.queries]
        return path.name if path.is_dir() else path.stem, np.asarray(raw[:n], dtype=np.float32), queries
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((100, args.dim)).astype(np.float32)
    pts = centers[rng.integers(0, 100, args.generate + args.queries)]
    pts += 0.5 * rng.standard_normal(pts.shape).astype(np.float32)
    return f"generated-{args.generate}x{args.dim}", pts[: args.generate], pts[args.generate :]


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, int]]]:
    """The address to benchmark and the pids of its processes (none for a cluster given by --address)."""
    if args.address:
        yield args.address, args.pids
        return
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp,
        LocalCluster(data=Path(tmp), shards=args.shards) as local,
    ):
        pids = {f"shard{i}": p.popen.pid for i, p in enumerate(local.shard_procs) if p.popen}
        if local.coordinator and local.coordinator.popen:
            pids["coordinator"] = local.coordinator.popen.pid
        yield local.address, pids


def first_pass(run: Run, rows: int) -> np.ndarray:
    """The answers of the first pass over the items, stacked as (queries, k)."""
    return np.vstack([a.reshape(-1, K) for a in run.answers if a is not None])[:rows]


async def _noop() -> None:
    return None


class Bench:
    """One benchmark run: the data, both systems, and everything measured."""

    def __init__(
        self,
        args: argparse.Namespace,
        base: np.ndarray,
        queries: np.ndarray,
        truth: np.ndarray,
        address: str,
        pids: dict[str, int],
    ) -> None:
        self.args, self.base, self.queries, self.truth = args, base, queries, truth
        self.address, self.meter = address, CpuMeter(pids)
        self.threads = len(os.sched_getaffinity(0))
        self.points: list[Point] = []
        self.ingests: list[Ingest] = []
        self.half_loads: list[HalfLoad] = []
        self.one_clients: list[OneClient] = []
        self._add_cpu = self._upsert_cpu = 0.0  # CPU us per vector of the last load of each system

    # in-process usearch

    def build(self, precision: str) -> tuple[Index, float]:
        """The in-process index of the same data, and its add rate on all cores."""
        a = self.args
        index = Index(
            ndim=self.base.shape[1],
            metric=METRIC[a.metric],
            dtype=precision,
            connectivity=a.m,
            expansion_add=a.ef_construction,
        )
        t, cpu = time.perf_counter(), time.process_time()
        index.add(np.arange(len(self.base), dtype=np.uint64), self.base, threads=self.threads)
        self._add_cpu = (time.process_time() - cpu) / len(self.base) * 1e6
        return index, len(self.base) / (time.perf_counter() - t)

    def usearch(self, index: Index, precision: str, mode: str, ef: int, rnd: int) -> None:
        """Measure one in-process mode."""
        index.expansion_search = ef
        q, b, seconds = self.queries, self.args.batch, self.args.seconds
        cpu = time.process_time()
        if mode == "all":
            found, lat, wall = repeat_for(lambda: index.search(q, K, threads=self.threads).keys, seconds)
            rows, lat = len(lat) * len(q), []
        else:
            if mode == "batch":
                run = drive_threads(
                    lambda i: index.search(q[i * b : (i + 1) * b], K, threads=self.threads).keys,
                    len(q) // b,
                    1,
                    seconds,
                )
                rows = run.items * b
            else:
                run = drive_threads(lambda i: index.search(q[i], K, threads=1).keys[None, :], len(q), 1, seconds)
                rows = run.items
            found, lat, wall = first_pass(run, len(q)), run.latencies, run.wall
        cpu_us = {"in-process": (time.process_time() - cpu) / rows * 1e6}
        self._add(precision, "usearch", mode, ef, rnd, found, rows / wall, lat, cpu_us, rows / wall)

    # Shoal

    def ingest(self, precision: str, collection: str) -> float:
        """Create the collection and load the data through the SDK; vectors per second, durably acknowledged."""
        a = self.args
        with shoal.Client(self.address, timeout=3600) as client:
            if collection in client.list_collections():
                if a.reuse and client.count(collection) == len(self.base):
                    print(f"  reusing {collection}: ingest not measured", flush=True)
                    return 0.0
                client.drop_collection(collection)
            client.create_collection(
                collection,
                dim=self.base.shape[1],
                metric=a.metric,
                precision=precision,
                m=a.m,
                ef_construction=a.ef_construction,
            )
            self.meter.start()
            t = time.perf_counter()
            client.upsert(collection, ids=np.arange(len(self.base)), vectors=self.base)
            wall = time.perf_counter() - t
            cpu = self.meter.stop()
            self._upsert_cpu = sum(cpu.values()) / len(self.base) * 1e6 if len(cpu) > 1 else 0.0
            return len(self.base) / wall

    def memory(self, collection: str) -> int:
        """Index bytes of a collection over all shards."""
        with shoal.Client(self.address) as client:
            return client.describe_collection(collection).memory_bytes

    def shoal(self, precision: str, collection: str, mode: str, ef: int, rnd: int) -> Run:
        """Measure one Shoal mode and record it."""
        self.meter.start()
        children = 0.0  # CPU seconds of client processes the meter does not see
        if mode == "single-sync":
            run = self._sync(collection, ef)
        elif mode == "single-procs":
            a = self.args
            run, children = drive_processes(self.address, collection, self.queries, K, ef, a.clients, a.seconds)
        else:
            run = asyncio.run(self._async(collection, mode, ef, None))
        cpu = self.meter.stop()
        cpu["client"] = cpu.get("client", 0.0) + children
        rows = run.items * (self.args.batch if mode.startswith("batch") else 1)
        found = first_pass(run, len(self.queries))
        self._add(
            precision,
            "shoal",
            mode,
            ef,
            rnd,
            found,
            rows / run.wall,
            run.latencies,
            {name: sec / rows * 1e6 for name, sec in cpu.items()} if len(cpu) > 1 else {},
            rows / run.wall,
        )
        return run

    def _sync(self, collection: str, ef: int, clients: int | None = None) -> Run:
        q = self.queries
        with shoal.Client(self.address, timeout=600) as client:
            client.search(collection, q[:1], k=K, ef=ef, with_payload=False)  # connect before the clock starts
            return drive_threads(
                lambda i: client.search(collection, q[i], k=K, ef=ef, with_payload=False).ids,
                len(q),
                clients or self.args.clients,
                self.args.seconds,
            )

    def one_client(self, precision: str) -> None:
        """One blocking client, one query at a time, at the least ef that reached the target recall."""
        mine = sorted((p for p in self.points if p.precision == precision and p.system == "shoal"), key=lambda p: p.ef)
        if not any(p.mode in SINGLE_MODES for p in mine):
            return
        ef = next((p.ef for p in mine if p.recall >= self.args.target_recall), mine[-1].ef)
        self.meter.start()
        run = self._sync(f"bench_{precision}", ef, clients=1)
        cpu = self.meter.stop()
        per_query = {name: sec / run.items * 1e6 for name, sec in cpu.items()} if len(cpu) > 1 else {}
        self.one_clients.append(OneClient(precision, ef, run.items / run.wall, *percentiles(run.latencies), per_query))

    async def _async(self, collection: str, mode: str, ef: int, rate: float | None) -> Run:
        q, b, a = self.queries, self.args.batch, self.args
        async with shoal.AsyncClient(self.address, timeout=600) as client:
            await client.search(collection, q[:1], k=K, ef=ef, with_payload=False)  # connect before the clock starts

            async def searches(rows: int) -> Any:
                async def ask(i: int) -> np.ndarray:
                    return (
                        await client.search(collection, q[i * rows : (i + 1) * rows], k=K, ef=ef, with_payload=False)
                    ).ids

                return ask, _noop

            async def unary() -> Any:
                # The call AsyncClient.search made before it rode a stream: one unary Search per query.
                shape, fields = client._search_shape(collection, K, ef, False, False, None)

                async def ask(i: int) -> np.ndarray:
                    return (await client._send(client._search(shape, fields, q[i : i + 1]))).ids

                return ask, _noop

            async def stream(rows: int) -> Any:
                feed: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

                async def requests() -> AsyncIterator[np.ndarray]:
                    while (item := await feed.get()) is not None:
                        yield item

                results = client.search_stream(collection, requests(), k=K, ef=ef, with_payload=False)

                async def ask(i: int) -> np.ndarray:
                    feed.put_nowait(q[i * rows : (i + 1) * rows])
                    return (await anext(results)).ids

                async def close() -> None:
                    feed.put_nowait(None)
                    async for _ in results:
                        pass

                return ask, close

            session: Session
            if mode == "batch":
                return await drive(lambda: searches(b), len(q) // b, 1, a.seconds)
            if mode == "batch-stream":
                # One client pipelining batches: --pipeline streams of one batch in flight each, one channel.
                return await drive(lambda: stream(b), len(q) // b, a.pipeline, a.seconds)
            sessions = {"single-unary": unary, "single-async": lambda: searches(1), "single-stream": lambda: stream(1)}
            session = sessions[mode]
            return await drive(session, len(q), a.clients, a.seconds * (2 if rate else 1), rate)

    def half_load(self, precision: str, collection: str) -> None:
        """Run each single-query mode at half the throughput it reached at the target recall."""
        mine = [p for p in self.points if p.precision == precision and p.system == "shoal"]
        for mode in (m for m in self.args.modes if m in SINGLE_MODES and m not in ("single-sync", "single-procs")):
            curve = sorted((p for p in mine if p.mode == mode), key=lambda p: p.ef)
            ok = [p for p in curve if p.recall >= self.args.target_recall]
            if not ok:
                continue
            ef = ok[0].ef
            top = statistics.median(p.qps for p in curve if p.ef == ef)
            run = asyncio.run(self._async(collection, mode, ef, top / 2))
            self.half_loads.append(
                HalfLoad(precision, mode, ef, top / 2, run.items / run.wall, *percentiles(run.latencies))
            )

    def _add(
        self,
        precision: str,
        system: str,
        mode: str,
        ef: int,
        rnd: int,
        found: np.ndarray,
        qps: float,
        latencies: list[float],
        cpu: dict[str, float] | None = None,
        rows_per_second: float = 0.0,
    ) -> None:
        cpu = cpu or {}
        point = Point(
            precision,
            system,
            mode,
            ef,
            rnd,
            recall(found, self.truth[: len(found)]),
            qps,
            *percentiles(latencies),
            cpu,
            sum(cpu.values()) * rows_per_second / 1e6,
        )
        self.points.append(point)
        cpu_text = " ".join(f"{k}={v:.0f}" for k, v in point.cpu_us_per_query.items())
        print(
            f"  {precision:<5} {system:<8} {mode:<14} ef={ef:<4} round {rnd}: recall {point.recall:.3f} "
            f"{qps:9,.0f} q/s  p99 {point.p99_ms:6.2f} ms  {point.cores:.2f} cores  "
            f"{('cpu us/q ' + cpu_text) if cpu_text else ''}",
            flush=True,
        )

    def run(self) -> None:
        """Every precision: load both systems, sweep ef in interleaved rounds, then the half-load runs."""
        a = self.args
        for precision in a.precision:
            collection = f"bench_{precision}"
            print(
                f"{precision}: building the in-process index and loading Shoal ({len(self.base):,} vectors)", flush=True
            )
            index, usearch_vps = self.build(precision)
            shoal_vps = self.ingest(precision, collection)
            n = len(self.base)
            self.ingests.append(
                Ingest(
                    precision,
                    shoal_vps,
                    usearch_vps,
                    self.memory(collection) / n,
                    index.memory_usage / n,
                    self._upsert_cpu,
                    self._add_cpu,
                )
            )
            print(f"  ingest: shoal {shoal_vps:,.0f} vectors/s, usearch {usearch_vps:,.0f}/s", flush=True)
            for rnd in range(a.repeat):
                for ef in a.ef:
                    for mode in USEARCH_MODES:
                        self.usearch(index, precision, mode, ef, rnd)
                    for mode in a.modes:
                        self.shoal(precision, collection, mode, ef, rnd)
            self.half_load(precision, collection)
            self.one_client(precision)
            if a.address and not a.reuse:
                with shoal.Client(self.address) as client:
                    client.drop_collection(collection)
            del index


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a dataset folder (base.npy, optional queries.npy) or a .npy file of vectors")
    p.add_argument("--n", type=int, default=100_000, help="use the first N base rows (default 100,000)")
    p.add_argument("--generate", type=int, default=50_000, help="without --data: generate N clustered vectors")
    p.add_argument("--dim", type=int, default=128, help="without --data: dimension of generated vectors")
    p.add_argument(
        "--queries",
        type=int,
        default=1000,
        help="queries (default 1000): queries.npy, topped up with base rows after the first N",
    )
    p.add_argument("--address", help="benchmark a running cluster at HOST:PORT instead of starting one")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --address: search bench_PRECISION as loaded by an earlier run if it holds N points "
        "(ingest is then not measured), and keep it afterwards",
    )
    p.add_argument(
        "--pids",
        default="",
        help="with --address: NAME=PID,... of its processes on this machine, to report their CPU time per query",
    )
    p.add_argument("--shards", type=int, default=2, help="shards of the local cluster (default 2)")
    p.add_argument("--precision", default="f32", help="comma-separated: f32,bf16,f16,i8 (default f32)")
    p.add_argument("--metric", default="cosine", choices=sorted(METRIC))
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--ef", default="16,24,32,48,64,96,128", help="comma-separated ef sweep")
    p.add_argument("--modes", default=",".join(SHOAL_MODES), help=f"Shoal modes (default all: {SHOAL_MODES})")
    p.add_argument("--batch", type=int, default=100, help="queries per batched call (default 100)")
    p.add_argument("--clients", type=int, default=16, help="concurrent single-query clients (default 16)")
    p.add_argument("--pipeline", type=int, default=4, help="batches in flight in batch-stream mode (default 4)")
    p.add_argument("--seconds", type=float, default=2.0, help="minimum seconds per measurement (default 2)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved rounds of the whole sweep (default 2)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    args = p.parse_args(argv)
    args.ef = [int(e) for e in args.ef.split(",")]
    args.precision = args.precision.split(",")
    args.modes = args.modes.split(",")
    args.pids = {name: int(pid) for name, _, pid in (item.partition("=") for item in args.pids.split(",") if item)}
    unknown = set(args.modes) - set(SHOAL_MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; choose from {SHOAL_MODES}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run both systems, print the report, write the JSON and the PNG."""
    args = parse(argv)
    require_plotting()
    name, base, queries = load(args)
    truth = ground_truth(base, queries, K, args.metric)
    started, load_before = time.time(), os.getloadavg()
    with cluster(args) as (address, pids):
        bench = Bench(args, base, queries, truth, address, pids)
        bench.run()
    summary = summarize(bench.points)
    ratio_rows = ratios(bench.points, args.target_recall)
    print_report(
        args,
        name,
        len(base),
        base.shape[1],
        len(queries),
        bench.threads,
        bench.ingests,
        bench.half_loads,
        summary,
        ratio_rows,
        bench.one_clients,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": name,
        "n": len(base),
        "dim": base.shape[1],
        "queries": len(queries),
        "k": K,
        "config": {k: v for k, v in vars(args).items()},
        "environment": {
            "cores": bench.threads,
            "usearch": usearch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "started": started,
            "seconds": time.time() - started,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "ingest": [asdict(g) for g in bench.ingests],
        "summary": summary,
        "at_target_recall": ratio_rows,
        "half_load": [asdict(h) for h in bench.half_loads],
        "one_client": [asdict(o) for o in bench.one_clients],
        "points": [asdict(p) for p in bench.points],
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(name, len(base), summary, args.target_recall, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":
    main()
