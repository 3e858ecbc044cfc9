"""The `shoal` command: the one place that composes the processes (server code is imported only here)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from shoal import __version__
from shoal._config import (
    DEFAULT_ADDRESS,
    DEFAULT_HOST,
    DEFAULT_MOVE_PARALLEL,
    DEFAULT_MOVE_RATE,
    DEFAULT_MOVE_SLOTS,
    DEFAULT_PORT,
    DEFAULT_SHARDS,
)
from shoal._errors import ShoalError
from shoal._logs import LOG_FORMATS
from shoal._logs import configure as configure_logging
from shoal._tls import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, TLS, ClusterCredentials, resolve

if TYPE_CHECKING:
    from shoal._access import Guard
    from shoal._server import ServerSecurity

SUPERVISE_EVERY = 0.5  # seconds between `shoal up`'s checks of its processes
ENDPOINTS = "etcd endpoints HOST:PORT[,HOST:PORT...]"  # what every --meta takes, as etcd's own clients do


def _cores(text: str) -> list[int]:
    """Parse "0,1,4-5" into [0, 1, 4, 5], cores this process may run on."""
    cores: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cores.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of cores like 0,1 or 0-3") from None
    usable = os.sched_getaffinity(0)
    if missing := sorted(set(cores) - usable):
        raise argparse.ArgumentTypeError(
            f"core {missing[0]} is not available here; this machine lets it use cores {_ranges(sorted(usable))}"
        )
    return cores


def _tracing(args: argparse.Namespace, service: str) -> None:
    """Export traces when an OTLP endpoint is given (or the OTEL_* variables ask for it); otherwise none."""
    from shoal import _tracing

    if _tracing.wanted(args.otlp_endpoint):
        _tracing.configure(service, args.otlp_endpoint, args.trace_sample_ratio)


def _ranges(cores: list[int]) -> str:
    """[0, 1, 2, 5] as "0-2,5"."""
    spans: list[list[int]] = []
    for c in cores:
        if spans and spans[-1][1] == c - 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def cmd_shard(args: argparse.Namespace) -> int:
    """Run one shard process."""
    from shoal._access import Guard
    from shoal.shard.server import GroupSettings, run

    _check_data_folder(Path(args.data), "shoal shard")
    _tracing(args, "shoal-shard")
    group = None
    if args.meta:
        if not args.group and not args.join:
            raise SystemExit("shoal shard: --meta needs --group, or --join for a new group")
        member = args.member or Path(args.data).resolve().name
        # The other members are reached as the coordinators reach shards: over TLS, with the cluster secret.
        peers = ClusterCredentials(_tls(args.shard_tls_ca, args.shard_tls_cert, args.shard_tls_key), _secret(args))
        group = GroupSettings(args.meta, args.cluster, args.group, member, args.advertise, peers, args.join)
    elif args.join:
        raise SystemExit("shoal shard: --join needs --meta (the cluster's etcd)")
    # Cluster members prove themselves by a certificate of the cluster CA (mutual TLS) or the cluster secret.
    guard = Guard(cluster_secret=_secret(args), members_by_certificate=args.tls_client_ca is not None)
    backup_root = Path(args.backup_root) if args.backup_root else None
    security = _server_security(args, guard)
    run(Path(args.data), args.listen, args.cores, security, backup_root, group, args.metrics)
    return 0


def _check_data_folder(data: Path, command: str) -> None:
    """Refuse a --data that is not a folder, or whose parent folder is missing (a typo would make a new tree)."""
    if data.exists() and not data.is_dir():
        raise SystemExit(f"{command}: --data {data} is a file, not a folder")
    parent = data.resolve().parent
    if not data.exists() and not parent.is_dir():
        raise SystemExit(f"{command}: --data {data}: its parent folder {parent} does not exist; create it first")


def cmd_coordinator(args: argparse.Namespace) -> int:
    """Run one coordinator process."""
    from shoal._access import Guard
    from shoal._keystore import EtcdKeyTable, FileKeyStore
    from shoal.coordinator.server import run

    _tracing(args, "shoal-coordinator")
    shards = args.shards.split(",") if args.shards else None
    if args.meta_auth and (not args.meta or args.auth):
        raise SystemExit("--meta-auth needs --meta, and replaces --auth")
    table = EtcdKeyTable() if args.meta_auth else None
    keys = table.lookup if table is not None else FileKeyStore(Path(args.auth)).lookup if args.auth else None
    guard = Guard(keys=keys, members_by_certificate=args.tls_client_ca is not None and keys is None)
    shard_tls = _tls(args.shard_tls_ca, args.shard_tls_cert, args.shard_tls_key)
    security = _server_security(args, guard)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.workers > 1:
        from shoal.coordinator.workers import run_workers

        return run_workers(args.argv, args.workers, args.listen)
    run(
        shards,
        Path(args.topology) if args.topology else None,
        args.listen,
        security,
        shard_tls,
        _secret(args),
        args.metrics,
        args.meta or "",
        args.cluster,
        table,
        reuse_port=args.reuse_port,
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Create, list or revoke API keys in an --auth file or in the cluster metadata (--meta or --data)."""
    from shoal._keystore import FileKeyStore, MetaKeyStore

    store: FileKeyStore | MetaKeyStore
    if args.auth:
        store = FileKeyStore(Path(args.auth))
    else:
        try:
            endpoint = _meta_endpoint(args)
        except FileNotFoundError:
            raise SystemExit(f"no etcd found for {args.data}: is the cluster running?") from None
        store = MetaKeyStore(endpoint, args.cluster)
    if args.keys_command == "create":
        collections = [c for c in (args.collections or "").split(",") if c]
        token, key = store.create(args.role, collections)
        scope = ", ".join(key.collections) or "every collection"
        print(f"created key {key.id} (role {key.role}, {scope}); it is shown only now:")
        print(token)
    elif args.keys_command == "list":
        for key in store.list():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(key.created))
            state = "revoked" if key.revoked else "active"
            print(f"{key.id}  {key.role:<5}  {state:<7}  {created}  {','.join(key.collections) or '*'}")
    else:
        key = store.revoke(args.id)
        print(f"revoked key {key.id}; servers refuse it within seconds")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start a local cluster and keep it running until Ctrl-C or SIGTERM."""
    from shoal._local import LocalCluster, layout_shards
    from shoal._supervisor import Supervisor

    _check_data_folder(Path(args.data), "shoal up")
    # `shoal restore --up` comes here too, without the metrics and tracing options: their defaults then.
    metrics_port = getattr(args, "metrics_port", None)
    if metrics_port is None:
        metrics_port = args.port + 1 if args.port else 0
    server_args = []
    if getattr(args, "otlp_endpoint", None):
        server_args += ["--otlp-endpoint", args.otlp_endpoint]
    if getattr(args, "trace_sample_ratio", None) is not None:
        server_args += ["--trace-sample-ratio", str(args.trace_sample_ratio)]
    backup_root = Path(args.backup_root) if getattr(args, "backup_root", None) else None
    secure = getattr(args, "secure", False)
    if args.shards is None:
        args.shards = layout_shards(Path(args.data)) or DEFAULT_SHARDS
    replicas = getattr(args, "replicas", 1)
    cluster = LocalCluster(
        data=Path(args.data),
        shards=args.shards,
        port=args.port,
        host=args.host,
        secure=secure,
        backup_root=backup_root,
        replicas=replicas,
        etcd_members=getattr(args, "etcd_members", 1),
        metrics=not getattr(args, "no_metrics", False),
        metrics_port=metrics_port,
        # -v: a server process that fails logs its traceback, not only its one-line error.
        common_args=["-v", "--log-level", args.log_level, "--log-format", args.log_format],
        server_args=server_args,
    )
    # SIGTERM stops the cluster the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster.start()  # a failed start stops what it started and says why, in one line
    try:
        print(
            f"Shoal is ready at {cluster.address} ({args.shards} shards x {replicas} copies, data in {args.data}, "
            f"logs in {cluster.logs}). Press Ctrl-C to stop.",
            flush=True,
        )
        if cluster.metrics:
            assert cluster.coordinator is not None
            where = [f"coordinator {cluster.coordinator.metrics_address}"]
            where += [f"{p.role} {p.metrics_address}" for p in cluster.shard_procs]
            print("Prometheus metrics at /metrics of: " + ", ".join(where), flush=True)
        if cluster.secrets is not None:
            s = cluster.secrets
            print("Connect with TLS and the admin key (the shard ports take only the cluster's own calls):")
            print(f"export SHOAL_TLS_CA={s.ca} SHOAL_TLS_CERT={s.client_cert} SHOAL_TLS_KEY={s.client_key}")
            print(f"export SHOAL_API_KEY=$(cat {s.admin_key})")
            print(
                f"python -c \"import shoal; print(shoal.Client('{cluster.address}').list_collections())\"", flush=True
            )
            keys_at = f"--data {args.data}" if cluster.etcd is not None else f"--auth {s.keys}"
            print(f"More keys: shoal keys {keys_at} create --role read|write|admin [--collections a,b]", flush=True)
        supervisor = Supervisor(cluster, lambda line: print(f"shoal up: {line}", file=sys.stderr, flush=True))
        while True:
            supervisor.tick()
            time.sleep(SUPERVISE_EVERY)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping Shoal...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print every process's state and each shard's collections (and, with the cluster's etcd, every shard
    group's members); with --check, exit 1 unless all serve."""
    from shoal._status import cluster_status, healthy, to_json, to_table

    endpoint = _meta_endpoint(args)
    status = cluster_status(args.address, *_client_security(args))
    found = None
    if endpoint:
        from shoal._group_status import meta_status

        found = asyncio.run(meta_status(endpoint, args.cluster, _member_credentials(args)))
    if args.json:
        doc = json.loads(to_json(status))
        if found is not None:
            meta = dataclasses.asdict(found)
            doc.update(etcd=meta["etcd"], groups=meta["groups"], moves=meta["moves"], mover=meta["mover"])
        print(json.dumps(doc, indent=2))
    else:
        print(to_table(status))
        if found is not None:
            from shoal._group_status import meta_table

            print()
            print(meta_table(found))
    return 1 if args.check and not healthy(status) else 0


