"""A local cluster: etcd, a coordinator and N shard groups of R processes each on this machine.

Used by `shoal up` and the tests. The cluster's metadata lives in an embedded etcd under DATA/etcd: the
topology (slot ranges → groups g0..gN-1) is written once, and every shard joins its group there. With
`meta=False` the cluster runs without etcd (the coordinator gets the shard addresses, one copy each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal import _rpc
from shoal._config import DEFAULT_HOST, DEFAULT_SHARDS
from shoal._errors import FailedPrecondition, Unavailable
from shoal._etcd import EmbeddedEtcd, EtcdCluster
from shoal._folder_lock import FolderLock
from shoal._group_status import ENDPOINT_FILE
from shoal._meta import MetaStore
from shoal._meta_init import init_topology
from shoal._ports import port_problem
from shoal._tls import TLS

if TYPE_CHECKING:
    from shoal._keystore import FileKeyStore, MetaKeyStore
    from shoal._secrets import LocalSecrets

START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
# A shard forks to snapshot its indexes; gRPC must be told at import to keep out of forks, or the shard
# process starts itself over to set it.
SHARD_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false"}


def split_cores(shards: int, cores: list[int] | None = None) -> list[list[int]]:
    """Split the available cores into `shards` contiguous groups (round-robin when there are fewer cores)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if shards <= len(cores):
        base, extra = divmod(len(cores), shards)
        groups, start = [], 0
        for i in range(shards):
            size = base + (1 if i < extra else 0)
            groups.append(cores[start : start + size])
            start += size
        return groups
    return [[cores[i % len(cores)]] for i in range(shards)]


def wait_serving(address: str, timeout: float, tls: TLS | None = None) -> None:
    """Block until the process at `address` reports SERVING over grpc.health.v1 (Watch, no polling)."""
    deadline = time.monotonic() + timeout
    with _rpc.channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"{address} did not become SERVING within {timeout:.0f}s")
            try:
                for reply in stub.Watch(
                    health_pb2.HealthCheckRequest(service=""), timeout=remaining, wait_for_ready=True
                ):
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Unavailable(f"{address} did not become SERVING within {timeout:.0f}s") from exc
                # Otherwise the stream broke (the process is starting or restarting): watch again.


