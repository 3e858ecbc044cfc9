"""What one upsert of 1,000 vectors and one search cost end to end (SDK -> coordinator -> 2 shards -> back).

    python loadtest/e2e_cost.py [--data ../shared/data/wordnet-minilm] [--rounds 20]

Without --data it uses generated 384-dimensional vectors.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import shoal
from shoal._local import LocalCluster


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20)
    return f"median {1e3 * statistics.median(samples):.1f} ms, p5 {1e3 * q[0]:.1f}, p95 {1e3 * q[-1]:.1f}"


def main() -> None:
    """Start a 2-shard cluster, time upserts of 1,000 vectors and searches, print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a dataset folder with base.npy and queries.npy")
    p.add_argument("--rounds", type=int, default=20, help="upserts of 1,000 vectors (default 20)")
    args = p.parse_args()
    n = args.rounds * 1000
    if args.data:
        base = np.load(Path(args.data) / "base.npy", mmap_mode="r")[:n].astype(np.float32)
        queries = np.load(Path(args.data) / "queries.npy")[:1000].astype(np.float32)
    else:
        rng = np.random.default_rng(0)
        base = rng.standard_normal((n, 384), dtype=np.float32)
        queries = rng.standard_normal((1000, 384), dtype=np.float32)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(data=Path(tmp), shards=2) as cluster,
        shoal.Client(cluster.address, timeout=600) as client,
    ):
        client.create_collection("cost", dim=base.shape[1])
        ups = []
        for i in range(args.rounds):
            t = time.perf_counter()
            client.upsert("cost", ids=np.arange(i * 1000, (i + 1) * 1000), vectors=base[i * 1000 : (i + 1) * 1000])
            ups.append(time.perf_counter() - t)
        print(f"upsert of 1,000 x {base.shape[1]} (durable, index growing to {n:,}): {_ms(ups)}")
        batch = []
        for _ in range(10):
            t = time.perf_counter()
            client.search("cost", queries, k=10, with_payload=False)
            batch.append(time.perf_counter() - t)
        print(f"search of 1,000 queries in one call, k=10, {n:,} points: {_ms(batch)}")
        single = []
        for q in queries[:500]:
            t = time.perf_counter()
            client.search("cost", q, k=10, with_payload=False)
            single.append(time.perf_counter() - t)
        print(f"search of one query per call, k=10: {_ms(single)}")


if __name__ == "__main__":
    main()
