"""Replica measurements (local processes, embedded etcd): catch-up by op log and by snapshot, reads with 1 and 2
copies of one shard group, and how evenly the reads split between the copies.

    python loadtest/bench_replicas.py --catchup --n 100000 --dim 64
    python loadtest/bench_replicas.py --reads --n 100000 --dim 64 --seconds 10 --repeat 3

Catch-up: one group of two copies; the replica is stopped, N vectors are written in batches of 1000, the
replica is started again and timed until it is back in the in-sync set. Once with an op log that keeps every
write (it replays them), once with one that keeps 2 (it copies the primary's data), and once with nothing
missed (the start alone, the floor of both). Reads: the same N vectors in a group of 1 copy and, side by side,
one of 2; single-query calls from --clients threads and 100-query calls from 2 threads, each for --seconds,
the two clusters measured interleaved for --repeat rounds; the CPU of every server process per query, and
each copy's share of the queries (from its /metrics); the median ratio of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from loadgen import CpuMeter, drive_threads

import shoal
from shoal import _rpc
from shoal._local import LocalCluster, Process
from shoal._meta import MetaStore
from shoal._meta_values import GroupState
from shoal.shard.options import OPLOG_KEEP_ENV, OPLOG_TRIM_ENV
from shoal.v1 import shard_pb2, shard_pb2_grpc

BATCH = 1000
SNAPSHOT_LINE = "caught up by snapshot"


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered float32 vectors (like embeddings, unlike uniform noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((100, dim)).astype(np.float32)
    return centers[rng.integers(0, 100, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)


def group(cluster: LocalCluster) -> GroupState:
    assert cluster.etcd is not None
    endpoint = cluster.etcd.endpoint

    async def read() -> GroupState:
        async with await MetaStore.connect(endpoint, cluster.cluster) as meta:
            return await meta.get_group("g0")

    return asyncio.run(read())


def state(address: str) -> shard_pb2.ReplicaStateResponse:
    with _rpc.channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).ReplicaState(shard_pb2.ReplicaStateRequest(), timeout=10)


def wait(check: Callable[[], bool], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("not reached in time")
        time.sleep(0.05)


def load(client: shoal.Client, name: str, x: np.ndarray) -> float:
    """Upsert `x` in batches; the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(x), BATCH):
        client.upsert(name, ids=np.arange(start, min(start + BATCH, len(x))), vectors=x[start : start + BATCH])
    return time.perf_counter() - started


def rejoin(cluster: LocalCluster, victim: Process) -> float:
    """Start a stopped member and time it until it is back in the in-sync set."""
    started = time.perf_counter()
    cluster.restart(victim)
    wait(lambda: victim.role in group(cluster).in_sync)
    return time.perf_counter() - started


def catchup(n: int, dim: int) -> dict[str, float]:
    """Seconds from a replica's start to its return into the in-sync set: by log, by snapshot, nothing missed."""
    x = vectors(n, dim)
    times: dict[str, float] = {}
    for path, keep in (("log", 10 * n), ("snapshot", 2)):
        env = {OPLOG_KEEP_ENV: str(keep), OPLOG_TRIM_ENV: "0.5"}
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalCluster(data=Path(tmp), shards=1, replicas=2, shard_env=env) as cluster,
            shoal.Client(cluster.address, timeout=120) as client,
        ):
            client.create_collection("c", dim=dim, metric="l2")
            primary = next(p for p in cluster.shard_procs if p.role == group(cluster).primary)
            victim = next(p for p in cluster.shard_procs if p is not primary)
            at = state(victim.address).seq
            victim.stop()
            loaded = load(client, "c", x)
            print(f"{path}: {n} x {dim}-dim vectors loaded in {loaded:.1f} s with the replica down", flush=True)
            behind = state(primary.address).seq
            if path == "snapshot":
                address = primary.address
                wait(lambda: state(address).log_start > at + 1, timeout=60)  # noqa: B023 - used at once
            times[path] = rejoin(cluster, victim)
            copied = SNAPSHOT_LINE in victim.log_path.read_text()
            assert copied == (path == "snapshot"), f"the {path} run caught up by {'snapshot' if copied else 'log'}"
            assert state(victim.address).seq >= behind
            print(f"catch-up by {path}: {times[path]:.2f} s from start to in-sync", flush=True)
            if path == "log":
                victim.stop()
                times["start"] = rejoin(cluster, victim)
                print(f"nothing missed: {times['start']:.2f} s from start to in-sync", flush=True)
    return times


