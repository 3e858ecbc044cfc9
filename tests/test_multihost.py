"""A cluster across hosts: each shard and the coordinator in its own network namespace on one bridge.

Shard "a" is addressed by IP, shard "b" by a host name the coordinator's host resolves from its
/etc/hosts. Cutting a host's cable drops its packets silently (no reset, no ICMP), which only
keepalive and TCP timeouts can notice.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shoal
from shoal._hash import slots_of
from shoal._local import split_cores, wait_serving
from shoal.coordinator.shards import SHARD_KEEPALIVE_MS
from tests.conftest import brute_force, clustered
from tests.netns import Host, HostProcess, Network, environment, sweep_stale, unavailable_reason

pytestmark = pytest.mark.slow  # starts shards in network namespaces

# Every host has its own ports, as every pod does in Kubernetes: the same fixed port on each.
SHARD_PORT = 7100
COORDINATOR_PORT = 7070
START_TIMEOUT = 60.0
NAME_B = "shard-b.shoal.test"  # .test is reserved (RFC 2606): it can never be someone's real host
N, DIM, K = 3000, 32, 10
# A silent shard is noticed after at most one keepalive interval plus its timeout; twice that, for a busy CI.
DETECT_BUDGET = 2 * 2 * SHARD_KEEPALIVE_MS / 1000
# A reachable shard is used again within one connection attempt (bounded by the keepalive timeout) and
# one re-resolution of its name; generous, for a busy CI.
RECOVER_BUDGET = 15.0
# A client's pause between retries of an UNAVAILABLE call while it measures recovery.
RETRY_PAUSE = 0.05


@dataclass
class Lab:
    """The hosts, the processes on them and the data loaded: what the tests share."""

    net: Network
    root: Path
    coordinator_host: Host
    hosts: dict[str, Host]
    names: dict[str, str]  # what the coordinator's host resolves: name -> address
    x: np.ndarray
    shards: dict[str, HostProcess] = field(default_factory=dict)
    coordinator: HostProcess | None = None

    def processes(self) -> list[HostProcess]:
        """Every process started, the coordinator first."""
        return [p for p in [self.coordinator, *self.shards.values()] if p is not None]

    @property
    def address(self) -> str:
        """The coordinator's address, reached over the bridge."""
        return f"{self.coordinator_host.address}:{COORDINATOR_PORT}"

    def shard_address(self, shard: str) -> str:
        """The address the test reaches a shard's process at (its host's IP)."""
        return f"{self.hosts[shard].address}:{SHARD_PORT}"

    def start_shard(self, shard: str, host: Host, cores: list[int]) -> HostProcess:
        """Start shard `shard` on `host` with its data folder, and wait until it serves."""
        proc = HostProcess(
            f"shard-{shard}",
            [
                "shard",
                "--data",
                str(self.root / f"shard-{shard}"),
                "--listen",
                f"0.0.0.0:{SHARD_PORT}",
                "--cores",
                ",".join(map(str, cores)),
                "--insecure",  # plaintext on purpose: the hosts are network namespaces of this machine
            ],
            self.root / f"shard-{shard}.log",
            host=host,
        )
        self.shards[shard], self.hosts[shard] = proc, host
        proc.start(START_TIMEOUT)
        wait_serving(self.shard_address(shard), START_TIMEOUT)
        return proc

    def status(self) -> str:
        """`shoal status` as run on the coordinator's host, where the shard names resolve."""
        done = subprocess.run(
            self.coordinator_host.command(sys.executable, "-m", "shoal", "status", "--address", self.address),
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(),
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two shard hosts and a coordinator host on a bridge, with N points loaded."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    root = tmp_path_factory.mktemp("multihost")
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(Network())
        coordinator_host = net.add_host("coordinator")
        hosts = {"a": net.add_host("a"), "b": net.add_host("b")}
        lab = Lab(net, root, coordinator_host, {}, {NAME_B: hosts["b"].address}, clustered(N, DIM, seed=7))
        # Processes stop before the network goes (the stack unwinds in reverse), whatever state they are in.
        stack.callback(_stop_all, lab)
        for (shard, host), cores in zip(hosts.items(), split_cores(2), strict=True):
            lab.start_shard(shard, host, cores)
        net.write_hosts(coordinator_host, lab.names)
        topology = root / "topology.json"
        topology.write_text(
            '{"version": 1, "shards": [\n'
            f'  {{"address": "{hosts["a"].address}:{SHARD_PORT}", "slots": [0, 2048]}},\n'
            f'  {{"address": "{NAME_B}:{SHARD_PORT}", "slots": [2048, 4096]}}\n]}}\n'
        )
        lab.coordinator = HostProcess(
            "coordinator",
            ["coordinator", "--topology", str(topology), "--listen", f"0.0.0.0:{COORDINATOR_PORT}", "--insecure"],
            root / "coordinator.log",
            host=coordinator_host,
        )
        lab.coordinator.start(START_TIMEOUT)
        wait_serving(lab.address, START_TIMEOUT)
        with shoal.Client(lab.address) as client:
            client.create_collection("docs", dim=DIM, metric="l2")
            assert client.upsert("docs", ids=np.arange(N), vectors=lab.x) == N
        yield lab


def _stop_all(lab: Lab) -> None:
    for proc in lab.processes():
        if proc.popen is not None and proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGCONT)  # a frozen process could not act on SIGTERM
        proc.stop()


def _check_full(client: shoal.Client, lab: Lab) -> None:
    """Every point counted, and exact searches equal to brute force: every shard answered."""
    assert client.count("docs") == N
    q = lab.x[:20] + 0.01
    res = client.search("docs", q, k=K, ef=N)  # ef >= a shard's points: each shard searches exhaustively
    np.testing.assert_array_equal(res.ids, brute_force(lab.x, q, K, "l2")[0])


