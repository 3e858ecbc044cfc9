"""The benchmark's report: medians over rounds, ratios at equal recall, the issue's targets, the plot."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import qps_at_recall

K = 10
SINGLE_MODES = ["single-unary", "single-async", "single-stream", "single-sync", "single-procs"]


@dataclass
class Point:
    """One measurement: a system and mode at one ef, in one round."""

    precision: str
    system: str
    mode: str
    ef: int
    round: int
    recall: float
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_us_per_query: dict[str, float] = field(default_factory=dict)  # per process; empty when not measured
    cores: float = 0.0  # CPU seconds of all its processes per second: the share of the machine it got


@dataclass
class Ingest:
    """Loading one precision: vectors per second and index bytes per vector, both systems."""

    precision: str
    shoal_vps: float
    usearch_vps: float
    shoal_bytes_per_vector: float
    usearch_bytes_per_vector: float
    shoal_cpu_us_per_vector: float = 0.0  # all processes (0 when not measured)
    usearch_cpu_us_per_vector: float = 0.0


@dataclass
class HalfLoad:
    """Latency of a single-query mode at half the throughput it reached at the target recall."""

    precision: str
    mode: str
    ef: int
    offered_qps: float
    achieved_qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass
class OneClient:
    """One blocking client, one query per call, one call at a time: the latency a lone caller sees."""

    precision: str
    ef: int
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_us_per_query: dict[str, float] = field(default_factory=dict)


# The issue's targets for one query per call (issue 16) and for batches.
SINGLE_QPS = 2300.0  # q/s of the single-query clients together (pgvector's rate on this data)
SINGLE_RATIO = 0.25  # ... and over in-process usearch batched
BATCH_RATIO = 0.75  # batched search over in-process usearch batched
ONE_CLIENT_P50_MS, ONE_CLIENT_P99_MS = 1.0, 3.0


def curve(points: list[Point], precision: str, system: str, mode: str, rnd: int | None = None) -> list[Point]:
    """The points of one curve, by ef (one round, or all rounds)."""
    return sorted(
        (
            p
            for p in points
            if (p.precision, p.system, p.mode) == (precision, system, mode) and (rnd is None or p.round == rnd)
        ),
        key=lambda p: p.ef,
    )


def summarize(points: list[Point]) -> list[dict[str, Any]]:
    """Per precision, system, mode and ef: the median over rounds, and the range of queries/s."""
    keys = sorted({(p.precision, p.system, p.mode, p.ef) for p in points})
    out = []
    for precision, system, mode, ef in keys:
        same = [p for p in points if (p.precision, p.system, p.mode, p.ef) == (precision, system, mode, ef)]
        cpu_names = sorted({n for p in same for n in p.cpu_us_per_query})
        out.append(
            {
                "precision": precision,
                "system": system,
                "mode": mode,
                "ef": ef,
                "recall": statistics.median(p.recall for p in same),
                "qps": statistics.median(p.qps for p in same),
                "qps_min": min(p.qps for p in same),
                "qps_max": max(p.qps for p in same),
                **{f"{q}_ms": statistics.median(getattr(p, f"{q}_ms") for p in same) for q in ("p50", "p95", "p99")},
                "cpu_us_per_query": {
                    n: statistics.median(p.cpu_us_per_query.get(n, 0.0) for p in same) for n in cpu_names
                },
                "cores": statistics.median(p.cores for p in same),
            }
        )
    return out


def per_cpu(points: list[Point]) -> list[tuple[float, float]]:
    """A (recall, queries per CPU-second of all the system's processes) curve; empty without CPU figures."""
    return [(p.recall, 1e6 / sum(p.cpu_us_per_query.values())) for p in points if p.cpu_us_per_query]


def ratios(points: list[Point], target: float) -> list[dict[str, Any]]:
    """Each mode's queries/s at the target recall over in-process `all` at that recall, per round."""
    out = []
    for precision in sorted({p.precision for p in points}):
        rounds = sorted({p.round for p in points if p.precision == precision})
        modes = sorted({(p.system, p.mode) for p in points if p.precision == precision})
        for system, mode in modes:
            per_round, per_cpu_round = [], []
            for rnd in rounds:
                ref_curve, my_curve = (
                    curve(points, precision, "usearch", "all", rnd),
                    curve(points, precision, system, mode, rnd),
                )
                ref = qps_at_recall([(p.recall, p.qps) for p in ref_curve], target)
                mine = qps_at_recall([(p.recall, p.qps) for p in my_curve], target)
                if ref and mine:
                    per_round.append((mine, mine / ref, statistics.mean(p.cores for p in ref_curve)))
                ref, mine = qps_at_recall(per_cpu(ref_curve), target), qps_at_recall(per_cpu(my_curve), target)
                if ref and mine:
                    per_cpu_round.append(mine / ref)
            if per_round:
                out.append(
                    {
                        "precision": precision,
                        "system": system,
                        "mode": mode,
                        "target_recall": target,
                        "qps": statistics.median(q for q, _, _ in per_round),
                        "ratio": statistics.median(r for _, r, _ in per_round),
                        "ratio_min": min(r for _, r, _ in per_round),
                        "ratio_max": max(r for _, r, _ in per_round),
                        # Per round, with the cores in-process usearch got: on a busy machine it gets fewer
                        # than Shoal's several processes do, which flatters Shoal.
                        "rounds": [{"ratio": r, "in_process_cores": c} for _, r, c in per_round],
                        # Queries per CPU-second over in-process's: what the ratio would be if both had
                        # the machine to themselves and kept every core busy.
                        "cpu_ratio": statistics.median(per_cpu_round) if per_cpu_round else None,
                    }
                )
    return out


def print_report(
    args: argparse.Namespace,
    name: str,
    n: int,
    dim: int,
    queries: int,
    cores: int,
    ingests: list[Ingest],
    half_loads: list[HalfLoad],
    summary: list[dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    one_clients: list[OneClient] | None = None,
) -> None:
    """The tables a human reads, and the issue's targets met or missed."""
    t = args.target_recall
    print(
        f"\n{name}: {n:,} x {dim}, {queries} queries, {args.shards if not args.address else '?'} "
        f"shards, {args.metric}, M={args.m}, ef_construction={args.ef_construction}, {cores} cores, "
        f"batch {args.batch}, {args.clients} clients, {args.repeat} rounds (median [min-max])"
    )
    print(
        f"\n{'precision':<9} {'shoal vec/s':>11} {'usearch vec/s':>13} {'ratio':>6} {'shoal B/vec':>11} "
        f"{'usearch B/vec':>13} {'shoal cpu us/vec':>16} {'usearch cpu us/vec':>18}"
    )
    for g in ingests:
        print(
            f"{g.precision:<9} {g.shoal_vps:>11,.0f} {g.usearch_vps:>13,.0f} {g.shoal_vps / g.usearch_vps:>6.2f} "
            f"{g.shoal_bytes_per_vector:>11,.0f} {g.usearch_bytes_per_vector:>13,.0f} "
            f"{g.shoal_cpu_us_per_vector:>16,.0f} {g.usearch_cpu_us_per_vector:>18,.0f}"
        )
    print(
        f"\n{'precision':<9} {'system':<8} {'mode':<14} {'ef':>4} {'recall':>6} {'q/s':>8} {'range':>15} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'cores':>5}  cpu us/query"
    )
    for s in summary:
        cpu = " ".join(f"{k}={v:.0f}" for k, v in s["cpu_us_per_query"].items())
        print(
            f"{s['precision']:<9} {s['system']:<8} {s['mode']:<14} {s['ef']:>4} {s['recall']:>6.3f} "
            f"{s['qps']:>8,.0f} {s['qps_min']:>7,.0f}-{s['qps_max']:<7,.0f} {s['p50_ms']:>7.2f} "
            f"{s['p95_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['cores']:>5.2f}  {cpu}"
        )
    print(
        f"\nat recall@{K} >= {t}: queries/s, the ratio to in-process usearch `all` (one call, all cores) "
        "[min-max over rounds], and the same ratio per CPU-second"
    )
    for r in ratio_rows:
        per_cpu_text = f"{r['cpu_ratio']:.2f}x" if r["cpu_ratio"] else "-"
        rounds = ", ".join(f"{x['ratio']:.2f}x ({x['in_process_cores']:.1f} cores)" for x in r["rounds"])
        print(
            f"{r['precision']:<9} {r['system']:<8} {r['mode']:<14} {r['qps']:>8,.0f} q/s  {r['ratio']:.2f}x "
            f"[{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]  per CPU-second {per_cpu_text}  rounds: {rounds}"
        )
    starved = [
        x["in_process_cores"]
        for r in ratio_rows
        if r["system"] == "usearch" and r["mode"] == "all"
        for x in r["rounds"]
        if x["in_process_cores"] < 0.9 * cores
    ]
    if starved:
        print(
            f"note: in some rounds in-process usearch got only {min(starved):.1f} of {cores} cores (others were "
            "using the machine); Shoal's processes take a larger share then, so trust the rounds where it got "
            "them all, or the ratio per CPU-second"
        )
    for h in half_loads:
        print(
            f"half load: {h.precision} {h.mode} ef={h.ef}: offered {h.offered_qps:,.0f} q/s, got "
            f"{h.achieved_qps:,.0f}; p50 {h.p50_ms:.2f} ms, p95 {h.p95_ms:.2f} ms, p99 {h.p99_ms:.2f} ms"
        )
    for o in one_clients or []:
        cpu = " ".join(f"{k}={v:.0f}" for k, v in o.cpu_us_per_query.items())
        print(
            f"one client: {o.precision} ef={o.ef}: {o.qps:,.0f} q/s; p50 {o.p50_ms:.2f} ms, p95 {o.p95_ms:.2f} ms, "
            f"p99 {o.p99_ms:.2f} ms  {('cpu us/q ' + cpu) if cpu else ''}"
        )
    print_targets(ingests, half_loads, ratio_rows, summary, one_clients or [], args.clients)


def print_targets(
    ingests: list[Ingest],
    half_loads: list[HalfLoad],
    ratio_rows: list[dict[str, Any]],
    summary: list[dict[str, Any]] | None = None,
    one_clients: list[OneClient] | None = None,
    clients: int = 0,
) -> None:
    """The issue's targets, each met or missed and by how much, with each process's CPU per query."""

    def verdict(value: float, limit: float, above: bool = True) -> str:
        ok = value >= limit if above else value <= limit
        return f"{value:.2f} ({'met' if ok else 'MISSED'}: {'>=' if above else '<='} {limit})"

    def calmest(r: dict[str, Any]) -> str:
        best = max(r["rounds"], key=lambda x: x["in_process_cores"])  # where the machine was least busy
        return (
            f"{verdict(best['ratio'], BATCH_RATIO if r['mode'].startswith('batch') else SINGLE_RATIO)} "
            f"[in-process on {best['in_process_cores']:.1f} cores; median of rounds {r['ratio']:.2f}]"
        )

    def cpu_at_target(r: dict[str, Any]) -> str:
        same = sorted(
            (
                s
                for s in summary or []
                if (s["precision"], s["system"], s["mode"]) == (r["precision"], "shoal", r["mode"])
            ),
            key=lambda s: s["ef"],
        )
        row = next((s for s in same if s["recall"] >= r["target_recall"]), same[-1] if same else None)
        cpu = row["cpu_us_per_query"] if row else {}
        return f"  cpu us/q (ef={row['ef']}) " + " ".join(f"{k}={v:.0f}" for k, v in cpu.items()) if cpu else ""

    print("\ntargets (throughput ratios from the round in which in-process usearch got the most cores):")
    for r in ratio_rows:
        if r["system"] == "shoal" and r["mode"].startswith("batch"):
            print(f"  {r['precision']} {r['mode']} / in-process: {calmest(r)}{cpu_at_target(r)}")
        if r["system"] == "shoal" and r["mode"] in SINGLE_MODES:
            print(f"  {r['precision']} {r['mode']} / in-process batched: {calmest(r)}")
            print(
                f"  {r['precision']} {r['mode']} q/s with {clients} clients: {verdict(r['qps'], SINGLE_QPS)}"
                f"{cpu_at_target(r)}"
            )
    for o in one_clients or []:
        print(f"  {o.precision} one client p50, ms: {verdict(o.p50_ms, ONE_CLIENT_P50_MS, above=False)}")
        print(f"  {o.precision} one client p99, ms: {verdict(o.p99_ms, ONE_CLIENT_P99_MS, above=False)}")
    for h in half_loads:
        print(f"  {h.precision} {h.mode} p99 at half load, ms: {verdict(h.p99_ms, 20.0, above=False)}")
    for g in ingests:
        if g.shoal_vps:
            print(f"  {g.precision} ingest / in-process add: {verdict(g.shoal_vps / g.usearch_vps, 0.5)}")
    f32 = next((g for g in ingests if g.precision == "f32"), None)
    for g in ingests:
        if f32 and g.precision != "f32":
            limit = 0.35 if g.precision == "i8" else 0.55
            print(
                f"  {g.precision} memory per vector / f32: "
                f"{verdict(g.shoal_bytes_per_vector / f32.shoal_bytes_per_vector, limit, above=False)}"
            )


def require_plotting() -> None:
    """Exit with one line before any work when matplotlib (the `dev` extra) is missing: the plot comes last."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("bench.py draws its plot with matplotlib, which is missing: pip install -e '.[dev]'")


def plot(name: str, n: int, summary: list[dict[str, Any]], target: float, path: Path) -> None:
    """Recall-throughput curves (median over rounds), one panel per precision, like ann-benchmarks' plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = sorted({s["precision"] for s in summary})
    fig, axes = plt.subplots(1, len(precisions), figsize=(7 * len(precisions), 5), squeeze=False)
    for ax, precision in zip(axes[0], precisions, strict=True):
        for system, mode in sorted({(s["system"], s["mode"]) for s in summary if s["precision"] == precision}):
            pts = sorted(
                (s for s in summary if (s["precision"], s["system"], s["mode"]) == (precision, system, mode)),
                key=lambda s: s["ef"],
            )
            ax.plot(
                [s["recall"] for s in pts],
                [s["qps"] for s in pts],
                marker="o",
                linestyle="--" if system == "usearch" else "-",
                label=f"{system} {mode}",
            )
        ax.axvline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(f"recall@{K}")
        ax.set_ylabel("queries per second")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({n:,} vectors, {precision})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