def _meta_endpoint(args: argparse.Namespace) -> str:
    """The etcd endpoint from --meta, or from a local cluster's data folder (--data), or ""."""
    if args.meta:
        return str(args.meta)
    if args.data:
        from shoal._group_status import endpoint_of

        return endpoint_of(Path(args.data))
    return ""


def _member_credentials(args: argparse.Namespace) -> ClusterCredentials:
    """How `status` and `check` ask the shard group members: as a cluster member, with the cluster secret
    (--cluster-secret-file, or DATA/secrets of a `shoal up --secure` cluster) over TLS when the cluster has it."""
    local = Path(args.data) / "secrets" if args.data else None
    secret = _secret(args)
    ca = getattr(args, "tls_ca", None)
    if secret is None and local is not None and (local / "cluster.secret").exists():
        secret, ca = (local / "cluster.secret").read_bytes().strip(), ca or str(local / "ca.pem")
    return ClusterCredentials(TLS(ca=ca) if ca else None, secret)


def cmd_secrets(args: argparse.Namespace) -> int:
    """Make a cluster's secrets (CA, certificates, cluster secret, admin key) in a folder, as `up --secure` does."""
    from shoal._secrets import ensure_secrets

    hosts = [h for h in args.hosts.split(",") if h]
    found = ensure_secrets(Path(args.out), hosts)
    print(f"secrets in {found.folder} (server names: localhost, 127.0.0.1, {', '.join(hosts) or 'no others'})")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write the topology of a new cluster (nothing when one is there already)."""
    from shoal._meta_init import init_topology

    version = asyncio.run(init_topology(args.meta, args.cluster, args.groups))
    print(f"topology version {version} in etcd at {args.meta} (cluster {args.cluster})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Compare the members of every shard group; exit 0 when identical."""
    from shoal._check import check

    endpoint = _meta_endpoint(args)
    if not endpoint:
        raise SystemExit("shoal check needs --meta or --data (the cluster's etcd)")
    same, lines = asyncio.run(check(endpoint, args.cluster, _member_credentials(args)))
    print("\n".join(lines))
    return 0 if same else 1


