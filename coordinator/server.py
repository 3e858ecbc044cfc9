"""The coordinator process: serve the Shoal service over a topology until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health

from shoal._errors import ShoalError
from shoal._keystore import EtcdKeyTable
from shoal._meta import MetaStore
from shoal._metrics import serve as serve_metrics
from shoal._server import (
    ServerSecurity,
    add_standard_services,
    aio_server,
    bind,
    check_safe,
    serve_probes,
    set_serving,
    wait_for_signal,
)
from shoal._tls import TLS, ClusterCredentials
from shoal.coordinator.core import Coordinator
from shoal.coordinator.groups import GroupView, MetaCatalogue
from shoal.coordinator.mover import janitor
from shoal.coordinator.servicer import ShoalServicer
from shoal.coordinator.shards import ShardPool
from shoal.coordinator.topology import Topology, TopologyError
from shoal.v1 import shoal_pb2, shoal_pb2_grpc

log = logging.getLogger("shoal.coordinator")

SERVICE_NAME = shoal_pb2.DESCRIPTOR.services_by_name["Shoal"].full_name
STOP_GRACE_SECONDS = 5.0


def load_topology(shards: list[str] | None, topology_file: Path | None) -> Topology:
    """The topology from `--shards a,b,c` (an even split) or from a JSON file; exactly one must be given."""
    if bool(shards) == (topology_file is not None):
        raise TopologyError("give either shard addresses or a topology file, not both and not neither")
    if topology_file is not None:
        return Topology.from_file(topology_file)
    return Topology.even(shards or [])


class CoordinatorServer:
    """A coordinator's gRPC server, its health and its shard connections: start, mark serving, stop."""

    def __init__(
        self,
        topology: Topology | None,
        listen: str,
        security: ServerSecurity | None = None,
        shard_tls: TLS | None = None,
        cluster_secret: bytes | None = None,
        metrics: str | None = None,
        view: GroupView | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.topology = topology
        self.reuse_port = reuse_port  # a worker of `--workers`: other processes serve the same port
        self.view = view  # shard groups in etcd (topology None), or a fixed topology
        self.listen = listen
        self.security = security or ServerSecurity()
        self.shard_tls = shard_tls  # how this coordinator reaches its shards: TLS (a member's certificate)...
        self.cluster_secret = cluster_secret  # ...or the cluster secret
        self.metrics = metrics  # HOST:PORT to serve /metrics on (None: no metrics)
        self.address = ""
        self.metrics_address = ""
        self._server: grpc.aio.Server | None = None
        self._pool: ShardPool | None = None
        self._health: health.aio.HealthServicer | None = None
        self._probes: grpc.aio.Server | None = None
        self._janitor: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Bind and start (health still NOT_SERVING); return the bound address."""
        server = aio_server(self.security.guard, metrics=self.metrics is not None, reuse_port=self.reuse_port)
        self.address = bind(server, self.listen, self.security.tls, reuse_port=self.reuse_port)
        if self.metrics is not None:
            self.metrics_address = serve_metrics(self.metrics)
        self._server = server
        if self.view is not None:
            view = self.view
            topology, connections = view.routing()
            core = Coordinator(topology, connections, catalogue=MetaCatalogue(view))
            core.refresh = view.reach
            view.on_change = lambda: core.retarget(*view.routing())
            credentials = ClusterCredentials(tls=self.shard_tls, secret=self.cluster_secret)
            self._janitor = asyncio.create_task(janitor(view.meta, credentials), name="moves left behind")
        else:
            assert self.topology is not None
            self._pool = ShardPool(self.topology.addresses, self.shard_tls, self.cluster_secret)
            core = Coordinator(self.topology, self._pool.clients)
        shoal_pb2_grpc.add_ShoalServicer_to_server(ShoalServicer(core, self.address, self.metrics_address), server)
        self._health = add_standard_services(server, [SERVICE_NAME])
        await server.start()
        self._probes = await serve_probes(self.security.probe_listen, self._health)
        return self.address

    async def serving(self) -> None:
        """Report SERVING; a coordinator does not wait for its shards, it reports them per call."""
        if self._health is None:
            raise RuntimeError("start() the server first")
        await set_serving(self._health, [SERVICE_NAME], True)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """NOT_SERVING, let calls in flight finish for up to `grace` seconds, close the shard connections."""
        if self._health is not None:
            await set_serving(self._health, [SERVICE_NAME], False)
        if self._server is not None:
            await self._server.stop(grace)
        if self._probes is not None:
            await self._probes.stop(None)
        if self._pool is not None:
            await self._pool.close()
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        if self.view is not None:
            await self.view.close()
            await self.view.meta.close()


async def connect_view(
    endpoint: str, cluster: str, shard_tls: TLS | None = None, cluster_secret: bytes | None = None
) -> GroupView:
    """The cluster's live view from etcd at `endpoint` (waiting for etcd to answer, and through its errors while
    the view is first read: a leader election, say)."""
    while True:
        try:
            meta = await MetaStore.connect(endpoint, cluster)
            break
        except ShoalError as exc:
            log.warning("etcd at %s: %s", endpoint, exc)
            await asyncio.sleep(0.5)
    view = GroupView(meta, shard_tls, cluster_secret)
    while True:
        try:
            await view.start()
            return view
        except ShoalError as exc:
            log.warning("etcd at %s: %s", endpoint, exc)
            await asyncio.sleep(0.5)


async def serve_groups(
    listen: str,
    meta: str,
    cluster: str,
    security: ServerSecurity,
    shard_tls: TLS | None,
    secret: bytes | None,
    metrics: str | None,
    key_table: EtcdKeyTable | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve over the shard groups in etcd until SIGTERM or SIGINT (checking keys against `key_table` if given)."""
    view = await connect_view(meta, cluster, shard_tls, secret)
    following = None
    if key_table is not None:
        following = asyncio.create_task(key_table.follow(view.meta), name="API keys")
        await key_table.loaded.wait()  # a key made before this start works from the first call
    try:
        server = CoordinatorServer(None, listen, security, shard_tls, secret, metrics, view, reuse_port)
        await serve(None, listen, server)
    finally:
        if following is not None:
            following.cancel()


