"""The `shoal` command: `up` starts a working local cluster, `status` describes it, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
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
        (logs,) = (data / "logs").iterdir()  # this start's log folder
        children = [int(p) for p in re.findall(r"\[(\d+)\]", (logs / "shard-0.log").read_text())[:1]]
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


class Up:
    """A running `shoal up` with its address; stops it (SIGTERM) on exit and keeps what it printed on stderr."""

    def __init__(self, data: Path, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "shoal", "up", "--port", "0", "--data", str(data), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        match = re.search(r"Shoal is ready at (\S+) .*logs in (\S+)\)", line)
        if not match:
            self.popen.kill()
            raise AssertionError(line + self.popen.communicate()[1])
        self.address, self.logs = match.group(1), Path(match.group(2))
        self.stderr = ""

    def child(self, role: str) -> int | None:
        """The pid of the child process running `role` (shard-0: its data folder's name), if there is one."""
        pid = self.popen.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(role.encode()) for arg in cmdline) or role.encode() in cmdline:
                return int(child)
        return None

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *exc: object) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.popen.communicate(timeout=60)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed command, checked to be its only line and free of a traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_second_up_on_a_folder_in_use_fails_at_once_naming_the_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Up(data, "--shards", "1") as first:
        before = (first.logs / "shard-0.log").read_text()
        started = time.monotonic()
        second = _shoal("up", "--shards", "1", "--port", "0", "--data", str(data))
        assert time.monotonic() - started < 5
        line = _one_clear_line(second)
        assert "in use by another `shoal up`" in line and str(data / "shoal.lock") in line
        assert f"pid {first.popen.pid}" in line
        assert [p.name for p in (data / "logs").iterdir()] == [first.logs.name]  # the second made no log folder
        assert (first.logs / "shard-0.log").read_text() == before  # nor wrote into the running cluster's logs
    with Up(data, "--shards", "1") as again:  # once stopped, the folder is free; this start logs apart
        assert again.logs != first.logs and again.logs.parent == first.logs.parent
        assert (again.logs / "shard-0.log").exists()


def test_up_restarts_a_killed_shard_which_serves_again_within_10s(tmp_path: Path) -> None:
    from shoal._local import wait_serving

    with Up(tmp_path / "data", "--shards", "2", "--no-metrics") as up:
        with shoal.Client(up.address) as client:
            client.create_collection("docs", dim=3)
            client.upsert("docs", ids=np.arange(10), vectors=np.random.default_rng(0).random((10, 3)))
        status = json.loads(_shoal("status", "--json", "--address", up.address).stdout)
        shard = next(p["address"] for p in status["processes"] if p["role"] == "shard")
        pid = up.child("shard-0")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while up.child("shard-0") in (pid, None) and time.monotonic() - killed < 10:
            time.sleep(0.1)
        assert up.child("shard-0") not in (pid, None)
        wait_serving(shard, max(0.1, 10 - (time.monotonic() - killed)))
        assert time.monotonic() - killed < 10
        assert not Path(f"/proc/{pid}").exists()  # reaped, not left defunct
        with shoal.Client(up.address) as client:
            assert client.count("docs") == 10
        own = _shoal("status", "--address", shard)  # a shard's address: that shard's status
        assert own.returncode == 0 and "UNIMPLEMENTED" not in own.stdout, own
        assert own.stdout.startswith(f"shard {shard}") and "SERVING" in own.stdout and "docs (" in own.stdout
    assert "shard-0 was killed by SIGKILL" in up.stderr and "shard-0 restarted and serving" in up.stderr, up.stderr


def test_a_port_in_use_is_one_line_and_leaves_no_cluster_json(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _shoal("up", "--shards", "1", "--port", str(port), "--data", str(tmp_path / "d"))
        listen = f"127.0.0.1:{port}"
        alone = _shoal("coordinator", "--shards", "127.0.0.1:1", "--listen", listen)
        assert _one_clear_line(alone) == f"cannot listen on {listen!r}: the port is in use"
    line = _one_clear_line(result)
    assert f"127.0.0.1:{port} is in use" in line
    assert not (tmp_path / "d" / "cluster.json").exists()


def test_data_that_is_a_file_or_under_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for command in ("shard", "up"):
        line = _one_clear_line(_shoal(command, "--data", str(afile)))
        assert f"--data {afile} is a file, not a folder" in line
        missing = tmp_path / "no" / "such" / "data"
        line = _one_clear_line(_shoal(command, "--data", str(missing)))
        assert f"parent folder {missing.parent} does not exist" in line
        assert not (tmp_path / "no").exists()


def test_any_error_is_one_line_and_its_traceback_only_with_verbose(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-ca.pem")
    line = _one_clear_line(_shoal("status", "--address", "127.0.0.1:1", "--tls-ca", missing))
    assert line.startswith("shoal: FileNotFoundError") and missing in line
    verbose = _shoal("-v", "status", "--address", "127.0.0.1:1", "--tls-ca", missing)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == line


def test_up_without_shards_keeps_the_data_folders_count(tmp_path: Path) -> None:
    from shoal._config import DEFAULT_SHARDS
    from shoal._local import layout_shards

    assert layout_shards(tmp_path) is None and DEFAULT_SHARDS == 1  # a new folder: one shard on all cores
    (tmp_path / "cluster.json").write_text('{"shards": 3}\n')
    assert layout_shards(tmp_path) == 3