def _queries_searched(address: str) -> float:
    """The queries a shard process has searched, from its /metrics."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    found = re.search(r'^shoal_search_batch_queries_sum\{stage="shard"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _measure(
    cluster: LocalCluster, client: shoal.Client, queries: np.ndarray, mode: str, seconds: float, clients: int
) -> dict[str, float]:
    """One measurement of a mode on a loaded cluster: queries/s, server CPU per query, each copy's share."""
    rows, threads = (1, clients) if mode == "single" else (100, 2)
    assert cluster.coordinator is not None and cluster.coordinator.popen is not None
    pids = {p.role: p.popen.pid for p in cluster.shard_procs if p.popen is not None}
    pids["coordinator"] = cluster.coordinator.popen.pid

    def ask(j: int) -> np.ndarray:
        return client.search("r", queries[j * rows : (j + 1) * rows], k=10).ids

    ask(0)
    before = {p.role: _queries_searched(p.metrics_address) for p in cluster.shard_procs}
    meter = CpuMeter(pids)
    meter.start()
    run = drive_threads(ask, len(queries) // rows, threads, seconds)
    cpu = meter.stop()
    after = {p.role: _queries_searched(p.metrics_address) for p in cluster.shard_procs}
    answered = run.items * rows
    searched = {m: after[m] - before[m] for m in after}
    total = sum(searched.values()) or 1.0
    return {
        "qps": answered / run.wall,
        "server_cpu_ms_per_query": 1000 * sum(v for k, v in cpu.items() if k != "client") / answered,
        "shard_cpu_ms_per_query": 1000 * sum(cpu[m] for m in searched) / answered,
        **{f"share {m}": searched[m] / total for m in sorted(searched)},
    }


def reads(n: int, dim: int, seconds: float, clients: int, repeat: int) -> dict[str, list[dict[int, dict[str, float]]]]:
    """Per mode, per round: per copies (1, 2) the measurement. Both clusters run side by side and are measured
    interleaved, so each round's ratio compares the two under the same machine load."""
    x = vectors(n, dim)
    queries = vectors(2000, dim, seed=1)
    results: dict[str, list[dict[int, dict[str, float]]]] = {"single": [], "batch": []}
    with contextlib.ExitStack() as stack:
        clusters: dict[int, tuple[LocalCluster, shoal.Client]] = {}
        for copies in (1, 2):
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            cluster = stack.enter_context(LocalCluster(data=Path(tmp), shards=1, replicas=copies, metrics=True))
            client = stack.enter_context(shoal.Client(cluster.address, timeout=120))
            client.create_collection("r", dim=dim, metric="l2")
            print(f"{copies} cop{'y' if copies == 1 else 'ies'}: loaded in {load(client, 'r', x):.1f} s", flush=True)
            cluster.wait_groups(copies)
            clusters[copies] = cluster, client
        for rnd in range(repeat):
            for mode in results:
                row: dict[int, dict[str, float]] = {}
                for copies, (cluster, client) in clusters.items():
                    row[copies] = got = _measure(cluster, client, queries, mode, seconds, clients)
                    shares = ", ".join(f"{k[6:]} {v:.1%}" for k, v in got.items() if k.startswith("share "))
                    print(
                        f"round {rnd + 1}, {copies} cop{'y' if copies == 1 else 'ies'}, {mode}: "
                        f"{got['qps']:.0f} queries/s, server CPU {got['server_cpu_ms_per_query']:.3f} ms/query "
                        f"(shards {got['shard_cpu_ms_per_query']:.3f}); queries per copy: {shares}",
                        flush=True,
                    )
                results[mode].append(row)
    return results


def main() -> None:
    """Run the measurements asked for on the command line; print ratios of the same run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catchup", action="store_true")
    p.add_argument("--reads", action="store_true")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the read measurements")
    args = p.parse_args()
    if args.catchup:
        t = catchup(args.n, args.dim)
        print(
            f"catch-up of {args.n} x {args.dim}-dim: log {t['log']:.2f} s, snapshot {t['snapshot']:.2f} s "
            f"(log/snapshot {t['log'] / t['snapshot']:.2f}x); start alone {t['start']:.2f} s; beyond the start: "
            f"log {t['log'] - t['start']:.2f} s, snapshot {t['snapshot'] - t['start']:.2f} s"
        )
    if args.reads:
        r = reads(args.n, args.dim, args.seconds, args.clients, args.repeat)
        for mode, rounds in r.items():
            qps = [row[2]["qps"] / row[1]["qps"] for row in rounds]
            cpu = [row[2]["server_cpu_ms_per_query"] / row[1]["server_cpu_ms_per_query"] for row in rounds]
            print(
                f"{mode}: 2 copies / 1 copy over {len(rounds)} rounds: throughput median "
                f"{statistics.median(qps):.2f}x ({min(qps):.2f}-{max(qps):.2f}), server CPU per query median "
                f"{statistics.median(cpu):.2f}x ({min(cpu):.2f}-{max(cpu):.2f})"
            )


if __name__ == "__main__":
    main()