def cmd_rebalance(args: argparse.Namespace) -> int:
    """Move slots until every group owns an equal share (resuming a run that was cut off)."""
    return _move_slots(args, ())


def cmd_drain(args: argparse.Namespace) -> int:
    """Move every slot of a group to the others, so that its members can be stopped."""
    _move_slots(args, (args.group,))
    print(f"group {args.group} owns no slots now: its members can be stopped", flush=True)
    return 0


def _move_slots(args: argparse.Namespace, drain: tuple[str, ...]) -> int:
    from shoal._meta import MetaStore
    from shoal._move_plan import RangeMove
    from shoal._move_runner import Progress, run_moves
    from shoal.coordinator.mover import move, resume

    endpoint = _meta_endpoint(args)
    if not endpoint:
        raise SystemExit(f"shoal {args.command} needs --meta or --data (the cluster's etcd)")
    if args.rate <= 0 or args.parallel < 1:
        raise SystemExit(f"shoal {args.command}: --rate must be above 0 and --parallel at least 1")

    def report(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    credentials = _member_credentials(args)

    async def move_one(meta: MetaStore, m: RangeMove, rate: float, progress: Progress) -> None:
        await move(
            meta, m.start, m.end, m.target, rate=rate, progress=lambda p: progress(p.points), credentials=credentials
        )

    async def resume_left(meta: MetaStore, progress: Progress) -> int:
        return await resume(meta, lambda p: progress(p.points), credentials=credentials)

    async def main() -> None:
        async with await MetaStore.connect(endpoint, args.cluster) as meta:
            await run_moves(
                meta,
                move_one,
                resume_left,
                report,
                drain=drain,
                rate=args.rate,
                parallel=args.parallel,
                max_slots=args.max_slots,
                dry_run=args.dry_run,
            )

    asyncio.run(main())
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy every shard of a running cluster into a new folder."""
    from shoal._backup import backup_cluster

    manifest = backup_cluster(args.address, Path(args.out), *_client_security(args), _secret(args))
    for shard in manifest["shards"]:
        cols = ", ".join(f"{n} (sequence {s})" for n, s in sorted(shard["collections"].items())) or "no collections"
        print(f"{shard['address']} -> {Path(args.out) / shard['folder']}: {cols}")
    print(f"backup of {len(manifest['shards'])} shards written to {args.out}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Make a data folder from a backup (a whole `shoal up` cluster, or one shard), optionally start it."""
    from shoal.shard.backup import restore_local, restore_shard

    if args.shard is not None:
        restore_shard(Path(args.backup), args.shard, Path(args.data))
        print(
            f"shard {args.shard} of {args.backup} restored into {args.data}; "
            f"start it with: shoal shard --data {args.data} --listen HOST:PORT"
        )
        return 0
    shards = restore_local(Path(args.backup), Path(args.data))
    print(f"{shards} shards of {args.backup} restored into {args.data}", flush=True)
    if not args.up:
        print(f"start it with: shoal up --data {args.data} --shards {shards}")
        return 0
    args.shards = shards
    return cmd_up(args)


def _add_tracing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--otlp-endpoint", default=None, help="export OpenTelemetry traces over OTLP/gRPC here (default: off)"
    )
    p.add_argument(
        "--trace-sample-ratio", type=float, default=None, help="fraction of traces to keep, 0..1 (default: all)"
    )


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", default=None, help="HOST:PORT to serve Prometheus /metrics on (default: off)")
    _add_tracing(p)


