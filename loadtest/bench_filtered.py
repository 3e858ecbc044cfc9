"""Benchmark filtered search: throughput and recall@10 per selectivity and filter kind, next to unfiltered.

    python loadtest/bench_filtered.py --data ../shared/data/wordnet-minilm --n 100000
    python loadtest/bench_filtered.py --generate 20000 --dim 64        # without the real data

Payloads are generated (a unique rank, a string code, nested integers, a boolean, a float), so each filter
matches a known share of the points: 0.1%, 1%, 10% and 50%, each with an equality, a range, an $in and
an $or filter. Recall is measured against numpy brute force over just the matching points. In each of
--rounds rounds every filter is measured right after an unfiltered run of the same queries, and the
ratio of each pair is kept: the medians of those ratios hold even on a machine whose load drifts.
Writes bench-results/bench_filtered.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import shoal
from shoal._filter import matches, parse
from shoal._local import LocalCluster

K = 10


@dataclass
class Row:
    """One filter's measurements."""

    name: str
    filter: dict[str, Any] | None
    matches: int
    plans: list[str] = field(default_factory=list)
    recall_batch: float = 0.0
    recall_single: float = 0.0
    qps_batch: list[float] = field(default_factory=list)
    qps_single: list[float] = field(default_factory=list)
    ratio_batch: list[float] = field(default_factory=list)  # to the unfiltered run just before
    ratio_single: list[float] = field(default_factory=list)


def load(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray]:
    """Base vectors and queries: the first --n rows of a dataset folder, or generated clustered data."""
    if args.data:
        path = Path(args.data)
        base = np.load(path / "base.npy", mmap_mode="r")[: args.n].astype(np.float32)
        return path.name, base, np.load(path / "queries.npy").astype(np.float32)[: args.queries]
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((100, args.dim)).astype(np.float32)
    pts = centers[rng.integers(0, 100, args.generate + args.queries)]
    pts += 0.5 * rng.standard_normal(pts.shape).astype(np.float32)
    return f"generated-{args.generate}x{args.dim}", pts[: args.generate], pts[args.generate :]


def payloads(n: int) -> list[dict[str, Any]]:
    """Generated payloads, independent of the vectors: u is a random permutation of 0..n-1."""
    u = np.random.default_rng(1).permutation(n)
    return [
        {
            "rank": int(r),
            "score": r / n,
            "code": f"c{r % 1000}",
            "half": bool(r % 2),
            "m": {"k100": int(r % 100), "k10": int(r % 10)},
        }
        for r in u
    ]


