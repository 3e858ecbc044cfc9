"""Keeps a local cluster's processes alive: notices one that exited, says so, and restarts it with backoff."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal._errors import ShoalError
from shoal._local import LocalCluster, Process, last_line

FIRST_DELAY = 0.5  # seconds before the first restart of a process that exited
MAX_DELAY = 30.0  # the backoff doubles up to this
STABLE_AFTER = 60.0  # a process up this long has its backoff reset

Say = Callable[[str], None]


@dataclass
class Backoff:
    """One process's restart schedule (also the coordinator workers', coordinator/workers.py)."""

    failures: int = 0
    restart_at: float = 0.0  # 0: running, not waiting for a restart
    started_at: float = 0.0

    def delay(self) -> float:
        return float(min(MAX_DELAY, FIRST_DELAY * 2**self.failures))


def _why(proc: Process) -> str:
    """How a process that is no longer running ended; reaps it, so it does not stay defunct."""
    code = proc.kill()
    if code is not None and code < 0:  # killed by a signal: its log says nothing about it
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}: {last_line(proc.log_path)}"


class Supervisor:
    """Call `tick()` every fraction of a second: it restarts what died (etcd first, then shards, coordinator)."""

    def __init__(self, cluster: LocalCluster, say: Say) -> None:
        self.cluster = cluster
        self.say = say
        self._backoff: dict[str, Backoff] = {}

    def _processes(self) -> list[Process]:
        coordinator = [self.cluster.coordinator] if self.cluster.coordinator is not None else []
        return [*self.cluster.shard_procs, *coordinator]

    def tick(self) -> None:
        """Check every process once; restart those whose backoff has passed."""
        now = time.monotonic()
        etcd = self.cluster.etcd
        if etcd is not None and not etcd.running:
            self._handle("etcd", None, now, etcd.start)
            if not etcd.running:
                return  # the shards and the coordinator need it
        for proc in self._processes():
            if proc.popen is not None and proc.popen.poll() is None:
                state = self._backoff.get(proc.role)
                if state and state.failures and now - state.started_at > STABLE_AFTER:
                    state.failures = 0
                continue
            self._handle(proc.role, proc, now, functools.partial(self.cluster.restart, proc))

    def _handle(self, role: str, proc: Process | None, now: float, restart: Callable[[], None]) -> None:
        state = self._backoff.setdefault(role, Backoff())
        if not state.restart_at:
            why = _why(proc) if proc is not None else "is down"
            state.restart_at = now + state.delay()
            self.say(f"{role} {why}; restarting it in {state.delay():.1f}s")
            return
        if now < state.restart_at:
            return
        try:
            restart()
        except ShoalError as exc:
            state.failures += 1
            state.restart_at = time.monotonic() + state.delay()
            self.say(f"{role} did not restart: {exc.message}; trying again in {state.delay():.1f}s")
            return
        state.failures += 1
        state.restart_at = 0.0
        state.started_at = time.monotonic()
        self.say(f"{role} restarted and serving" + (f" at {proc.address}" if proc is not None else ""))
