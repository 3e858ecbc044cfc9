"""Failover and write-latency measurements of shard groups (local processes, embedded etcd).

    python loadtest/bench_failover.py --kills 20         # primary killed -> first acknowledged write
    python loadtest/bench_failover.py --latency          # write latency with 1, 2 and 3 copies

Failover: one group of three copies; a writer upserts small batches in a loop; each round kills -9 the
primary, measures the time to the first write acknowledged after the kill, restarts the killed member
and waits until the group's in-sync set is whole again.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import shoal
from shoal._local import LocalCluster


def _primary(cluster: LocalCluster) -> str:
    import asyncio

    from shoal._meta import MetaStore

    assert cluster.etcd is not None
    endpoint = cluster.etcd.endpoint

    async def read() -> str:
        async with await MetaStore.connect(endpoint, cluster.cluster) as meta:
            state = await meta.get_group("g0")
        assert state.primary is not None
        return state.primary

    return asyncio.run(read())


def failover(kills: int) -> list[float]:
    """Seconds from each kill -9 of the primary to the first acknowledged write."""
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(data=Path(tmp), shards=1, replicas=3) as cluster:
        acked_at: list[float] = []
        stop = threading.Event()
        with shoal.Client(cluster.address, timeout=60) as client:
            client.create_collection("f", dim=8)

            def write() -> None:
                rng = np.random.default_rng(0)
                i = 0
                while not stop.is_set():
                    try:
                        client.upsert("f", ids=np.arange(i, i + 10), vectors=rng.standard_normal((10, 8)).astype("f4"))
                    except shoal.ShoalError:
                        continue
                    acked_at.append(time.monotonic())
                    i += 10

            writer = threading.Thread(target=write)
            writer.start()
            try:
                for n in range(kills):
                    time.sleep(0.5)
                    victim = next(p for p in cluster.shard_procs if p.role == _primary(cluster))
                    victim.kill()
                    killed = time.monotonic()
                    while not acked_at or acked_at[-1] <= killed:
                        time.sleep(0.01)
                    after = [t for t in acked_at if t > killed]
                    times.append(after[0] - killed)
                    print(f"kill {n + 1}: first acknowledged write after {times[-1]:.2f} s", flush=True)
                    cluster.restart(victim)
                    cluster.wait_groups(3)
            finally:
                stop.set()
                writer.join()
    return times


def latency(copies: int, batches: int = 300, rows: int = 100) -> list[float]:
    """Milliseconds per acknowledged upsert of `rows` points, one group of `copies`."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, 64)).astype("f4")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(data=Path(tmp), shards=1, replicas=copies) as cluster,
        shoal.Client(cluster.address) as client,
    ):
        client.create_collection("l", dim=64)
        took = []
        for b in range(batches):
            start = time.perf_counter()
            client.upsert("l", ids=np.arange(b * rows, (b + 1) * rows), vectors=x)
            took.append((time.perf_counter() - start) * 1000)
    return took


def main() -> None:
    """Run the measurements asked for on the command line."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=0)
    p.add_argument("--latency", action="store_true")
    args = p.parse_args()
    if args.kills:
        times = failover(args.kills)
        print(
            f"failover over {len(times)} kills: median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s, min {min(times):.2f} s"
        )
    if args.latency:
        for copies in (1, 2, 3):
            took = sorted(latency(copies))
            p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
            print(f"write latency, {copies} copies, 100 x 64-dim points: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
