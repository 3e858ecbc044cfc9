"""Slot moves: move rate with and without foreground load, foreground search during a move, time to grow.

    python loadtest/bench_move.py                          # 50k x 96-d, default throttle
    python loadtest/bench_move.py --points 100000 --rate 1e9   # unthrottled

A local cluster of two groups (one member each, embedded etcd) is loaded, a third group joins, then:
1. foreground alone: closed-loop single-query searches (k=10) for --seconds: throughput and p99;
2. grow 2 -> 3 with no foreground (`shoal rebalance`): the idle move rate;
3. drain the new group back under the same foreground (`shoal drain g2`): the loaded move rate and the
   foreground's throughput and p99 while slots move, as ratios to (1).
The time to grow 2 -> 3 with --paper-points (1M) of --dim is extrapolated from the measured rates: a third
of the points moves. Results go to stdout and, with --out, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import shoal
from shoal._config import DEFAULT_MOVE_RATE
from shoal._local import LocalCluster

DONE = re.compile(r"done: (\d+)/\d+ ranges, ([\d,]+) points moved, ([\d,]+) points/s")


class Foreground:
    """Closed-loop single-query searches on `threads` threads, latencies recorded while `recording`."""

    def __init__(self, address: str, collection: str, queries: np.ndarray, threads: int) -> None:
        self.address, self.collection, self.queries = address, collection, queries
        self.latencies: list[float] = []
        self.failures = 0
        self.recording = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Foreground:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with shoal.Client(self.address) as client:
            while not self._stop.is_set():
                q = self.queries[rng.integers(len(self.queries))]
                start = time.perf_counter()
                try:
                    client.search(self.collection, q[None, :], k=10)
                except shoal.ShoalError:
                    self.failures += 1
                    continue
                if self.recording.is_set():
                    self.latencies.append(time.perf_counter() - start)

    def measure(self, action: float | list[str]) -> tuple[dict[str, float], str]:
        """Throughput and p99 over `action`: a number of seconds, or a `shoal` command run meanwhile."""
        self.latencies = []
        self.recording.set()
        start = time.perf_counter()
        output = time.sleep(action) if isinstance(action, float) else _shoal(action)
        took = time.perf_counter() - start
        self.recording.clear()
        lat = sorted(self.latencies)
        stats = {
            "seconds": round(took, 2),
            "searches_per_s": round(len(lat) / took, 1),
            "p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else 0.0,
            "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2) if lat else 0.0,
        }
        return stats, output or ""


def _shoal(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"shoal {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _moved(output: str, seconds: float) -> dict[str, float]:
    """Ranges and points moved, and the rate over the whole command (resume, planning and switches included)."""
    found = DONE.search(output)
    if found is None:
        raise SystemExit(f"no summary line in the command's output:\n{output}")
    points = int(found.group(2).replace(",", ""))
    return {"ranges": int(found.group(1)), "points": points, "points_per_s": round(points / seconds, 1)}


def bench(args: argparse.Namespace) -> dict[str, object]:
    """Run the three phases; the results as one JSON-able dict."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.points, args.dim)).astype(np.float32)
    queries = rng.standard_normal((1000, args.dim)).astype(np.float32)
    rate = ["--rate", str(args.rate)]
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(data=Path(tmp) / "c", shards=2) as cluster:
        data = ["--data", str(cluster.data)]
        with shoal.Client(cluster.address, timeout=600) as client:
            client.create_collection("m", dim=args.dim)
            for s in range(0, args.points, 5000):
                client.upsert("m", ids=np.arange(s, min(s + 5000, args.points)), vectors=x[s : s + 5000])
        cluster.join("shard-new")
        print(f"loaded {args.points:,} x {args.dim}-d into 2 groups; g2 joined", flush=True)
        start = time.perf_counter()
        grow = _moved(_shoal(["rebalance", *data, *rate]), time.perf_counter() - start)
        print(f"grow 2 -> 3, no foreground: {grow}", flush=True)
        with Foreground(cluster.address, "m", queries, args.threads) as fg:
            time.sleep(1.0)  # warm up
            alone, _ = fg.measure(float(args.seconds))
            print(f"foreground alone: {alone}", flush=True)
            during, output = fg.measure(["drain", "g2", *data, *rate])
            drain = _moved(output, during["seconds"])
            print(f"drain g2 under foreground: {drain}; foreground meanwhile: {during}", flush=True)
            failures = fg.failures
    third = args.paper_points / 3
    result: dict[str, object] = {
        "points": args.points,
        "dim": args.dim,
        "rate_limit": args.rate,
        "move_idle": grow,
        "move_loaded": drain,
        "foreground_alone": alone,
        "foreground_during_move": during,
        "throughput_ratio": round(during["searches_per_s"] / max(alone["searches_per_s"], 1e-9), 3),
        "p99_ratio": round(during["p99_ms"] / max(alone["p99_ms"], 1e-9), 3),
        "failed_searches": failures,
        "grow_1m_seconds_idle": round(third / grow["points_per_s"], 1),
        "grow_1m_seconds_loaded": round(third / drain["points_per_s"], 1),
    }
    return result


def main() -> None:
    """Parse the options, run, print (and write) the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--rate", type=float, default=DEFAULT_MOVE_RATE, help="the moves' throttle, points/s")
    p.add_argument("--threads", type=int, default=4, help="foreground search threads")
    p.add_argument("--seconds", type=float, default=20.0, help="the foreground-alone measurement")
    p.add_argument("--paper-points", type=int, default=1_000_000, help="points of the extrapolated grow")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    result = bench(args)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