def _timed_failure(
    call: Callable[[], Any],
    error: type[shoal.ShoalError] | tuple[type[shoal.ShoalError], ...],
    match: str | None = None,
) -> float:
    """Seconds until `call` raised `error` (with `match` in its message)."""
    start = time.monotonic()
    with pytest.raises(error, match=match):
        call()
    return time.monotonic() - start


def _until_full(client: shoal.Client, lab: Lab) -> float:
    """Seconds until the cluster answers in full again, retrying UNAVAILABLE as a client would."""
    start = time.monotonic()
    while True:
        try:
            _check_full(client, lab)
            return time.monotonic() - start
        except shoal.Unavailable:
            if time.monotonic() - start > RECOVER_BUDGET:
                raise
            time.sleep(RETRY_PAUSE)  # a retry policy's pause; each attempt asks the cluster afresh


def _report(what: str, seconds: float) -> None:
    print(f"{what}: {seconds:.2f} s", file=sys.stderr)


def test_insert_and_search_across_hosts(lab: Lab) -> None:
    with shoal.Client(lab.address) as client:
        _check_full(client, lab)
        info = client.describe_collection("docs")
    # Shards are reported under the topology's addresses (a name stays a name), not the 0.0.0.0 they bind.
    assert [s.address for s in info.shards] == [f"{lab.hosts['a'].address}:{SHARD_PORT}", f"{NAME_B}:{SHARD_PORT}"]
    assert all(s.count > N // 4 for s in info.shards)
    status = lab.status()
    for s in info.shards:
        row = next(r for r in status.splitlines() if r.startswith(s.address))
        assert "SERVING" in row and f"docs ({s.count:,})" in row, status


def test_cut_link_fails_fast_with_unavailable_and_recovers(lab: Lab) -> None:
    a = lab.shard_address("a")
    on_a = np.flatnonzero(slots_of(np.arange(N, N + 400, dtype=np.uint64)) < 2048) + N
    on_b = np.setdiff1d(np.arange(N, N + 400), on_a)
    with shoal.Client(lab.address) as client, shoal.Client(lab.address, timeout=None) as patient:
        _check_full(client, lab)  # the coordinator's connections and search streams are open and idle
        lab.net.cut(lab.hosts["a"])
        try:
            took = _timed_failure(lambda: client.search("docs", lab.x[:3], k=K), shoal.Unavailable, a)
            _report("search after the cut, until UNAVAILABLE", took)
            assert took < DETECT_BUDGET
            # Without a deadline too: the shard's connection fails, the call never hangs.
            took = _timed_failure(lambda: patient.count("docs"), shoal.Unavailable, a)
            _report("count without a deadline, until UNAVAILABLE", took)
            assert took < DETECT_BUDGET
            took = _timed_failure(
                lambda: client.upsert("docs", ids=on_a, vectors=lab.x[: len(on_a)]), shoal.Unavailable, a
            )
            assert took < DETECT_BUDGET
            # What needs only the reachable shard still works.
            assert client.upsert("docs", ids=on_b, vectors=lab.x[: len(on_b)]) == len(on_b)
            assert client.delete("docs", ids=on_b) == len(on_b)
            # A deadline shorter than the detection: the deadline comes first (or the shard is known down).
            with shoal.Client(lab.address, timeout=0.5) as hurried:
                took = _timed_failure(
                    lambda: hurried.search("docs", lab.x[:3], k=K), (shoal.DeadlineExceeded, shoal.Unavailable)
                )
            assert took < 0.5 + 1.0
        finally:
            lab.net.restore(lab.hosts["a"])
        wait_serving(a, START_TIMEOUT)  # the cable works again, end to end
        took = _until_full(client, lab)
        _report("after the link is back, until full results", took)


def test_frozen_shard_is_noticed_by_keepalive(lab: Lab) -> None:
    """A shard that stops answering while its host still acknowledges TCP: only gRPC's keepalive notices."""
    proc = lab.shards["b"]
    assert proc.popen is not None
    with shoal.Client(lab.address) as client:
        _check_full(client, lab)
        proc.popen.send_signal(signal.SIGSTOP)
        try:
            took = _timed_failure(lambda: client.search("docs", lab.x[:3], k=K), shoal.Unavailable, NAME_B)
            _report("search to a frozen shard, until UNAVAILABLE", took)
            assert took < DETECT_BUDGET
        finally:
            proc.popen.send_signal(signal.SIGCONT)
        took = _until_full(client, lab)
        _report("after the shard resumes, until full results", took)


def test_shard_restarted_on_another_address_is_found_by_name(lab: Lab) -> None:
    """Shard b's host vanishes; b starts on a new host with its data; its name is repointed; the coordinator follows."""
    old = lab.shards["b"]
    with shoal.Client(lab.address) as client:
        _check_full(client, lab)
        # Cut first, then kill: the old address goes silent, as when a node is lost (no reset reaches anyone).
        lab.net.cut(lab.hosts["b"])
        old.kill()
        cores = [int(c) for c in old.args[old.args.index("--cores") + 1].split(",")]
        moved = lab.net.add_host("b-moved")
        lab.start_shard("b", moved, cores)
        # The name still points at the old address, which stays silent.
        assert _timed_failure(lambda: client.count("docs"), shoal.Unavailable, NAME_B) < DETECT_BUDGET
        lab.names[NAME_B] = moved.address
        lab.net.write_hosts(lab.coordinator_host, lab.names)
        took = _until_full(client, lab)
        _report("after the name points at the new address, until full results", took)
    row = next(r for r in lab.status().splitlines() if r.startswith(NAME_B))
    assert "SERVING" in row, row
