"""`shoal coordinator --workers N`: N coordinator processes answer on one port, and one that dies is restarted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import shoal
from shoal._local import Process
from shoal.coordinator.workers import worker_argv
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

START_SECONDS = 60.0
RESTART_SECONDS = 30.0


def test_each_worker_gets_the_shared_address_and_its_own_ports() -> None:
    argv = ["--log-level", "DEBUG", "coordinator", "--shards", "a:1", "--listen=0.0.0.0:0", "--workers", "3"]
    argv += ["--metrics", "127.0.0.1:9100", "--probe-listen=127.0.0.1:0"]
    assert worker_argv(argv, 2, "0.0.0.0:7070") == [
        "--log-level",
        "DEBUG",
        "coordinator",
        "--shards",
        "a:1",
        "--listen",
        "0.0.0.0:7070",
        "--metrics",
        "127.0.0.1:9102",
        "--probe-listen",
        "127.0.0.1:0",
        "--reuse-port",
    ]


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _metrics_addresses(address: str, connections: int) -> set[str]:
    """The metrics address of the worker behind each of `connections` fresh connections."""
    seen = set()
    for _ in range(connections):
        # A pool of its own: a fresh TCP connection each time, which the kernel hands to any worker.
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            status = shoal_pb2_grpc.ShoalStub(channel).GetStatus(pb.StatusRequest(), timeout=10)
        seen.add(next(p.metrics_address for p in status.processes if p.role == "coordinator"))
    return seen


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Process]:
    shard = Process("shard", ["shard", "--data", str(tmp_path / "s"), "--listen", "127.0.0.1:0"], tmp_path / "s.log")
    shard.start(START_SECONDS)
    args = ["coordinator", "--shards", shard.address, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    parent = Process("coordinator", [*args, "--workers", "2"], tmp_path / "c.log")
    try:
        parent.start(START_SECONDS)
        yield parent
    finally:
        parent.stop()
        shard.stop()


@pytest.mark.slow
def test_two_workers_both_answer_and_a_killed_one_is_restarted(workers: Process) -> None:
    assert workers.popen is not None
    pids = _children(workers.popen.pid)
    assert len(pids) == 2
    with shoal.Client(workers.address) as client:
        client.create_collection("w", dim=4)
        vectors = np.eye(4, dtype=np.float32) + 0.1
        client.upsert("w", ids=np.arange(4), vectors=vectors)
    for _ in range(8):  # every worker searches alike: each connection may land on another one
        with shoal.Client(workers.address, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            assert client.search("w", vectors[2], k=1).ids[0][0] == 2
    before = _metrics_addresses(workers.address, 40)
    assert len(before) == 2, before

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_SECONDS
    while " restarted (pid " not in workers.log_path.read_text():
        assert time.monotonic() < deadline, f"no worker replaced {victim}: {_children(workers.popen.pid)}"
        time.sleep(0.1)
    now = _children(workers.popen.pid)
    assert len(now) == 2 and victim not in now, now
    after = _metrics_addresses(workers.address, 40)
    assert len(after) == 2 and after != before, (before, after)  # the new worker serves metrics on a new port


@pytest.mark.slow
def test_a_plain_coordinator_still_cannot_share_the_workers_port(workers: Process, tmp_path: Path) -> None:
    # --workers opts in to SO_REUSEPORT; without it a second process must fail to bind, as before.
    args = ["coordinator", "--shards", "127.0.0.1:1", "--listen", workers.address]
    lone = Process("coordinator", args, tmp_path / "lone.log")
    with pytest.raises(shoal.ShoalError):
        lone.start(START_SECONDS)
    assert "in use" in lone.log_path.read_text()
