"""Prometheus metrics of the server processes: every metric's one definition, and the /metrics HTTP server.

Server-only: `import shoal` never loads it. Label values are bounded sets (service and method names,
status codes, queue names, plans, collection names); never ids or free text.

Counters and histograms are observed where things happen, once per batch or per RPC, never per query.
A shard's gauges (points, memory, snapshot age, sequence, queue depths) are read at scrape time by the
shard's collector (shard/metrics.py), so writes pay nothing for them.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

# The *_created series double every counter and histogram on each scrape and no dashboard here uses them.
disable_created_metrics()

# Seconds: from a cached unary answer (~0.2 ms) to a long upload stream.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A WAL sync costs about 1 ms on a quiet SSD; slow disks and overload reach hundreds.
_SYNC_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Powers of two up to the coordinator's batch bound and the index worker's drain bound.
_QUERIES = tuple(float(2**i) for i in range(11))
_CANDIDATES = tuple(float(10 * 4**i) for i in range(10))

RPC_REQUESTS = Counter(
    "shoal_rpc_requests",  # exposed as shoal_rpc_requests_total
    "RPCs handled, by service, method and status code (the code the caller got)",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "shoal_rpc_duration_seconds",
    "Time from an RPC's arrival to its answer (a stream: to its end)",
    ["service", "method"],
    buckets=_SECONDS,
)
WAL_SYNC = Histogram(
    "shoal_wal_sync_seconds", "Time of one WAL sync (one per group of write batches)", buckets=_SYNC_SECONDS
)
SEARCH_BATCH_QUERIES = Histogram(
    "shoal_search_batch_queries",
    "Queries in one coalesced search batch: a coordinator fan-out or one call of a shard's index",
    ["stage"],
    buckets=_QUERIES,
)
PLANNER_QUERIES = Counter(
    "shoal_planner_queries",  # exposed as shoal_planner_queries_total
    "Filtered queries by the plan the shard's planner chose (exact, hnsw, or none when nothing matches)",
    ["plan"],
)
PLANNER_CANDIDATES = Histogram(
    "shoal_planner_candidates",
    "Candidates (k') a filtered HNSW search was widened to, one observation per batch",
    buckets=_CANDIDATES,
)
# The replication hook: the primary of a shard group sets these for each replica (group and member names
# are bounded by the topology). Nothing sets them until replication exists.
REPLICA_LAG = Gauge(
    "shoal_replica_lag_sequences", "Sequence numbers a replica is behind its primary", ["group", "replica"]
)
REPLICA_STATE = Gauge(
    "shoal_replica_state",
    "1 for a replica's current state (in_sync, catching_up, out_of_sync)",
    ["group", "replica", "state"],
)
REPLICA_STATES = ("in_sync", "catching_up", "out_of_sync")
CATCHUPS = Counter(
    "shoal_replica_catchups",  # exposed as shoal_replica_catchups_total
    "Returns of this member into its group's in-sync set, by the path it caught up by (log, snapshot)",
    ["group", "path"],
)


def set_replica(group: str, replica: str, lag: int, state: str) -> None:
    """Record a replica's lag and state (for the replication code of a primary)."""
    REPLICA_LAG.labels(group, replica).set(lag)
    for name in REPLICA_STATES:
        REPLICA_STATE.labels(group, replica, name).set(1.0 if name == state else 0.0)


def serve(listen: str) -> str:
    """Serve /metrics over HTTP on `listen` (HOST:PORT, port 0: any free one) in a thread; the bound address."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"cannot serve metrics on {listen!r}: give HOST:PORT")
    try:
        server, _ = start_http_server(int(port), addr=host, registry=REGISTRY)
    except OSError as exc:
        raise SystemExit(f"cannot serve metrics on {listen!r}: {exc}") from None
    return f"{host}:{server.server_address[1]}"
