"""The shard process: pin to cores, serve the Shard service, load data, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from threadpoolctl import threadpool_limits

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
from shoal._tls import ClusterCredentials
from shoal.shard.core import Shard
from shoal.shard.group import GroupMember
from shoal.shard.metrics import collector
from shoal.shard.options import ShardOptions
from shoal.shard.servicer import ShardServicer
from shoal.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("shoal.shard")

SERVICE = shard_pb2.DESCRIPTOR.services_by_name["Shard"].full_name
GRACE_SECONDS = 5
GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"


@dataclass(frozen=True)
class GroupSettings:
    """Where a shard in a shard group finds etcd, and its group and member name."""

    meta: str  # etcd endpoints host:port[,host:port...]
    cluster: str
    group: str
    member: str
    advertise: str = ""  # the address others reach this shard at (default: the bound address)
    credentials: ClusterCredentials = field(default_factory=ClusterCredentials)  # how it reaches the others
    join: bool = False  # register a new group (named `group`, or the first free gN when "")


def run(
    data: Path,
    listen: str,
    cores: list[int] | None,
    security: ServerSecurity | None = None,
    backup_root: Path | None = None,
    group: GroupSettings | None = None,
    metrics: str | None = None,
) -> None:
    """Run a shard on `listen` with data under `data` until a signal (in a group if given; /metrics on `metrics`)."""
    security = security or ServerSecurity()
    check_safe(listen, security)
    if os.environ.get(GRPC_FORK_ENV) != "false":
        # Snapshots fork (snapshots.py) and the child never touches gRPC, so gRPC's fork handlers must stay
        # out of it (they would pause gRPC's threads, and do not support the asyncio server). gRPC reads
        # this setting once, on import, which has happened by now: start this process over with it set.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, GRPC_FORK_ENV: "false"})
    if cores:
        os.sched_setaffinity(0, cores)
    threads = len(cores) if cores else len(os.sched_getaffinity(0))
    # numpy's BLAS (exact filtered search) started its threads before the pinning, one per core of the
    # machine: left so, every shard would compete for every core.
    threadpool_limits(threads, user_api="blas")
    options = replace(ShardOptions.from_env(threads), backup_root=backup_root, oplog=group is not None)
    asyncio.run(_serve(Path(data), listen, options, security, metrics, group))


async def _serve(
    data: Path,
    listen: str,
    options: ShardOptions,
    security: ServerSecurity,
    metrics: str | None,
    group: GroupSettings | None = None,
) -> None:
    threads = options.threads
    shard = Shard(data, options=options)
    server = aio_server(security.guard, metrics=metrics is not None)
    servicer = ShardServicer(shard)
    shard_pb2_grpc.add_ShardServicer_to_server(servicer, server)
    health = add_standard_services(server, [SERVICE])
    await set_serving(health, [SERVICE], False)
    servicer.address = bind(server, listen, security.tls)
    if metrics is not None:
        collector().add(servicer.address, shard)
        servicer.metrics_address = serve_metrics(metrics)
    signalled = asyncio.create_task(wait_for_signal())
    await server.start()
    probes = await serve_probes(security.probe_listen, health)
    if servicer.metrics_address:  # before the listening line, which tells LocalCluster the start is over
        print(f"shoal shard metrics on {servicer.metrics_address}", flush=True)
    print(f"shoal shard listening on {servicer.address}", flush=True)
    loading = asyncio.create_task(asyncio.to_thread(shard.open))
    try:
        await asyncio.wait({signalled, loading}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            if loading.exception() is not None:  # a shard that cannot load its data must not serve
                log.error("shard cannot load its data from %s", data, exc_info=loading.exception())
                raise SystemExit(1)
            if group is not None:
                servicer.member = GroupMember(
                    shard,
                    group.meta,
                    group.cluster,
                    group.group,
                    group.member,
                    group.advertise or servicer.address,
                    credentials=group.credentials,
                    join=group.join,
                )
                await servicer.member.start()
            await set_serving(health, [SERVICE], True)
            log.info("shard serving on %s with %d threads, data in %s", servicer.address, threads, data)
            await signalled
        log.info("shard on %s stopping", servicer.address)
    finally:
        await set_serving(health, [SERVICE], False)
        if servicer.member is not None:
            await servicer.member.stop()
        await server.stop(grace=GRACE_SECONDS)
        if probes is not None:
            await probes.stop(None)
        signalled.cancel()
        with contextlib.suppress(Exception):
            await loading  # the load thread cannot be interrupted; its failure is already raised above
        await asyncio.to_thread(shard.close)
        log.info("shard on %s stopped", servicer.address)
