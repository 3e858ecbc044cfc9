"""`shoal coordinator --workers N`: N coordinator processes on one port (SO_REUSEPORT), kept alive by a parent.

A coordinator is one asyncio process, so it uses one core. Coordinators hold no state, so N of them can
share a port: the kernel spreads new connections over the workers' listening sockets. The parent only
starts the workers, restarts one that exits (with the local supervisor's backoff) and stops them all on
SIGTERM or SIGINT. A client's connection stays with one worker: many clients (or a client with several
channels) spread over the workers, one channel does not.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from shoal._local import stop_process
from shoal._ports import port_problem
from shoal._supervisor import STABLE_AFTER, Backoff

log = logging.getLogger("shoal.coordinator")

START_SECONDS = 60.0  # a worker that has not printed its listening line by then failed to start
STOP_SECONDS = 10.0  # a worker still running this long after SIGTERM is killed (its own grace is 5 s)
TICK_SECONDS = 0.2  # how often the parent looks at its workers
# Options whose port is per worker: worker i serves them on the given port + i (a port 0 stays any free port).
PER_WORKER_PORTS = ("--metrics", "--probe-listen")
PR_SET_PDEATHSIG = 1  # prctl(2)


def _with_port(listen: str, offset: int) -> str:
    host, _, port = listen.rpartition(":")
    return listen if not port.isdigit() or int(port) == 0 else f"{host}:{int(port) + offset}"


def worker_argv(argv: list[str], index: int, listen: str) -> list[str]:
    """Worker `index`'s `shoal` arguments: no --workers, the resolved --listen, its own ports, --reuse-port."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        name, eq, value = item.partition("=")
        if name not in ("--workers", "--listen", *PER_WORKER_PORTS):
            out.append(item)
            continue
        if not eq:
            value = next(items, "")
        if name == "--listen":
            out += ["--listen", listen]
        elif name in PER_WORKER_PORTS:
            out += [name, _with_port(value, index)]
    return [*out, "--reuse-port"]


def reserve(listen: str) -> tuple[socket.socket, str]:
    """A socket holding the port for the workers (bound with SO_REUSEPORT, never listening) and HOST:PORT."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"cannot listen on {listen!r}: give HOST:PORT of a free port on this machine")
    if problem := port_problem(host, int(port)):
        raise SystemExit(f"cannot listen on {listen!r}: the port is {problem}")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    held = socket.socket(family, socket.SOCK_STREAM)
    # Only sockets that listen receive connections: this one keeps the port for the workers (a port 0 is
    # chosen here, once, for all of them) and never takes a connection away from them.
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((bare, int(port)))
    except OSError as exc:
        held.close()
        raise SystemExit(f"cannot listen on {listen!r}: {exc.strerror}") from None
    return held, f"{host}:{held.getsockname()[1]}"


def _die_with_parent() -> None:
    """In a new worker: SIGTERM when the parent dies, even by SIGKILL, so no orphan keeps serving the port."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Worker:
    """One worker process and its restart schedule."""

    index: int
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    backoff: Backoff = field(default_factory=Backoff)
    metrics_address: str = ""

    def start(self) -> None:
        """Start the worker and wait for its listening line; SystemExit when it does not come."""
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "shoal", *self.argv],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the parent runs no threads
        )
        assert self.popen.stdout is not None
        deadline = time.monotonic() + START_SECONDS
        line = b""
        while True:
            ready, _, _ = select.select([self.popen.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.popen.stdout.fileno(), 1) if ready else b""
            if not chunk:
                self.stop()
                raise SystemExit(f"coordinator worker {self.index} did not start (see its log above)")
            line += chunk
            if not line.endswith(b"\n"):
                continue
            text, line = line.decode().strip(), b""
            if " metrics on " in text:
                self.metrics_address = text.rsplit(" ", 1)[-1]
            elif " listening on " in text:
                return

    def running(self) -> bool:
        """Whether the worker process is alive."""
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code (reaped)."""
        return None if self.popen is None else stop_process(self.popen, timeout)


def _supervise(workers: list[Worker], stopping: list[int]) -> None:
    """Restart workers that exited, with backoff, until a signal arrives."""
    while not stopping:
        now = time.monotonic()
        for w in workers:
            if w.running():
                if w.backoff.failures and now - w.backoff.started_at > STABLE_AFTER:
                    w.backoff.failures = 0
                continue
            if not w.backoff.restart_at:
                code = w.stop()
                w.backoff.restart_at = now + w.backoff.delay()
                log.warning(
                    "coordinator worker %d exited with code %s; restarting it in %.1f s",
                    w.index,
                    code,
                    w.backoff.delay(),
                )
            elif now >= w.backoff.restart_at:
                try:
                    w.start()
                except SystemExit as exc:
                    log.warning("%s", exc)
                    w.backoff.failures += 1
                    w.backoff.restart_at = time.monotonic() + w.backoff.delay()
                    continue
                w.backoff.failures += 1
                w.backoff.restart_at = 0.0
                w.backoff.started_at = time.monotonic()
                log.info("coordinator worker %d restarted (pid %d)", w.index, w.popen.pid if w.popen else 0)
        time.sleep(TICK_SECONDS)


def run_workers(argv: list[str], workers: int, listen: str) -> int:
    """Start `workers` coordinators on `listen`, announce the address, supervise them until SIGTERM or SIGINT."""
    held, address = reserve(listen)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    pool = [Worker(i, worker_argv(argv, i, address)) for i in range(workers)]
    try:
        for w in pool:
            w.start()
            w.backoff.started_at = time.monotonic()
        if pool[0].metrics_address:  # the first worker's, before the listening line (as one coordinator prints)
            print(f"shoal coordinator metrics on {pool[0].metrics_address}", flush=True)
        print(f"shoal coordinator listening on {address}", flush=True)
        log.info("%d coordinator workers on %s: pids %s", workers, address, [w.popen.pid for w in pool if w.popen])
        _supervise(pool, stopping)
    finally:
        for w in pool:  # SIGTERM to all first, so they drain their calls at the same time
            if w.running() and w.popen is not None:
                w.popen.send_signal(signal.SIGTERM)
        for w in pool:
            w.stop()
        held.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