@dataclass
class Process:
    """One server process of the cluster and the address it listens on."""

    role: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    address: str = ""
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    metrics_address: str = ""  # where it serves /metrics, when it does

    def start(self, timeout: float) -> str:
        """Start the process and return its address once it has printed its listening line.

        A line before it may name the metrics address ("... metrics on HOST:PORT").
        """
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "shoal", *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            last = line.rsplit(" ", 1)[-1].strip()
            if " metrics on " in line:
                self.metrics_address = last
                continue
            self.address = last
            return self.address

    def _line(self, deadline: float) -> str:
        """The next line the process prints on stdout; Unavailable if it exits or the deadline passes first."""
        assert self.popen is not None and self.popen.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.popen.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.popen.stdout.fileno(), 1) if ready else b""
            if not chunk:
                code = self.kill()
                raise Unavailable(f"{self.role} did not start (exit code {code}): {last_line(self.log_path)}")
            line += chunk
        return line.decode()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait for a clean exit, SIGKILL if it does not come; the exit code."""
        return None if self.popen is None else stop_process(self.popen, timeout)

    def kill(self) -> int | None:
        """SIGKILL, as a crash would."""
        return None if self.popen is None else stop_process(self.popen, None)


def stop_process(popen: subprocess.Popen[bytes], timeout: float | None) -> int:
    """SIGTERM and up to `timeout` seconds for a clean exit (None: straight to SIGKILL), then SIGKILL; reaped."""
    if timeout is not None and popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
    if popen.poll() is None:
        popen.kill()
    code = popen.wait()
    if popen.stdout:
        popen.stdout.close()
    return code


def last_line(log: Path) -> str:
    """The last non-empty line of a log (a traceback's last line is its error), and where to read the rest."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return f"{lines[-1].strip() if lines else 'nothing logged'} (see {log})"


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Refuse to start when something already listens on host:port (0: any free port, always fine)."""
    if problem := port_problem(host, port):
        raise FailedPrecondition(f"{what} port {host}:{port} is {problem}; choose another with {option}")


def _keep_metrics_port(proc: Process) -> None:
    if proc.metrics_address:
        proc.args[proc.args.index("--metrics") + 1] = proc.metrics_address


def layout_shards(data: Path) -> int | None:
    """The shard count of the local cluster whose data is in `data` (None for a new folder)."""
    layout = data / "cluster.json"
    return int(json.loads(layout.read_text())["shards"]) if layout.exists() else None


@dataclass
class LocalCluster:
    """A coordinator and `shards` shard processes with data under `data`; a context manager."""

    data: Path
    shards: int = DEFAULT_SHARDS
    port: int = 0
    host: str = DEFAULT_HOST
    timeout: float = START_TIMEOUT
    shard_env: dict[str, str] = field(default_factory=dict)  # e.g. SHOAL_SNAPSHOT_* settings for every shard
    # TLS everywhere, API keys on the coordinator, the cluster secret on the shards (secrets in DATA/secrets).
    secure: bool = False
    backup_root: Path | None = None  # where shards may write backups (default DATA/backups)
    # Serve /metrics: the coordinator on metrics_port, shard i on metrics_port + 1 + i (0: any free ports).
    metrics: bool = False
    metrics_port: int = 0
    # Arguments every process gets before its command, e.g. ["--log-format", "json"].
    common_args: list[str] = field(default_factory=list)
    # Arguments every process gets after its command, e.g. ["--otlp-endpoint", "http://collector:4317"].
    server_args: list[str] = field(default_factory=list)
    shard_procs: list[Process] = field(default_factory=list)
    joined: list[Process] = field(default_factory=list)  # shards started later by `join`
    coordinator: Process | None = None
    replicas: int = 1  # copies of each shard group's data (1: a primary only)
    meta: bool = True  # cluster metadata in an embedded etcd (False: a fixed list of shards, no replicas)
    cluster: str = "default"
    etcd_members: int = 1  # etcd processes (3: a local etcd cluster that survives the loss of one)
    etcd: EmbeddedEtcd | EtcdCluster | None = None
    logs: Path = Path()  # this start's log folder, DATA/logs/<time>-<pid>/
    _lock: FolderLock | None = None  # DATA/shoal.lock, held while this cluster runs

    @property
    def groups(self) -> list[str]:
        """The shard groups' names."""
        return [f"g{i}" for i in range(self.shards)]

    def member_name(self, group: int, replica: int) -> str:
        """A member's name, which is also its data folder's name."""
        return f"shard-{group}" if replica == 0 else f"shard-{group}-r{replica}"

    def members(self, group: int) -> list[Process]:
        """The processes of one shard group."""
        return self.shard_procs[group * self.replicas : (group + 1) * self.replicas]

    secrets: LocalSecrets | None = None

    @property
    def tls(self) -> TLS | None:
        """How a user reaches the coordinator: the CA and the user's client certificate (None: plaintext)."""
        if self.secrets is None:
            return None
        return TLS(ca=self.secrets.ca, cert=self.secrets.client_cert, key=self.secrets.client_key)

    @property
    def api_key(self) -> str | None:
        """The admin key of a secure cluster."""
        return self.secrets.admin_key.read_text().strip() if self.secrets else None

    def _shard_security(self) -> list[str]:
        if self.secrets is None:
            return []
        s = self.secrets
        return [
            "--tls-cert",
            str(s.server_cert),
            "--tls-key",
            str(s.server_key),
            "--cluster-secret-file",
            str(s.cluster_secret),
            # The other members of its group are reached over TLS too (replication).
            "--shard-tls-ca",
            str(s.ca),
        ]

    def _coordinator_security(self) -> list[str]:
        if self.secrets is None:
            return []
        s = self.secrets
        return [
            *("--tls-cert", str(s.server_cert), "--tls-key", str(s.server_key), "--tls-client-ca", str(s.ca)),
            # The API keys: in the cluster's etcd, or in the keys file without one.
            *(("--meta-auth",) if self.meta else ("--auth", str(s.keys))),
            *("--shard-tls-ca", str(s.ca), "--cluster-secret-file", str(s.cluster_secret)),
        ]

    @property
    def address(self) -> str:
        """The coordinator's address: what clients connect to."""
        assert self.coordinator is not None, "the cluster is not started"
        return self.coordinator.address

    def _metrics_args(self, index: int) -> list[str]:
        """`--metrics HOST:PORT` for the process at `index` (0: the coordinator, then the shards), if metrics."""
        if not self.metrics:
            return []
        port = self.metrics_port + index if self.metrics_port else 0
        return ["--metrics", f"{self.host}:{port}"]

    def _check_layout(self) -> None:
        """Refuse to reuse a data folder with another shard count: ids would land on the wrong shards."""
        layout = self.data / "cluster.json"
        if layout.exists():
            existing = json.loads(layout.read_text())["shards"]
            if existing != self.shards:
                raise FailedPrecondition(
                    f"{self.data} holds a cluster of {existing} shards; start it with --shards {existing} "
                    "(changing the shard count of existing data is not supported yet)"
                )

    def _write_layout(self) -> None:
        """Pin the shard count, once the cluster has started (a failed first start leaves nothing pinned)."""
        layout = self.data / "cluster.json"
        if not layout.exists():
            layout.write_text(json.dumps({"shards": self.shards}) + "\n")

    def start(self) -> LocalCluster:
        """Start etcd, every shard, wait until they serve (and every group has its primary), then the coordinator."""
        self.data.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.data)
        self._lock.take()
        try:
            self._check_layout()
            if not self.meta and self.replicas != 1:
                raise FailedPrecondition("replicas need the cluster metadata (meta=True)")
            check_port_free(self.host, self.port, "the coordinator", "--port")
            if self.metrics and self.metrics_port:
                for i in range(1 + self.shards * self.replicas):
                    check_port_free(self.host, self.metrics_port + i, "a metrics", "--metrics-port or --no-metrics")
            # A log folder per start: a restart's logs never mix with an earlier run's.
            self.logs = self.data / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            self.logs.mkdir(parents=True, exist_ok=True)
            if self.secure:
                from shoal._secrets import ensure_secrets  # cryptography, only when asked for

                self.secrets = ensure_secrets(self.data / "secrets", [self.host])
            backup_root = self.backup_root or self.data / "backups"
            group_args: list[str] = []
            if self.meta:
                if self.etcd_members == 1:
                    self.etcd = EmbeddedEtcd(self.data / "etcd", host="127.0.0.1", log=self.logs / "etcd.log")
                else:
                    self.etcd = EtcdCluster(self.data / "etcd", self.etcd_members, logs=self.logs)
                self.etcd.start(self.timeout)
                (self.data / ENDPOINT_FILE).write_text(self.etcd.endpoint + "\n")
                asyncio.run(self._write_topology())
                group_args = ["--meta", self.etcd.endpoint, "--cluster", self.cluster]
            cores_of = split_cores(self.shards * self.replicas)
            for n, cores in enumerate(cores_of):
                group, replica = divmod(n, self.replicas)
                member = self.member_name(group, replica)
                proc = self._start_shard(
                    member,
                    cores,
                    [
                        *group_args,
                        *(["--group", f"g{group}"] if self.meta else []),
                        "--backup-root",
                        str(backup_root),
                        *self._metrics_args(1 + n),
                    ],
                )
                _keep_metrics_port(proc)
                self.shard_procs.append(proc)
            for proc in self.shard_procs:
                wait_serving(proc.address, self.timeout, self.tls)
            if self.etcd is not None:
                self.wait_groups(self.replicas)
                where = ["--meta", self.etcd.endpoint, "--cluster", self.cluster]
            else:
                where = ["--shards", ",".join(p.address for p in self.shard_procs)]
            self.coordinator = Process(
                "coordinator",
                [
                    *self.common_args,
                    "coordinator",
                    *where,
                    "--listen",
                    f"{self.host}:{self.port}",
                    *self._coordinator_security(),
                    *self._metrics_args(0),
                    *self.server_args,
                ],
                self.logs / "coordinator.log",
            )
            self.coordinator.start(self.timeout)
            self.coordinator.args[self.coordinator.args.index("--listen") + 1] = self.coordinator.address
            _keep_metrics_port(self.coordinator)
            wait_serving(self.coordinator.address, self.timeout, self.tls)
            self._write_layout()
        except BaseException:
            self.stop()
            raise
        return self

    async def _write_topology(self) -> None:
        assert self.etcd is not None
        await init_topology(self.etcd.endpoint, self.cluster, self.shards)
        if self.secrets is not None:
            await self._seed_keys()

    async def _seed_keys(self) -> None:
        """Put the keys made with the secrets (the admin key) into etcd, where the coordinator looks keys up.

        Only keys etcd lacks: a key revoked there stays revoked.
        """
        from shoal._keystore import FileKeyStore

        assert self.etcd is not None and self.secrets is not None
        async with await MetaStore.connect(self.etcd.endpoint, self.cluster) as meta:
            known = {k.id for k in await meta.list_api_keys()}
            for key in FileKeyStore(self.secrets.keys).list():
                if key.id not in known:
                    await meta.put_api_key(key)

    def key_store(self) -> FileKeyStore | MetaKeyStore:
        """Where this secure cluster's coordinator looks API keys up: its etcd (or the keys file without one)."""
        from shoal._keystore import FileKeyStore, MetaKeyStore

        assert self.secrets is not None, "only a secure cluster has API keys"
        if self.etcd is not None:
            return MetaKeyStore(self.etcd.endpoint, self.cluster)
        return FileKeyStore(self.secrets.keys)

    def wait_groups(self, in_sync: int, timeout: float | None = None) -> None:
        """Block until every group has a live primary and at least `in_sync` members in its in-sync set."""
        assert self.etcd is not None
        etcd = self.etcd

        async def wait() -> None:
            deadline = time.monotonic() + (timeout or self.timeout)
            async with await MetaStore.connect(etcd.endpoint, self.cluster) as meta:
                while True:
                    states = [await meta.get_group(g) for g in self.groups]
                    if all(s.primary is not None and len(s.in_sync) >= in_sync for s in states):
                        return
                    if time.monotonic() > deadline:
                        raise Unavailable(f"the shard groups did not settle: {states}")
                    await asyncio.sleep(0.1)

        asyncio.run(wait())

    def join(self, member: str, group: str = "", cores: list[int] | None = None) -> Process:
        """Start one more shard, `shoal shard --join`: a new empty group (named `group`, else the first free
        gN) or a new replica of an existing `group`; return it once it serves."""
        assert self.etcd is not None, "joining needs the cluster metadata (meta=True)"
        meta = ["--meta", self.etcd.endpoint, "--cluster", self.cluster, "--join"]
        proc = self._start_shard(member, cores, [*meta, *(["--group", group] if group else [])])
        self.joined.append(proc)
        wait_serving(proc.address, self.timeout, self.tls)
        return proc

    def _start_shard(self, member: str, cores: list[int] | None, extra: list[str]) -> Process:
        """Start `shoal shard` for `member` (its data folder, a free port, `cores` if given, then `extra`)."""
        proc = Process(
            member,
            [
                *self.common_args,
                "shard",
                "--data",
                str(self.data / member),
                "--listen",
                f"{self.host}:0",
                *(["--cores", ",".join(map(str, cores))] if cores else []),
                *extra,
                *self._shard_security(),
                *self.server_args,
            ],
            self.logs / f"{member}.log",
            env={**SHARD_ENV, **self.shard_env},
        )
        proc.start(self.timeout)
        # Later restarts keep the port, so the coordinator's topology and the scrape targets stay right.
        proc.args[proc.args.index("--listen") + 1] = proc.address
        return proc

    def restart(self, proc: Process) -> None:
        """Start a stopped or killed process again on its old address and wait until it serves."""
        if self.etcd is not None and not self.etcd.running:
            self.etcd.start(self.timeout)  # on its old ports
        proc.start(self.timeout)
        wait_serving(proc.address, self.timeout, self.tls)

    def stop(self) -> None:
        """Stop the coordinator, then the shards, each with SIGTERM, then etcd."""
        for proc in [self.coordinator, *self.shard_procs, *self.joined]:
            if proc is not None:
                proc.stop()
        if self.etcd is not None:
            self.etcd.stop()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