def filters(n: int) -> list[tuple[str, dict[str, Any]]]:
    """Per selectivity, an equality, a range, an $in and an $or filter."""
    out = []
    for share, eq in ((0.001, {"code": "c7"}), (0.01, {"m.k100": 7}), (0.1, {"m.k10": 3}), (0.5, {"half": True})):
        m = int(share * n)
        out += [
            (f"{share:.1%} eq", eq),
            (
                f"{share:.1%} range",
                {"rank": {"$gte": 1000, "$lt": 1000 + m}} if share < 0.5 else {"score": {"$lt": 0.5}},
            ),
            (f"{share:.1%} in", {"code": {"$in": [f"c{i}" for i in range(int(share * 1000))]}}),
            (f"{share:.1%} or", {"$or": [{"rank": {"$lt": m // 2}}, {"score": {"$gte": 1 - m / 2 / n}}]}),
        ]
    return out


def truth(base: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact cosine top-K ids among `rows`, by numpy."""
    x = base[rows]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = np.full((len(q), K), -1, dtype=np.int64)  # -1 past the matches when there are fewer than K
    for lo in range(0, len(q), 100):
        d = -(q[lo : lo + 100] @ x.T)
        part = np.argpartition(d, K, axis=1)[:, :K] if len(rows) > K else np.argsort(d, axis=1)[:, :K]
        order = np.argsort(np.take_along_axis(d, part, 1), axis=1)
        out[lo : lo + 100, : part.shape[1]] = rows[np.take_along_axis(part, order, 1)]
    return out


def recall(found: np.ndarray, want: np.ndarray, matches_count: int) -> float:
    """Mean recall@K against the exact answer (min(K, matches) ids per query)."""
    k = min(K, matches_count)
    if k == 0:
        return 1.0
    return float(np.mean([len(set(found[i, :k].tolist()) & set(want[i, :k].tolist())) / k for i in range(len(want))]))


def run_batch(
    client: shoal.Client, queries: np.ndarray, spec: dict[str, Any] | None, batch: int, ef: int
) -> tuple[np.ndarray, float, str]:
    """All queries in calls of `batch`: the ids, queries per second and the first call's plan."""
    found, plan = [], ""
    start = time.perf_counter()
    for lo in range(0, len(queries), batch):
        res = client.search("bench", queries[lo : lo + batch], k=K, ef=ef or None, filter=spec, with_payload=False)
        found.append(res.ids)
        plan = plan or res.plan
    return np.vstack(found), len(queries) / (time.perf_counter() - start), plan


def run_single(
    client: shoal.Client, queries: np.ndarray, spec: dict[str, Any] | None, clients: int, ef: int
) -> tuple[np.ndarray, float]:
    """One query per call from `clients` threads: the ids and queries per second."""
    out = np.zeros((len(queries), K), dtype=np.uint64)
    todo = iter(range(len(queries)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            out[i] = client.search("bench", queries[i], k=K, ef=ef or None, filter=spec, with_payload=False).ids[0]

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, len(queries) / (time.perf_counter() - start)


def main() -> None:
    """Load, measure every configuration in interleaved rounds, print and save the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a dataset folder with base.npy and queries.npy")
    p.add_argument("--n", type=int, default=100_000, help="use the first N base rows (default 100,000)")
    p.add_argument("--generate", type=int, default=20_000, help="without --data: generate N clustered vectors")
    p.add_argument("--dim", type=int, default=64, help="without --data: dimension of generated vectors")
    p.add_argument("--queries", type=int, default=500, help="queries per configuration (default 500)")
    p.add_argument("--batch", type=int, default=100, help="queries per batched call (default 100)")
    p.add_argument("--single", type=int, default=200, help="queries sent one per call (default 200; 0: skip)")
    p.add_argument("--clients", type=int, default=16, help="concurrent single-query clients (default 16)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of paired runs; medians are reported")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--ef", type=int, default=0, help="search ef (default: the collection's, 64)")
    p.add_argument("--out", default="bench-results", help="folder for bench_filtered.json")
    args = p.parse_args()

    dataset, base, queries = load(args)
    n = len(base)
    docs = payloads(n)
    print(
        f"{dataset}: {n:,} x {base.shape[1]}, {len(queries)} queries, {args.shards} shards; computing truth", flush=True
    )
    rows, wants = [], {}
    for name, spec in [("unfiltered", None), *filters(n)]:
        node = parse(spec) if spec is not None else None
        ids = (
            np.arange(n)
            if node is None
            else np.array([i for i, d in enumerate(docs) if matches(node, d)], dtype=np.int64)
        )
        rows.append(Row(name, spec, len(ids)))
        wants[name] = truth(base, queries, ids)

    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(data=Path(tmp), shards=args.shards) as cluster,
        shoal.Client(cluster.address, timeout=600) as client,
    ):
        client.create_collection("bench", dim=base.shape[1], metric="cosine")
        start = time.perf_counter()
        client.upsert("bench", ids=np.arange(n), vectors=base, payloads=docs)
        ingest = n / (time.perf_counter() - start)
        print(f"ingest with payloads: {ingest:,.0f} points/s", flush=True)
        for row in rows:  # warm-up: caches, and the index worker's first touch of each filter
            client.search("bench", queries[:1], k=K, ef=args.ef or None, filter=row.filter, with_payload=False)
        unfiltered = rows[0]
        for r in range(args.rounds):
            for row in rows[1:]:
                for measured in (unfiltered, row):
                    found, qps, plan = run_batch(client, queries, measured.filter, args.batch, args.ef)
                    measured.qps_batch.append(qps)
                    measured.recall_batch = recall(found, wants[measured.name], measured.matches)
                    if plan and plan not in measured.plans:
                        measured.plans.append(plan)
                    if args.single:
                        single = queries[: args.single]
                        found, qps = run_single(client, single, measured.filter, args.clients, args.ef)
                        measured.qps_single.append(qps)
                        measured.recall_single = recall(found, wants[measured.name][: len(single)], measured.matches)
                row.ratio_batch.append(row.qps_batch[-1] / unfiltered.qps_batch[-1])
                if args.single:
                    row.ratio_single.append(row.qps_single[-1] / unfiltered.qps_single[-1])
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(
        f"\n{dataset}: {n:,} x {base.shape[1]}, {args.shards} shards, ef={args.ef or 64}, k={K}, "
        f"medians of {args.rounds} rounds; batch = {args.batch} queries per call, single = 1 query per call "
        f"from {args.clients} clients; x unfilt = median ratio to the unfiltered run just before"
    )
    print(
        f"{'filter':<14} {'matches':>8} {'recall':>7} {'qps batch':>10} {'x unfilt':>8} {'recall':>7} "
        f"{'qps single':>10} {'x unfilt':>8}  plan (batch, one shard)"
    )
    for row in rows:
        qb = statistics.median(row.qps_batch)
        qs = statistics.median(row.qps_single) if args.single else 0.0
        rb = statistics.median(row.ratio_batch) if row.ratio_batch else 1.0
        rs = statistics.median(row.ratio_single) if row.ratio_single else (1.0 if args.single else 0.0)
        plan = row.plans[0].split("; ")[0].split(": ", 1)[-1] if row.plans else "-"
        print(
            f"{row.name:<14} {row.matches:>8,} {row.recall_batch:>7.3f} {qb:>10,.0f} {rb:>8.2f} "
            f"{row.recall_single:>7.3f} {qs:>10,.0f} {rs:>8.2f}  {plan}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": dataset,
        "n": n,
        "dim": int(base.shape[1]),
        "shards": args.shards,
        "ef": args.ef or 64,
        "ingest_points_per_s": ingest,
        "rows": [asdict(r) for r in rows],
    }
    (out / "bench_filtered.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'bench_filtered.json'}")


if __name__ == "__main__":
    main()
