"""The `shoal` command: the one place that composes the processes (server code is imported only here)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from shoal import __version__
from shoal._config import DEFAULT_ADDRESS, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SHARDS
from shoal._errors import ShoalError


def _cores(text: str) -> list[int]:
    """Parse "0,1,4-5" into [0, 1, 4, 5]."""
    cores: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cores.extend(range(int(lo), int(hi or lo) + 1))
    return cores


def cmd_shard(args: argparse.Namespace) -> int:
    """Run one shard process."""
    from shoal.shard.server import run

    run(Path(args.data), args.listen, args.cores)
    return 0


def cmd_coordinator(args: argparse.Namespace) -> int:
    """Run one coordinator process."""
    from shoal.coordinator.server import run

    shards = args.shards.split(",") if args.shards else None
    run(shards, Path(args.topology) if args.topology else None, args.listen)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start a local cluster and keep it running until Ctrl-C or SIGTERM."""
    from shoal._local import LocalCluster

    cluster = LocalCluster(data=Path(args.data), shards=args.shards, port=args.port, host=args.host)
    # SIGTERM stops the cluster the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cluster.start()
        print(
            f"Shoal is ready at {cluster.address} ({args.shards} shards, data in {args.data}, "
            f"logs in {Path(args.data) / 'logs'}). Press Ctrl-C to stop.",
            flush=True,
        )
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping Shoal...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print each shard's address, health, collections and point counts."""
    from shoal._status import cluster_status

    print(cluster_status(args.address))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy every shard of a running cluster into a new folder."""
    from shoal._backup import backup_cluster

    manifest = backup_cluster(args.address, Path(args.out))
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


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="shoal", description="Shoal: a sharded vector database served over gRPC.")
    p.add_argument("--version", action="version", version=f"shoal {__version__}")
    p.add_argument("--log-level", default="INFO", help="logging level of server processes (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a local cluster: a coordinator and N shards")
    up.add_argument(
        "--shards", type=int, default=DEFAULT_SHARDS, help=f"number of shard processes (default {DEFAULT_SHARDS})"
    )
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"coordinator port (default {DEFAULT_PORT})")
    up.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    up.add_argument("--data", default="./shoal-data", help="data folder (default ./shoal-data)")
    up.set_defaults(func=cmd_up)

    shard = sub.add_parser("shard", help="run one shard process")
    shard.add_argument("--data", required=True, help="the shard's data folder")
    shard.add_argument("--listen", default=f"{DEFAULT_HOST}:7100", help="HOST:PORT to serve on (port 0: any free port)")
    shard.add_argument("--cores", type=_cores, default=None, help="CPU cores to pin to, e.g. 0,1 or 0-3")
    shard.set_defaults(func=cmd_shard)

    coord = sub.add_parser("coordinator", help="run one coordinator process")
    where = coord.add_mutually_exclusive_group(required=True)
    where.add_argument("--shards", help="shard addresses HOST:PORT,HOST:PORT (slots split evenly)")
    where.add_argument("--topology", help="JSON topology file mapping slot ranges to shard addresses")
    coord.add_argument("--listen", default=DEFAULT_ADDRESS, help="HOST:PORT to serve on")
    coord.set_defaults(func=cmd_coordinator)

    status = sub.add_parser("status", help="print the cluster's shards, health and point counts")
    status.add_argument("--address", default=DEFAULT_ADDRESS, help="a coordinator's address")
    status.set_defaults(func=cmd_status)

    backup = sub.add_parser("backup", help="copy every shard of a running cluster into a new folder")
    backup.add_argument("--address", default=DEFAULT_ADDRESS, help="a coordinator's address")
    backup.add_argument(
        "--out", required=True, help="a new folder, writable by every shard (each shard copies itself there)"
    )
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shoal` command."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        return int(args.func(args))
    except ShoalError as exc:
        print(f"shoal: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
