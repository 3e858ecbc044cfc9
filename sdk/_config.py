"""Collection settings, their defaults and Shoal's limits: the one place they are defined."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shoal._errors import InvalidArgument
from shoal.v1 import types_pb2 as pb

MAX_DIM = 16384
MAX_K = 1024
MAX_EF = 4096  # the same bound as a collection's ef_search
MAX_QUERIES = 10_000  # query rows in one search call
MAX_BATCH_ROWS = 100_000  # points in one upsert, get or delete call
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # any gRPC message; larger ones get RESOURCE_EXHAUSTED
KEEPALIVE_MS = 10_000  # every process and client pings an idle peer this often
KEEPALIVE_TIMEOUT_MS = 5_000  # and counts it dead when the answer takes longer
MAX_NAME_LENGTH = 128
MAX_STRING_ID_BYTES = 512
SLOTS = 4096
# Slot moves (`shoal rebalance`, `shoal drain`). A move copies its range, then freezes writes to it for the
# last catch-up: a bounded range keeps each move (and the work a cut-off move loses) short; 256 slots ≈ 6%.
DEFAULT_MOVE_SLOTS = 256
# Ranges moved at a time. Moves side by side each step through their phases by compare-and-swap (a conflict reads
# the topology again; tests/test_resharding.py drains two at a time under load); one at a time by default, as the
# rate limit is shared and one move finishes (and frees its source's copies) sooner.
DEFAULT_MOVE_PARALLEL = 1
# Points per second copied over all moves at once (≈ 0.4 MB/s of 96-d float32). On 2 shared cores
# (loadtest/bench_move.py, 50k x 96-d) a drain under single-query search kept 0.64-0.71 of the foreground's
# throughput at 1,000/s (moving ~600/s) against 0.47-0.62 at 2,000/s (~750/s) and 0.47 unthrottled; `--rate`
# raises it when the cluster is idle.
DEFAULT_MOVE_RATE = 1_000.0
DEFAULT_SCROLL = 100  # points in one scroll page when no limit is given
MAX_SCROLL = 10_000  # points in one scroll page
MAX_SCROLL_BYTES = 32 * 1024 * 1024  # a scroll page, over all shards, stops growing here (half the message limit)

DEFAULT_METRIC = "cosine"
DEFAULT_PRECISION = "f32"
DEFAULT_ID_TYPE = "uint64"
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF_SEARCH = 64

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7070  # a coordinator's
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_TIMEOUT = 60.0  # seconds: the SDK's deadline of a call (None: no deadline)
DEFAULT_BATCH_ROWS = 2048  # points in one message of an upload
# What search, get and scroll return unless told: payloads (what a caller shows or feeds on, as in Qdrant's
# client), never vectors (the bulk of every answer, rarely wanted back).
DEFAULT_WITH_PAYLOAD = True
DEFAULT_WITH_VECTORS = False
# The SDK's retries of idempotent calls that met UNAVAILABLE (gRPC's retry policy, exponential backoff).
RETRY_ATTEMPTS = 5
RETRY_INITIAL_BACKOFF_S = 0.1
RETRY_MAX_BACKOFF_S = 2.0
# Shard processes of a new local cluster (`shoal up`): on one host every extra shard searches every query
# again on a graph nearly as costly, so one shard on all cores is the fastest layout (README, Performance).
DEFAULT_SHARDS = 1

METRICS = {"cosine": pb.METRIC_COSINE, "l2": pb.METRIC_L2, "ip": pb.METRIC_IP}
PRECISIONS = {"f32": pb.PRECISION_F32, "bf16": pb.PRECISION_BF16, "f16": pb.PRECISION_F16, "i8": pb.PRECISION_I8}
ID_TYPES = {"uint64": pb.ID_TYPE_UINT64, "string": pb.ID_TYPE_STRING}


def _name_of(table: Mapping[str, int], value: int, what: str) -> str:
    for name, number in table.items():
        if number == value:
            return name
    raise InvalidArgument(f"unknown {what} {value}; expected one of {sorted(table)}")


@dataclass(frozen=True)
class CollectionConfig:
    """What a collection is created with; immutable afterwards."""

    name: str
    dim: int
    metric: str = DEFAULT_METRIC
    precision: str = DEFAULT_PRECISION
    id_type: str = DEFAULT_ID_TYPE
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int = DEFAULT_EF_SEARCH

    def __post_init__(self) -> None:
        check_name(self.name)
        if not 1 <= self.dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be between 1 and {MAX_DIM}, got {self.dim}", field="config.dim")
        for field, table in (("metric", METRICS), ("precision", PRECISIONS), ("id_type", ID_TYPES)):
            if getattr(self, field) not in table:
                raise InvalidArgument(
                    f"{field} must be one of {sorted(table)}, got {getattr(self, field)!r}", field=f"config.{field}"
                )
        if not 2 <= self.m <= 256:
            raise InvalidArgument(f"m must be between 2 and 256, got {self.m}", field="config.m")
        if not 1 <= self.ef_construction <= MAX_EF:
            raise InvalidArgument(
                f"ef_construction must be between 1 and {MAX_EF}, got {self.ef_construction}",
                field="config.ef_construction",
            )
        if not 1 <= self.ef_search <= MAX_EF:
            raise InvalidArgument(
                f"ef_search must be between 1 and {MAX_EF}, got {self.ef_search}", field="config.ef_search"
            )

    def to_proto(self) -> pb.CollectionConfig:
        """The wire form."""
        return pb.CollectionConfig(
            name=self.name,
            dim=self.dim,
            metric=METRICS[self.metric],
            precision=PRECISIONS[self.precision],
            id_type=ID_TYPES[self.id_type],
            m=self.m,
            ef_construction=self.ef_construction,
            ef_search=self.ef_search,
        )

    @classmethod
    def from_proto(cls, msg: pb.CollectionConfig) -> CollectionConfig:
        """Validate a wire config, filling zero fields with the defaults."""
        return cls(
            name=msg.name,
            dim=msg.dim,
            metric=_name_of(METRICS, msg.metric or pb.METRIC_COSINE, "metric"),
            precision=_name_of(PRECISIONS, msg.precision or pb.PRECISION_F32, "precision"),
            id_type=_name_of(ID_TYPES, msg.id_type or pb.ID_TYPE_UINT64, "id_type"),
            m=msg.m or DEFAULT_M,
            ef_construction=msg.ef_construction or DEFAULT_EF_CONSTRUCTION,
            ef_search=msg.ef_search or DEFAULT_EF_SEARCH,
        )


def check_name(name: str) -> str:
    """A collection name: 1-128 characters of letters, digits, '_', '-' and '.'."""
    if not name:
        raise InvalidArgument("collection name must not be empty", field="name")
    if len(name) > MAX_NAME_LENGTH or not all(c.isascii() and (c.isalnum() or c in "_-.") for c in name):
        raise InvalidArgument(
            f"collection name {name[:MAX_NAME_LENGTH]!r} must be 1-{MAX_NAME_LENGTH} characters of "
            "ASCII letters, digits, '_', '-' and '.'"
        )
    return name


def check_k(k: int) -> int:
    """A k between 1 and MAX_K."""
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}", field="k")
    return k


def check_ef(ef: int) -> int:
    """A per-search ef: 0 (the collection's default) up to MAX_EF."""
    if not 0 <= ef <= MAX_EF:
        raise InvalidArgument(f"ef must be between 0 (the collection's default) and {MAX_EF}, got {ef}", field="ef")
    return ef
