"""Locust load test of a Shoal cluster over gRPC, through the SDK.

    locust -f loadtest/locustfile.py --headless -u 16 -r 16 -t 60s --host 127.0.0.1:7070 \\
        --tasks search=8,search_batch=1,upsert=1 --csv bench-results/locust --html bench-results/locust.html

Each user runs the tasks named by --tasks in those proportions (name=weight), from TASKS: `search` (one
query per call), `search_batch` (--batch queries per call), `filtered_search` (one query with the --filter
payload filter) and `upsert` (--batch points per call, durably acknowledged); a new task is one function
added there. The collection is created (and --preload points loaded) when it does not exist, with
--dim dimensions, or vectors from --data (a folder with base.npy, or a .npy file). Every option also reads
a SHOAL_* environment variable (see `locust -f loadtest/locustfile.py --help`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import User, constant, events
from locust.env import Environment

import shoal

# gRPC's blocking calls must yield to gevent, or one user's call would stall every other user of the process;
# this has to happen before the first channel is made.
grpc_gevent.init_gevent()

DEFAULT_ADDRESS = "127.0.0.1:7070"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("Shoal")
    group.add_argument("--collection", default="locust", env_var="SHOAL_COLLECTION", help="collection to load")
    group.add_argument(
        "--tasks", default="search=8,upsert=1", env_var="SHOAL_TASKS", help="task=weight,... from: " + ", ".join(TASKS)
    )
    group.add_argument("--k", type=int, default=10, env_var="SHOAL_K", help="neighbours per query")
    group.add_argument("--ef", type=int, default=0, env_var="SHOAL_EF", help="search breadth (0: the default)")
    group.add_argument(
        "--batch",
        type=int,
        default=100,
        env_var="SHOAL_BATCH",
        help="queries per search_batch call and points per upsert call",
    )
    group.add_argument(
        "--filter",
        default='{"group": 0}',
        env_var="SHOAL_FILTER",
        help='JSON filter of filtered_search; points this file loads carry {"group": id %% 10}',
    )
    group.add_argument(
        "--data",
        default="",
        env_var="SHOAL_DATA",
        help="vectors to load and query (a folder with base.npy, or a .npy file); else random",
    )
    group.add_argument("--dim", type=int, default=384, env_var="SHOAL_DIM", help="dimension without --data")
    group.add_argument(
        "--preload",
        type=int,
        default=10_000,
        env_var="SHOAL_PRELOAD",
        help="points loaded when the collection is created",
    )


class _Shared:
    """What every user of a process shares: one client (one channel) and the vectors."""

    client: shoal.Client | None = None
    vectors: np.ndarray = np.zeros((0, 0), np.float32)
    ids = itertools.count()


def _vectors(options: Any) -> np.ndarray:
    if options.data:
        path = Path(options.data)
        base = np.load(path / "base.npy" if path.is_dir() else path, mmap_mode="r")
        return np.asarray(base[: max(options.preload, 1000)], dtype=np.float32)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, options.dim)).astype(np.float32)
    return centers[rng.integers(0, 50, max(options.preload, 1000))] + 0.3 * rng.standard_normal(
        (max(options.preload, 1000), options.dim)
    ).astype(np.float32)


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    weights = parse_tasks(options.tasks)
    ShoalUser.tasks = [TASKS[name] for name, weight in weights.items() for _ in range(weight)]
    _Shared.vectors = _vectors(options)
    _Shared.ids = itertools.count(len(_Shared.vectors))


@events.test_start.add_listener
def _create(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or environment.runner is None or type(environment.runner).__name__ == "WorkerRunner":
        return  # workers leave it to the master (or the local runner)
    with shoal.Client(environment.host or DEFAULT_ADDRESS, timeout=600) as client:
        if options.collection not in client.list_collections():
            x = _Shared.vectors[: options.preload]
            client.create_collection(options.collection, dim=x.shape[1])
            client.upsert(options.collection, ids=np.arange(len(x)), vectors=x, payloads=groups(np.arange(len(x))))


def groups(ids: np.ndarray) -> list[dict[str, Any]]:
    """The payloads of points this file writes: a group of ten, for filters of 10% selectivity."""
    return [{"group": int(i) % 10} for i in ids]


def parse_tasks(text: str) -> dict[str, int]:
    """'search=8,upsert=1' as {name: weight}; ValueError for an unknown or unavailable task."""
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in TASKS:
            raise ValueError(f"unknown or unavailable task {name!r}; choose from {sorted(TASKS)}")
        weights[name] = int(weight or 1)
    if not weights or not any(weights.values()):
        raise ValueError(f"give at least one task with a positive weight, e.g. search=8,upsert=1 (got {text!r})")
    return weights


class ShoalUser(User):
    """A client of the cluster at --host, running the --tasks mix with no think time."""

    wait_time = constant(0)

    def on_start(self) -> None:
        if _Shared.client is None:
            _Shared.client = shoal.Client(self.host or DEFAULT_ADDRESS, timeout=60)
        self.client = _Shared.client
        self.options = self.environment.parsed_options
        self.rng = np.random.default_rng()

    def timed(self, name: str, call: Callable[[], Any], size: Callable[[Any], int]) -> None:
        """Run one call and report it to locust: its time, and its size in result rows (bytes for locust)."""
        start = time.perf_counter()
        try:
            result = call()
        except shoal.ShoalError as exc:
            self.environment.events.request.fire(
                request_type="grpc",
                name=name,
                exception=exc,
                response_length=0,
                response_time=(time.perf_counter() - start) * 1e3,
                context={},
            )
            return
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            exception=None,
            response_length=size(result),
            response_time=(time.perf_counter() - start) * 1e3,
            context={},
        )

    def queries(self, rows: int) -> np.ndarray:
        """Random stored vectors, lightly perturbed, as queries."""
        picked = _Shared.vectors[self.rng.integers(0, len(_Shared.vectors), rows)]
        return picked + 0.01 * self.rng.standard_normal(picked.shape).astype(np.float32)


def search(user: ShoalUser) -> None:
    """One query per call."""
    o = user.options
    user.timed(
        "search",
        lambda: user.client.search(o.collection, user.queries(1)[0], k=o.k, ef=o.ef or None, with_payload=False),
        len,
    )


def search_batch(user: ShoalUser) -> None:
    """--batch queries per call."""
    o = user.options
    user.timed(
        f"search_batch{o.batch}",
        lambda: user.client.search(o.collection, user.queries(o.batch), k=o.k, ef=o.ef or None, with_payload=False),
        len,
    )


def upsert(user: ShoalUser) -> None:
    """--batch new points per call, durably acknowledged."""
    o = user.options
    ids = np.fromiter(itertools.islice(_Shared.ids, o.batch), dtype=np.uint64, count=o.batch)
    user.timed(
        f"upsert{o.batch}",
        lambda: user.client.upsert(o.collection, ids=ids, vectors=user.queries(o.batch), payloads=groups(ids)),
        int,
    )


def filtered_search(user: ShoalUser) -> None:
    """One query per call with the payload filter of --filter."""
    o = user.options
    where = json.loads(o.filter)
    user.timed(
        "filtered_search",
        lambda: user.client.search(
            o.collection, user.queries(1)[0], k=o.k, ef=o.ef or None, filter=where, with_payload=False
        ),
        len,
    )


TASKS: dict[str, Callable[[ShoalUser], None]] = {
    "search": search,
    "search_batch": search_batch,
    "filtered_search": filtered_search,
    "upsert": upsert,
}
