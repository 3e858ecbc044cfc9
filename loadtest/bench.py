"""Benchmark Shoal against in-process usearch on the same data and cores, in the same run.

    python loadtest/bench.py --data ../shared/data/wordnet-minilm --n 100000
    python loadtest/bench.py --generate 50000 --dim 128

Prints a table (recall@10, queries/s, latency percentiles, and the ratio Shoal / in-process at
equal recall), and writes bench-results/bench.json and bench-results/bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from usearch.index import Index

import shoal
from shoal._local import LocalCluster

METRIC = {"cosine": "cos", "l2": "l2sq", "ip": "ip"}


@dataclass
class Point:
    """One measured configuration: a system, a mode and an ef."""

    system: str
    mode: str
    ef: int
    recall: float
    qps: float
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0


@dataclass
class Report:
    """Everything one run measured."""

    dataset: str
    n: int
    dim: int
    queries: int
    shards: int
    precision: str
    ingest_shoal_vps: float = 0.0
    ingest_usearch_vps: float = 0.0
    memory_shoal_bytes: int = 0
    memory_usearch_bytes: int = 0
    points: list[Point] = field(default_factory=list)


def load(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray]:
    """The base vectors and queries: from a .npy dataset or generated clustered data."""
    if args.data:
        path = Path(args.data)
        base_file = path / "base.npy" if path.is_dir() else path
        base = np.load(base_file, mmap_mode="r")[: args.n].astype(np.float32)
        qfile = path / "queries.npy" if path.is_dir() else None
        queries = np.load(qfile).astype(np.float32) if qfile and qfile.exists() else base[-args.queries:]
        return path.name, base, queries[: args.queries]
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((100, args.dim)).astype(np.float32)
    pts = centers[rng.integers(0, 100, args.generate + args.queries)]
    pts += 0.5 * rng.standard_normal(pts.shape).astype(np.float32)
    return f"generated-{args.generate}x{args.dim}", pts[: args.generate], pts[args.generate:]


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact top-k ids by numpy, in blocks so memory stays bounded."""
    out = np.empty((len(queries), k), dtype=np.int64)
    b = base / np.linalg.norm(base, axis=1, keepdims=True) if metric == "cosine" else base
    sq = (base * base).sum(1)
    for lo in range(0, len(queries), 100):
        q = queries[lo:lo + 100]
        if metric == "cosine":
            d = -(q / np.linalg.norm(q, axis=1, keepdims=True)) @ b.T
        elif metric == "ip":
            d = -q @ base.T
        else:
            d = sq[None, :] - 2 * q @ base.T
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, 1), axis=1)
        out[lo:lo + 100] = np.take_along_axis(part, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean recall@k of found ids against the truth."""
    k = truth.shape[1]
    return float(np.mean([len(set(found[i, :k].tolist()) & set(truth[i].tolist())) / k for i in range(len(truth))]))


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 in milliseconds."""
    if len(latencies) < 2:
        return (latencies[0] * 1e3,) * 3 if latencies else (0.0, 0.0, 0.0)
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1e3, q[94] * 1e3, q[98] * 1e3


def concurrent(fn: Callable[[int], np.ndarray], n: int, clients: int) -> tuple[np.ndarray, list[float], float]:
    """Run fn(i) for i < n from `clients` threads; the ids of each, the latencies, and the wall time."""
    results: list[np.ndarray | None] = [None] * n
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            results[i] = fn(i)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.vstack(results), lat, time.perf_counter() - start  # type: ignore[arg-type]


def bench_usearch(report: Report, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                  efs: list[int], args: argparse.Namespace) -> None:
    """The ceiling: usearch in this process, on all the cores the cluster gets."""
    threads = len(os.sched_getaffinity(0))
    index = Index(ndim=base.shape[1], metric=METRIC[args.metric], dtype=args.precision, connectivity=args.m,
                  expansion_add=args.ef_construction)
    t = time.perf_counter()
    index.add(np.arange(len(base), dtype=np.uint64), base, threads=threads)
    report.ingest_usearch_vps = len(base) / (time.perf_counter() - t)
    report.memory_usearch_bytes = int(index.memory_usage)
    for ef in efs:
        index.expansion_search = ef
        t = time.perf_counter()
        found = index.search(queries, 10, threads=threads).keys
        dt = time.perf_counter() - t
        report.points.append(Point("usearch", "batch", ef, recall(found, truth), len(queries) / dt))
        single = queries[: args.single]
        lat = []
        t = time.perf_counter()
        rows = []
        for q in single:
            s = time.perf_counter()
            rows.append(index.search(q, 10, threads=1).keys)
            lat.append(time.perf_counter() - s)
        dt = time.perf_counter() - t
        report.points.append(Point("usearch", "single-1thread", ef, recall(np.vstack(rows), truth[: len(single)]),
                                   len(single) / dt, *percentiles(lat)))


def bench_shoal(report: Report, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, efs: list[int],
                args: argparse.Namespace) -> None:
    """Shoal through the SDK against a local cluster started for this run."""
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(data=Path(tmp), shards=args.shards) as cluster, \
            shoal.Client(cluster.address, timeout=600) as client:
        client.create_collection("bench", dim=base.shape[1], metric=args.metric, precision=args.precision,
                                 m=args.m, ef_construction=args.ef_construction)
        t = time.perf_counter()
        client.upsert("bench", ids=np.arange(len(base)), vectors=base)
        report.ingest_shoal_vps = len(base) / (time.perf_counter() - t)
        report.memory_shoal_bytes = client.describe_collection("bench").memory_bytes
        for ef in efs:
            bsz = args.batch
            found, lat, wall = concurrent(
                lambda i, ef=ef, bsz=bsz: client.search("bench", queries[i * bsz:(i + 1) * bsz], k=10, ef=ef).ids,
                len(queries) // bsz, 1)
            report.points.append(Point("shoal", f"batch{bsz}", ef, recall(found, truth[: len(found)]),
                                       len(found) / wall, *percentiles(lat)))
            single = queries[: args.single]
            found, lat, wall = concurrent(
                lambda i, ef=ef, single=single: client.search("bench", single[i], k=10, ef=ef).ids,
                                          len(single), args.clients)
            report.points.append(Point("shoal", f"single-{args.clients}clients", ef,
                                       recall(found, truth[: len(found)]), len(found) / wall, *percentiles(lat)))


def ratio_at_recall(points: list[Point], mode: str, ceiling: list[Point], target: float) -> tuple[float, float]:
    """(Shoal qps, ratio to in-process batch qps) at the lowest ef reaching `target` recall."""
    mine = sorted((p for p in points if p.mode == mode and p.recall >= target), key=lambda p: p.ef)
    ref = sorted((p for p in ceiling if p.recall >= target), key=lambda p: p.ef)
    if not mine or not ref:
        return 0.0, 0.0
    return mine[0].qps, mine[0].qps / ref[0].qps


def print_report(report: Report, target: float) -> None:
    """The table a human reads."""
    print(f"\n{report.dataset}: {report.n:,} x {report.dim}, {report.queries} queries, {report.shards} shards, "
          f"{report.precision}")
    print(f"ingest (durable, through the SDK): {report.ingest_shoal_vps:,.0f} vectors/s; in-process usearch "
          f"add: {report.ingest_usearch_vps:,.0f}/s; ratio {report.ingest_shoal_vps / report.ingest_usearch_vps:.2f}")
    print(f"index memory: shoal {report.memory_shoal_bytes / report.n:.0f} B/vector, usearch "
          f"{report.memory_usearch_bytes / report.n:.0f} B/vector")
    print(f"{'system':<8} {'mode':<20} {'ef':>5} {'recall@10':>9} {'qps':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for p in report.points:
        print(f"{p.system:<8} {p.mode:<20} {p.ef:>5} {p.recall:>9.3f} {p.qps:>9,.0f} {p.p50_ms:>7.2f} "
              f"{p.p95_ms:>7.2f} {p.p99_ms:>7.2f}")
    ceiling = [p for p in report.points if p.system == "usearch" and p.mode == "batch"]
    for mode in sorted({p.mode for p in report.points if p.system == "shoal"}):
        qps, r = ratio_at_recall(report.points, mode, ceiling, target)
        print(f"shoal {mode} at recall >= {target}: {qps:,.0f} qps = {r:.2f}x in-process batched usearch")


def plot(report: Report, path: Path) -> None:
    """Recall-throughput curves, one per system and mode, like ann-benchmarks' plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for system, mode in sorted({(p.system, p.mode) for p in report.points}):
        pts = sorted((p for p in report.points if (p.system, p.mode) == (system, mode)), key=lambda p: p.ef)
        ax.plot([p.recall for p in pts], [p.qps for p in pts], marker="o", label=f"{system} {mode}")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second")
    ax.set_yscale("log")
    ax.set_title(f"{report.dataset} ({report.n:,} x {report.dim}, {report.precision}, {report.shards} shards)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    """Parse arguments, run both systems, report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a dataset folder (base.npy, queries.npy) or a .npy file of base vectors")
    p.add_argument("--n", type=int, default=100_000, help="use the first N base rows (default 100,000)")
    p.add_argument("--generate", type=int, default=50_000, help="without --data: generate N clustered vectors")
    p.add_argument("--dim", type=int, default=128, help="without --data: dimension of generated vectors")
    p.add_argument("--queries", type=int, default=1000, help="number of queries (default 1000)")
    p.add_argument("--single", type=int, default=500, help="queries sent one per call (default 500)")
    p.add_argument("--clients", type=int, default=16, help="concurrent single-query clients (default 16)")
    p.add_argument("--batch", type=int, default=100, help="queries per batched call (default 100)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--metric", default="cosine", choices=sorted(METRIC))
    p.add_argument("--precision", default="f32", choices=["f32", "bf16", "f16", "i8"])
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--ef", default="16,32,64,128", help="comma-separated ef sweep")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    args = p.parse_args()

    name, base, queries = load(args)
    efs = [int(e) for e in args.ef.split(",")]
    truth = ground_truth(base, queries, 10, args.metric)
    report = Report(name, len(base), base.shape[1], len(queries), args.shards, args.precision)
    bench_usearch(report, base, queries, truth, efs, args)
    bench_shoal(report, base, queries, truth, efs, args)
    print_report(report, args.target_recall)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    plot(report, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":
    main()
