"""`shoal up`'s supervisor: says when a process died, restarts it after a backoff that doubles while it fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal import _supervisor
from shoal._errors import Unavailable
from shoal._local import Process
from shoal._supervisor import Supervisor


class _Popen:
    def __init__(self, code: int | None) -> None:
        self.code = code
        self.stdout = None

    def poll(self) -> int | None:
        return self.code

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code

    def kill(self) -> None:
        pass


@dataclass
class _Cluster:
    """Just what the supervisor uses of a LocalCluster; restarts fail while `failing` is positive."""

    shard_procs: list[Process]
    failing: int = 0
    restarts: list[float] = field(default_factory=list)
    coordinator: Process | None = None
    etcd: Any = None
    now: float = 0.0

    def restart(self, proc: Process) -> None:
        self.restarts.append(self.now)
        if self.failing:
            self.failing -= 1
            raise Unavailable("shard-0 did not start (exit code 1): boom")
        proc.popen = _Popen(None)  # type: ignore[assignment]


def test_a_dead_shard_is_reported_and_restarted_with_a_doubling_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "shard-0.log"
    log.write_text("starting\nOSError: disk on fire\n")
    proc = Process("shard-0", [], log, popen=_Popen(3), address="127.0.0.1:7100")  # type: ignore[arg-type]
    cluster = _Cluster([proc], failing=2)
    monkeypatch.setattr(_supervisor.time, "monotonic", lambda: cluster.now)
    said: list[str] = []
    supervisor = Supervisor(cluster, said.append)  # type: ignore[arg-type]
    for step in range(100):  # 10 s in steps of 0.1 s
        cluster.now = step / 10
        supervisor.tick()
    assert said[0] == f"shard-0 exited with code 3: OSError: disk on fire (see {log}); restarting it in 0.5s"
    # First try after 0.5 s, then 1 s and 2 s later as the tries fail; the third succeeds.
    assert cluster.restarts == pytest.approx([0.5, 1.5, 3.5])
    assert said[1:] == [
        "shard-0 did not restart: shard-0 did not start (exit code 1): boom; trying again in 1.0s",
        "shard-0 did not restart: shard-0 did not start (exit code 1): boom; trying again in 2.0s",
        "shard-0 restarted and serving at 127.0.0.1:7100",
    ]


def test_a_process_killed_by_a_signal_is_named_so() -> None:
    proc = Process("coordinator", [], Path("/nonexistent"), popen=_Popen(-9))  # type: ignore[arg-type]
    said: list[str] = []
    Supervisor(_Cluster([proc]), said.append).tick()  # type: ignore[arg-type]
    assert said == ["coordinator was killed by SIGKILL; restarting it in 0.5s"]