async def serve(topology: Topology | None, listen: str, server: CoordinatorServer) -> None:
    """Serve until SIGTERM or SIGINT, announcing the bound address (and the metrics one) on stdout."""
    signalled = asyncio.create_task(wait_for_signal())
    await asyncio.sleep(0)  # the signal handlers are in place before anyone can learn the address
    try:
        address = await server.start()
        if server.metrics_address:  # before the listening line, which tells LocalCluster the start is over
            print(f"shoal coordinator metrics on {server.metrics_address}", flush=True)
        print(f"shoal coordinator listening on {address}", flush=True)
        if topology is not None:
            log.info("topology version %d: %s", topology.version, ", ".join(topology.addresses))
        await server.serving()
        await signalled
    finally:
        signalled.cancel()
        await server.stop()


def run(
    shards: list[str] | None,
    topology_file: Path | None,
    listen: str,
    security: ServerSecurity | None = None,
    shard_tls: TLS | None = None,
    cluster_secret: bytes | None = None,
    metrics: str | None = None,
    meta: str = "",
    cluster: str = "default",
    key_table: EtcdKeyTable | None = None,
    reuse_port: bool = False,
) -> None:
    """Run a coordinator over `shards` (an even split), a topology file, or etcd's groups until a signal.

    With `meta` and a `key_table` (the one `security.guard` looks keys up in), keys are etcd's. With
    `reuse_port`, other processes may serve the same port (the workers of `--workers`).
    """
    if meta:
        security = security or ServerSecurity()
        check_safe(listen, security)
        asyncio.run(
            serve_groups(listen, meta, cluster, security, shard_tls, cluster_secret, metrics, key_table, reuse_port)
        )
        return
    try:
        topology = load_topology(shards, topology_file)
    except TopologyError as exc:
        raise SystemExit(f"invalid topology: {exc}") from None
    security = security or ServerSecurity()
    check_safe(listen, security)
    server = CoordinatorServer(topology, listen, security, shard_tls, cluster_secret, metrics, reuse_port=reuse_port)
    asyncio.run(serve(topology, listen, server))