def _tls(ca: str | None, cert: str | None, key: str | None) -> TLS | None:
    return None if ca is None and cert is None and key is None else TLS(ca=ca, cert=cert, key=key)


def _secret(args: argparse.Namespace) -> bytes | None:
    path = getattr(args, "cluster_secret_file", None)
    return Path(path).read_bytes().strip() if path else None


def _server_security(args: argparse.Namespace, guard: Guard) -> ServerSecurity:
    from shoal._server import ServerSecurity, ServerTLS

    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("give both --tls-cert and --tls-key, or neither")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    tls = None
    if args.tls_cert:
        client_ca = Path(args.tls_client_ca) if args.tls_client_ca else None
        tls = ServerTLS(Path(args.tls_cert), Path(args.tls_key), client_ca)
    return ServerSecurity(tls=tls, guard=guard, insecure=args.insecure, probe_listen=args.probe_listen)


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", help="this server's certificate (PEM); with --tls-key, serve TLS only")
    p.add_argument("--tls-key", help="this server's private key (PEM)")
    p.add_argument("--tls-client-ca", help="mutual TLS: accept only clients with a certificate from this CA (PEM)")
    p.add_argument("--cluster-secret-file", help="a file holding the cluster secret (proves cluster membership)")
    p.add_argument(
        "--probe-listen", help="HOST:PORT answering grpc.health.v1 alone in plaintext, for probes that cannot do TLS"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without TLS and without auth (warned)"
    )


