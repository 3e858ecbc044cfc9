"""Linux network namespaces on one bridge: stand-ins for separate hosts, for tests that cross a network."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal._errors import Unavailable
from shoal._local import Process

# A private range that only these tests use; each network takes a free /24 of it (10.211.N.0/24).
SUBNET_PREFIX = "10.211"
# Networks made at the same time (two pytest runs) pick their /24 one after the other.
LOCK_PATH = Path("/run/lock/shoal-test-netns.lock")
# `ip netns exec NAME` bind-mounts the files of /etc/netns/NAME over /etc for the process it starts.
NETNS_ETC = Path("/etc/netns")
# Proxy settings would send gRPC to a proxy instead of the namespaces' addresses.
_PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY")


def ip(*args: str) -> str:
    """Run `ip ARGS` and return its output; failures raise with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made on this machine, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces exist only on Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs the suite as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    probe = f"shoal-{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def sweep_stale() -> None:
    """Remove what earlier runs killed before their teardown left behind: their namespaces, bridges, hosts files."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0]
        match = re.fullmatch(r"shoal-(\d+)-.*", name)
        # A namespace with processes still inside is in use, whoever owns it: leave it alone.
        if match and not _alive(int(match.group(1))) and not ip("netns", "pids", name).strip():
            ip("netns", "del", name)
    for match in re.finditer(r"^\d+: (shb(\d+))[:@]", ip("-o", "link", "show", "type", "bridge"), re.M):
        if not _alive(int(match.group(2))):
            ip("link", "del", match.group(1))
    if NETNS_ETC.exists():
        for folder in NETNS_ETC.glob("shoal-*"):
            match = re.fullmatch(r"shoal-(\d+)-.*", folder.name)
            if match and not _alive(int(match.group(1))):
                shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Host:
    """One network namespace with one address on the bridge: a machine, as far as the network can tell."""

    name: str
    address: str
    link: str  # the bridge's end of the host's cable: setting it down cuts the host off without a word

    def command(self, *args: str) -> list[str]:
        """`args` to run inside this host's namespace (with its /etc/netns hosts file as /etc/hosts)."""
        return ["ip", "netns", "exec", self.name, *args]


@dataclass
class Network:
    """A bridge with a free private /24 and hosts plugged into it; a context manager that removes it all.

    The bridge itself holds the .1 address, so this process (the test, in the root namespace) can reach
    every host; the hosts get .10 upwards.
    """

    tag: str = field(default_factory=lambda: str(os.getpid()))
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    subnet: ipaddress.IPv4Network | None = None

    def __enter__(self) -> Network:
        try:
            self._make_bridge()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_bridge(self) -> None:
        self.bridge = f"shb{self.tag}"
        ip("link", "add", self.bridge, "type", "bridge")
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr", "show")
            free = next((n for n in range(1, 255) if f"{SUBNET_PREFIX}.{n}." not in used), None)
            if free is None:
                raise RuntimeError(f"every {SUBNET_PREFIX}.N.0/24 is in use on this machine")
            self.subnet = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{free}.0/24")
            ip("addr", "add", f"{self.subnet[1]}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, role: str) -> Host:
        """A new namespace `shoal-<pid>-<role>` with the next free address, plugged into the bridge."""
        assert self.subnet is not None, "enter the Network first"
        index = len(self.hosts)
        host = Host(name=f"shoal-{self.tag}-{role}", address=str(self.subnet[10 + index]), link=f"sh{self.tag}h{index}")
        ip("netns", "add", host.name)
        self.hosts.append(host)
        ip("-n", host.name, "link", "set", "lo", "up")
        ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        ip("link", "set", host.link, "master", self.bridge, "up")
        ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.name, "link", "set", "eth0", "up")
        self.write_hosts(host, {})
        return host

    def cut(self, host: Host) -> None:
        """Unplug the host: its packets vanish at the bridge (no reset, no ICMP), as with a pulled cable."""
        ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        """Plug the host back in."""
        ip("link", "set", host.link, "up")

    def write_hosts(self, host: Host, names: dict[str, str]) -> None:
        """Set the /etc/hosts that processes in `host` see: name -> address."""
        folder = NETNS_ETC / host.name
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost", *(f"{a} {n}" for n, a in names.items())]
        # Rewritten in place, never replaced: running processes see the file through a bind mount of its inode.
        with open(folder / "hosts", "w") as f:
            f.write("\n".join(lines) + "\n")

    def close(self) -> None:
        """Remove every host (its namespace, cable and hosts file) and the bridge; processes must be stopped first."""
        for host in reversed(self.hosts):
            with contextlib.suppress(RuntimeError):
                ip("link", "del", host.link)  # takes the namespace's end of the cable with it
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", host.name)
            shutil.rmtree(NETNS_ETC / host.name, ignore_errors=True)
        self.hosts.clear()
        if self.bridge:
            with contextlib.suppress(RuntimeError):
                ip("link", "del", self.bridge)
            self.bridge = ""


def environment() -> dict[str, str]:
    """This process's environment without proxy settings, for the processes started on the hosts."""
    return {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}


@dataclass
class HostProcess(Process):
    """A `shoal` server process running on one host of a Network."""

    host: Host | None = None

    def start(self, timeout: float) -> str:
        """Start it in the host's namespace; return the address it printed once listening."""
        assert self.host is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.popen = subprocess.Popen(
            self.host.command(sys.executable, "-m", "shoal", *self.args),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**environment(), **self.env},
        )
        log.close()
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            if not _wait_readable(self.popen.stdout.fileno(), deadline):
                break
            chunk = os.read(self.popen.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
        if not line.endswith(b"\n"):
            self.kill()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise Unavailable(f"{self.role} did not start on {self.host.name}; the end of {self.log_path}:\n{tail}")
        self.address = line.decode().rsplit(" ", 1)[-1].strip()
        return self.address


def _wait_readable(fd: int, deadline: float) -> bool:
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    return bool(ready)
