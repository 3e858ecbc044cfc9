"""The benchmark's measuring tools exactly, and the benchmark and the locust file end to end on tiny data."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shoal
from loadtest.loadgen import Run, drive, qps_at_recall, recall
from shoal._local import LocalCluster
from tests.conftest import clustered

pytestmark = pytest.mark.slow  # runs the benchmark and locust end to end

LOADTEST = Path(__file__).resolve().parent.parent / "loadtest"


def test_recall_counts_true_neighbours_among_the_first_k() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, 1, 2], [7, 8, 9, 4]], dtype=np.uint64)
    assert recall(found, truth) == pytest.approx((2 / 3 + 0) / 2)


def test_qps_at_recall_interpolates_in_log_space_and_never_extrapolates_up() -> None:
    curve = [(0.9, 1000.0), (0.99, 10.0), (0.95, 100.0)]
    assert qps_at_recall(curve, 0.95) == pytest.approx(100.0)
    assert qps_at_recall(curve, 0.925) == pytest.approx(np.sqrt(1000.0 * 100.0))
    assert qps_at_recall(curve, 0.5) == 1000.0  # below the curve: its lowest point, an underestimate
    assert qps_at_recall(curve, 0.999) is None
    assert qps_at_recall([], 0.9) is None


def test_drive_asks_every_item_once_first_then_keeps_going() -> None:
    sessions = []

    async def session():  # type: ignore[no-untyped-def]
        async def ask(i: int) -> np.ndarray:
            await asyncio.sleep(0)
            return np.array([[i]])

        async def close() -> None:
            sessions.append("closed")

        return ask, close

    run: Run = asyncio.run(drive(session, items=10, clients=3, seconds=0.0))
    assert [int(a[0, 0]) for a in run.answers if a is not None] == list(range(10))
    assert run.items == len(run.latencies) >= 10 and sessions == ["closed"] * 3
    paced = asyncio.run(drive(session, items=5, clients=2, seconds=0.05, rate=200.0))
    assert 5 <= paced.items <= 12  # due every 5 ms for 50 ms, whichever client is free


def test_bench_runs_against_a_cluster_and_writes_its_report(cluster: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(LOADTEST / "bench.py"),
        "--address",
        cluster.address,
        "--generate",
        "1500",
        "--dim",
        "8",
        "--queries",
        "60",
        "--batch",
        "20",
        "--ef",
        "8,64",
        "--seconds",
        "0.1",
        "--repeat",
        "1",
        "--modes",
        "batch,single-unary,single-async,single-stream,single-procs",
        "--clients",
        "3",
        "--target-recall",
        "0.5",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").stat().st_size > 0
    modes = {(s["system"], s["mode"]) for s in report["summary"]}
    assert modes == {
        ("usearch", "all"),
        ("usearch", "batch"),
        ("usearch", "single"),
        ("shoal", "batch"),
        ("shoal", "single-unary"),
        ("shoal", "single-async"),
        ("shoal", "single-stream"),
        ("shoal", "single-procs"),
    }
    assert all(s["recall"] > 0.9 for s in report["summary"] if s["ef"] == 64)
    assert {r["mode"] for r in report["at_target_recall"]} >= {"batch", "single-stream"}
    assert [h["mode"] for h in report["half_load"]] == ["single-unary", "single-async", "single-stream"]
    one = report["one_client"]
    assert len(one) == 1 and 0 < one[0]["p50_ms"] <= one[0]["p99_ms"]
    assert "\ntargets (" in done.stdout and "bench_f32" not in _collections(cluster)
    assert "single-stream q/s with 3 clients:" in done.stdout and "one client p99, ms:" in done.stdout


def _collections(cluster: LocalCluster) -> list[str]:
    with shoal.Client(cluster.address) as c:
        return c.list_collections()


def test_locust_runs_the_configured_task_mix(client: shoal.Client, name: str, tmp_path: Path) -> None:
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists():
        pytest.skip("locust is not installed (pip install -e '.[dev]')")
    client.create_collection(name, dim=8)  # else the locust file creates it (tested by hand: it takes a while)
    client.upsert(name, ids=np.arange(300), vectors=clustered(300, 8), payloads=[{"group": i % 10} for i in range(300)])
    cmd = [
        str(locust),
        "-f",
        str(LOADTEST / "locustfile.py"),
        "--headless",
        "-u",
        "3",
        "-r",
        "3",
        "-t",
        "3s",
        "--host",
        client.address,
        "--collection",
        name,
        "--dim",
        "8",
        "--preload",
        "300",
        "--batch",
        "10",
        "--tasks",
        "search=3,search_batch=1,filtered_search=1,upsert=1",
        "--csv",
        str(tmp_path / "locust"),
        "--only-summary",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "locust_stats.csv") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    for task in ("search", "search_batch10", "filtered_search", "upsert10"):
        assert task in rows, done.stderr[-3000:]
        assert int(rows[task]["Request Count"]) > 0 and int(rows[task]["Failure Count"]) == 0


def test_bench_without_matplotlib_stops_before_any_work_with_one_line(tmp_path: Path) -> None:
    # matplotlib hidden (as without the dev extra): bench.py must say so before it loads or runs anything.
    script = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['bench.py', '--generate', '1000', '--out', {str(tmp_path / 'out')!r}]; "
        f"runpy.run_path({str(LOADTEST / 'bench.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=LOADTEST)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "bench.py draws its plot with matplotlib, which is missing: pip install -e '.[dev]'"
    ]
    assert result.stdout == "" and not (tmp_path / "out").exists()
