"""The `shoal` command: `up` starts a working local cluster, `status` describes it, SIGTERM stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shoal

pytestmark = pytest.mark.slow  # starts and stops clusters through the CLI


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=120)


def test_up_status_and_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = subprocess.Popen(
        [sys.executable, "-m", "shoal", "up", "--shards", "2", "--port", "0", "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stdout is not None
        line = up.stdout.readline()
        match = re.search(r"Shoal is ready at (\S+) \(2 shards", line)
        assert match, line + (up.stderr.read() if up.stderr else "")
        address = match.group(1)
        with shoal.Client(address) as client:
            client.create_collection("docs", dim=3)
            client.upsert("docs", ids=np.arange(10), vectors=np.random.default_rng(0).random((10, 3)))
        status = _shoal("status", "--address", address)
        assert status.returncode == 0, status.stderr
        assert f"coordinator {address}: SERVING" in status.stdout
        rows = [r for r in status.stdout.splitlines() if "docs (" in r]
        assert len(rows) == 2 and all("SERVING" in r for r in rows)
        assert sum(int(re.search(r"docs \((\d+)\)", r).group(1)) for r in rows) == 10  # type: ignore[union-attr]
        children = [int(p) for p in re.findall(r"\[(\d+)\]", (data / "logs" / "shard-0.log").read_text())[:1]]
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for stream in (up.stdout, up.stderr):
            if stream:
                stream.close()


def test_up_refuses_another_shard_count(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text('{"shards": 3}\n')
    result = _shoal("up", "--shards", "2", "--port", "0", "--data", str(tmp_path))
    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stderr and "--shards 3" in result.stderr


def test_status_of_nothing_says_unreachable_and_fails_only_with_check() -> None:
    result = _shoal("status", "--address", "127.0.0.1:1")
    assert result.returncode == 0 and "coordinator 127.0.0.1:1: UNREACHABLE (UNAVAILABLE" in result.stdout
    checked = _shoal("status", "--check", "--address", "127.0.0.1:1")
    assert checked.returncode == 1 and "UNAVAILABLE" in checked.stdout


def test_version_and_cores_beyond_the_machine_get_one_clear_line(tmp_path: Path) -> None:
    version = _shoal("--version")
    assert version.returncode == 0 and re.fullmatch(r"shoal \d+\.\d+\.\d+\S*\n", version.stdout), version
    beyond = max(os.sched_getaffinity(0)) + 1
    run = _shoal("shard", "--data", str(tmp_path / "d"), "--cores", f"0,{beyond}")
    assert run.returncode != 0
    assert f"core {beyond} is not available here" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "d").exists()


def test_up_without_shards_keeps_the_data_folders_count(tmp_path: Path) -> None:
    from shoal._config import DEFAULT_SHARDS
    from shoal._local import layout_shards

    assert layout_shards(tmp_path) is None and DEFAULT_SHARDS == 1  # a new folder: one shard on all cores
    (tmp_path / "cluster.json").write_text('{"shards": 3}\n')
    assert layout_shards(tmp_path) == 3