def _shard_tls_args(p: argparse.ArgumentParser) -> None:
    """How a coordinator reaches its shards, and a shard the other members of its group."""
    p.add_argument("--shard-tls-ca", help="CA of the shards' certificates: reach the shards over TLS")
    p.add_argument("--shard-tls-cert", help="this process's cluster member certificate, for the shards")
    p.add_argument("--shard-tls-key", help="its private key")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", default=None, help="API key (default: $SHOAL_API_KEY)")
    p.add_argument("--tls-ca", default=os.environ.get(ENV_TLS_CA), help="CA of the server (default: $SHOAL_TLS_CA)")
    p.add_argument("--tls-cert", default=os.environ.get(ENV_TLS_CERT), help="client certificate ($SHOAL_TLS_CERT)")
    p.add_argument("--tls-key", default=os.environ.get(ENV_TLS_KEY), help="client key ($SHOAL_TLS_KEY)")


def _client_security(args: argparse.Namespace) -> tuple[str | None, TLS | None]:
    return resolve(args.api_key, _tls(args.tls_ca, args.tls_cert, args.tls_key) or False)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="shoal", description="Shoal: a sharded vector database served over gRPC.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="print the traceback of an error, not only its line")
    p.add_argument("--log-level", default="INFO", help="logging level of server processes (default INFO)")
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text (default) or json: one JSON object a line"
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a local cluster: a coordinator and N shards")
    up.add_argument(
        "--shards",
        type=int,
        help=f"number of shard processes (default: the data folder's, {DEFAULT_SHARDS} for a new one)",
    )
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"coordinator port (default {DEFAULT_PORT})")
    up.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    up.add_argument("--data", default="./shoal-data", help="data folder (default ./shoal-data)")
    up.add_argument("--replicas", type=int, default=1, help="copies of each shard's data, on separate processes")
    up.add_argument("--etcd-members", type=int, default=1, help="etcd processes (3: one may die, the cluster goes on)")
    up.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="first metrics port: the coordinator's, then one per shard (default: --port + 1; any free with --port 0)",
    )
    up.add_argument("--no-metrics", action="store_true", help="serve no Prometheus metrics")
    _add_tracing(up)
    up.add_argument("--secure", action="store_true", help="TLS and API keys on; secrets made in DATA/secrets/")
    up.add_argument("--backup-root", help="where shards may write backups (default DATA/backups)")
    up.set_defaults(func=cmd_up)

    shard = sub.add_parser("shard", help="run one shard process")
    shard.add_argument("--data", required=True, help="the shard's data folder")
    shard.add_argument("--listen", default=f"{DEFAULT_HOST}:7100", help="HOST:PORT to serve on (port 0: any free port)")
    shard.add_argument("--cores", type=_cores, default=None, help="CPU cores to pin to, e.g. 0,1 or 0-3")
    _add_server_options(shard)
    shard.add_argument("--backup-root", help="the folder backups may be written under (none: backups refused)")
    _server_args(shard)
    shard.add_argument("--meta", default="", help=f"{ENDPOINTS}: run as a member of a shard group")
    shard.add_argument("--cluster", default="default", help="the cluster's name in etcd (default 'default')")
    shard.add_argument("--group", default="", help="with --meta: the shard group to join, e.g. g0")
    shard.add_argument(
        "--join",
        action="store_true",
        help="with --meta: join a running cluster as a new empty group (named --group, else the first free gN; "
        "kept in the data folder), or with --group of an existing group as a new replica of it",
    )
    shard.add_argument("--member", default="", help="with --meta: this member's name (default: the data folder's name)")
    shard.add_argument("--advertise", default="", help="with --meta: HOST:PORT others reach it at (default: --listen)")
    _shard_tls_args(shard)

    made = sub.add_parser("secrets", help="make a cluster's CA, certificates, cluster secret and admin key (0600)")
    made.add_argument("--out", required=True, help="the folder to write them to (kept when already there)")
    made.add_argument("--hosts", default="", help="the servers' host names or addresses, e.g. shard-0,coordinator")
    made.set_defaults(func=cmd_secrets)

    init = sub.add_parser("init", help="write a new cluster's topology into etcd: slots split over N shard groups")
    init.add_argument("--meta", required=True, help=f"the cluster's {ENDPOINTS}")
    init.add_argument("--cluster", default="default", help="the cluster's name in etcd")
    init.add_argument("--groups", type=int, required=True, help="number of shard groups (g0..gN-1)")
    init.set_defaults(func=cmd_init)
    shard.set_defaults(func=cmd_shard)

    coord = sub.add_parser("coordinator", help="run one coordinator process")
    where = coord.add_mutually_exclusive_group(required=True)
    where.add_argument("--shards", help="shard addresses HOST:PORT,HOST:PORT (slots split evenly)")
    where.add_argument("--topology", help="JSON topology file mapping slot ranges to shard addresses")
    where.add_argument("--meta", help=f"{ENDPOINTS}: follow the cluster's topology and groups there")
    coord.add_argument("--cluster", default="default", help="with --meta: the cluster's name in etcd")
    coord.add_argument("--listen", default=DEFAULT_ADDRESS, help="HOST:PORT to serve on")
    coord.add_argument(
        "--workers",
        type=int,
        default=1,
        help="coordinator processes sharing the port (SO_REUSEPORT), about one per core for the coordinator; "
        "worker i serves --metrics and --probe-listen on their port + i (default 1)",
    )
    # Set by `--workers` on each worker: this process shares its port with its sibling workers.
    coord.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    _add_server_options(coord)
    coord.add_argument("--auth", help="API keys file (see `shoal keys`): every call needs a key of the right role")
    coord.add_argument(
        "--meta-auth", action="store_true", help="with --meta: every call needs a key of the right role, from etcd"
    )
    _shard_tls_args(coord)
    _server_args(coord)
    coord.set_defaults(func=cmd_coordinator)

    status = sub.add_parser("status", help="print the cluster's shards, health and point counts")
    status.add_argument("--address", default=DEFAULT_ADDRESS, help="a coordinator's address")
    status.add_argument("--json", action="store_true", help="print the status as JSON (with metrics addresses)")
    status.add_argument("--check", action="store_true", help="exit with 1 unless every process is serving")
    _client_args(status)
    status.set_defaults(func=cmd_status)
    check = sub.add_parser("check", help="compare the replicas of every shard group (exit 0 when identical)")
    check.set_defaults(func=cmd_check)
    for command in (status, check):
        command.add_argument("--meta", default="", help=f"the cluster's {ENDPOINTS}")
        command.add_argument("--data", default="", help="or: the data folder of a `shoal up` cluster")
        command.add_argument("--cluster", default="default", help="the cluster's name in etcd")
        command.add_argument(
            "--cluster-secret-file", help="ask the group members with the cluster secret (default with --data: its own)"
        )
    check.add_argument("--tls-ca", help="with --cluster-secret-file: the CA of the members' certificates (TLS)")

    rebalance = sub.add_parser(
        "rebalance", help="move slots online until every shard group owns an equal share (rerun: resume)"
    )
    rebalance.set_defaults(func=cmd_rebalance)
    drain = sub.add_parser("drain", help="move every slot of a shard group to the others, online (rerun: resume)")
    drain.add_argument("group", help="the group to empty, as `shoal status` names it")
    drain.set_defaults(func=cmd_drain)
    for command in (rebalance, drain):
        command.add_argument("--meta", default="", help="the cluster's etcd endpoint HOST:PORT")
        command.add_argument("--data", default="", help="or: the data folder of a `shoal up` cluster")
        command.add_argument("--cluster", default="default", help="the cluster's name in etcd")
        command.add_argument("--cluster-secret-file", help="reach the shards with the cluster secret")
        command.add_argument("--tls-ca", help="with --cluster-secret-file: the CA of the members' certificates (TLS)")
        command.add_argument(
            "--rate",
            type=float,
            default=DEFAULT_MOVE_RATE,
            help=f"points per second copied, over all moves at once (default {DEFAULT_MOVE_RATE:,.0f})",
        )
        command.add_argument(
            "--parallel",
            type=int,
            default=DEFAULT_MOVE_PARALLEL,
            help=f"ranges moved at a time (default {DEFAULT_MOVE_PARALLEL})",
        )
        command.add_argument(
            "--max-slots",
            type=int,
            default=DEFAULT_MOVE_SLOTS,
            help=f"slots in one move at most (default {DEFAULT_MOVE_SLOTS} of 4096)",
        )
        command.add_argument("--dry-run", action="store_true", help="print the moves, move nothing")

    backup = sub.add_parser("backup", help="copy every shard of a running cluster into a new folder")
    backup.add_argument("--address", default=DEFAULT_ADDRESS, help="a coordinator's address")
    backup.add_argument(
        "--out", required=True, help="a new folder, writable by every shard (each shard copies itself there)"
    )
    _client_args(backup)
    backup.add_argument("--cluster-secret-file", help="the cluster secret: the shards are asked directly")
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser("restore", help="make a data folder from a backup (and with --up, start it)")
    restore.add_argument("backup", help="the backup folder (made by shoal backup)")
    restore.add_argument("--data", required=True, help="the new data folder (must not exist or be empty)")
    restore.add_argument(
        "--shard", type=int, default=None, help="restore only this shard, as the data folder of one `shoal shard`"
    )
    restore.add_argument("--up", action="store_true", help="start the restored cluster, as `shoal up` would")
    restore.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"with --up: coordinator port (default {DEFAULT_PORT})"
    )
    restore.add_argument("--host", default=DEFAULT_HOST, help="with --up: address to listen on")
    restore.set_defaults(func=cmd_restore)

    keys = sub.add_parser("keys", help="create, list or revoke API keys")
    where_keys = keys.add_mutually_exclusive_group(required=True)
    where_keys.add_argument("--auth", help="the API keys file the coordinators are started with")
    where_keys.add_argument("--meta", help=f"the cluster's {ENDPOINTS} (coordinators with --meta-auth)")
    where_keys.add_argument("--data", help="a local cluster's data folder (`shoal up --secure`): its etcd")
    keys.add_argument("--cluster", default="default", help="with --meta or --data: the cluster's name in etcd")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a new key; prints it alone on the last line")
    create.add_argument("--role", choices=["read", "write", "admin"], required=True)
    create.add_argument("--collections", help="limit the key to these collections (comma-separated)")
    keys_sub.add_parser("list", help="every key's id, role, state, creation time and collections")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id; servers refuse it within seconds")
    revoke.add_argument("id")
    keys.set_defaults(func=cmd_keys)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shoal` command."""
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `coordinator --workers` gives each worker
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ShoalError as exc:
        _fail(args, f"{exc.code.name}: {exc.message}")
    except Exception as exc:  # any other error: one line, the traceback only when asked for with -v
        _fail(args, f"{type(exc).__name__}: {exc}")
    return 1


def _fail(args: argparse.Namespace, message: str) -> None:
    """Print an error as one line (with -v, its traceback first)."""
    if args.verbose:
        traceback.print_exc()
    print("shoal: " + " ".join(message.split()), file=sys.stderr, flush=True)
