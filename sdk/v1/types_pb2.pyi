from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]
    METRIC_IP: _ClassVar[Metric]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_F32: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]
    PRECISION_F16: _ClassVar[Precision]
    PRECISION_I8: _ClassVar[Precision]

class IdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ID_TYPE_UNSPECIFIED: _ClassVar[IdType]
    ID_TYPE_UINT64: _ClassVar[IdType]
    ID_TYPE_STRING: _ClassVar[IdType]
METRIC_UNSPECIFIED: Metric
METRIC_COSINE: Metric
METRIC_L2: Metric
METRIC_IP: Metric
PRECISION_UNSPECIFIED: Precision
PRECISION_F32: Precision
PRECISION_BF16: Precision
PRECISION_F16: Precision
PRECISION_I8: Precision
ID_TYPE_UNSPECIFIED: IdType
ID_TYPE_UINT64: IdType
ID_TYPE_STRING: IdType

class Matrix(_message.Message):
    __slots__ = ("rows", "dim", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ids(_message.Message):
    __slots__ = ("u64", "str")
    U64_FIELD_NUMBER: _ClassVar[int]
    STR_FIELD_NUMBER: _ClassVar[int]
    u64: bytes
    str: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, u64: _Optional[bytes] = ..., str: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectionConfig(_message.Message):
    __slots__ = ("name", "dim", "metric", "precision", "id_type", "m", "ef_construction", "ef_search")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    precision: Precision
    id_type: IdType
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., precision: _Optional[_Union[Precision, str]] = ..., id_type: _Optional[_Union[IdType, str]] = ..., m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("address", "count", "memory_bytes")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    address: str
    count: int
    memory_bytes: int
    def __init__(self, address: _Optional[str] = ..., count: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("config", "count", "shards")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    config: CollectionConfig
    count: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardStats]
    def __init__(self, config: _Optional[_Union[CollectionConfig, _Mapping]] = ..., count: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: CollectionConfig
    def __init__(self, config: _Optional[_Union[CollectionConfig, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("info", "created")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    info: CollectionInfo
    created: bool
    def __init__(self, info: _Optional[_Union[CollectionInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "ids", "vectors", "payloads")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: Ids
    vectors: Matrix
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Union[Ids, _Mapping]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "token")
    class TokenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    token: _containers.ScalarMap[str, int]
    def __init__(self, upserted: _Optional[int] = ..., token: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors", "with_payload", "token", "topology")
    class TokenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: Ids
    with_vectors: bool
    with_payload: bool
    token: _containers.ScalarMap[str, int]
    topology: int
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Union[Ids, _Mapping]] = ..., with_vectors: _Optional[bool] = ..., with_payload: _Optional[bool] = ..., token: _Optional[_Mapping[str, int]] = ..., topology: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("ids", "vectors", "payloads")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    ids: Ids
    vectors: Matrix
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Union[Ids, _Mapping]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: Ids
    filter: str
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Union[Ids, _Mapping]] = ..., filter: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "token")
    class TokenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DELETED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    token: _containers.ScalarMap[str, int]
    def __init__(self, deleted: _Optional[int] = ..., token: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "filter", "token", "topology")
    class TokenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: str
    token: _containers.ScalarMap[str, int]
    topology: int
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[str] = ..., token: _Optional[_Mapping[str, int]] = ..., topology: _Optional[int] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "ef", "with_payload", "with_vectors", "request_id", "filter", "cancel", "traceparent", "token", "topology")
    class TokenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: Matrix
    k: int
    ef: int
    with_payload: bool
    with_vectors: bool
    request_id: int
    filter: str
    cancel: bool
    traceparent: str
    token: _containers.ScalarMap[str, int]
    topology: int
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Union[Matrix, _Mapping]] = ..., k: _Optional[int] = ..., ef: _Optional[int] = ..., with_payload: _Optional[bool] = ..., with_vectors: _Optional[bool] = ..., request_id: _Optional[int] = ..., filter: _Optional[str] = ..., cancel: _Optional[bool] = ..., traceparent: _Optional[str] = ..., token: _Optional[_Mapping[str, int]] = ..., topology: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("k", "ids", "distances", "counts", "payloads", "vectors", "request_id", "plan", "error")
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    k: int
    ids: Ids
    distances: Matrix
    counts: bytes
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    vectors: Matrix
    request_id: int
    plan: str
    error: _status_pb2.Status
    def __init__(self, k: _Optional[int] = ..., ids: _Optional[_Union[Ids, _Mapping]] = ..., distances: _Optional[_Union[Matrix, _Mapping]] = ..., counts: _Optional[bytes] = ..., payloads: _Optional[_Iterable[bytes]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., request_id: _Optional[int] = ..., plan: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("collection", "filter", "limit", "cursor", "with_payload", "with_vectors", "max_bytes", "topology")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: str
    limit: int
    cursor: str
    with_payload: bool
    with_vectors: bool
    max_bytes: int
    topology: int
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., with_payload: _Optional[bool] = ..., with_vectors: _Optional[bool] = ..., max_bytes: _Optional[int] = ..., topology: _Optional[int] = ...) -> None: ...

class ScrollResponse(_message.Message):
    __slots__ = ("ids", "vectors", "payloads", "next_cursor")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    ids: Ids
    vectors: Matrix
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    next_cursor: str
    def __init__(self, ids: _Optional[_Union[Ids, _Mapping]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., payloads: _Optional[_Iterable[bytes]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class SetPayloadRequest(_message.Message):
    __slots__ = ("collection", "ids", "set", "unset")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    UNSET_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: Ids
    set: bytes
    unset: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Union[Ids, _Mapping]] = ..., set: _Optional[bytes] = ..., unset: _Optional[_Iterable[str]] = ...) -> None: ...

class SetPayloadResponse(_message.Message):
    __slots__ = ("updated", "token")
    class TokenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    updated: int
    token: _containers.ScalarMap[str, int]
    def __init__(self, updated: _Optional[int] = ..., token: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ShardRange(_message.Message):
    __slots__ = ("address", "slot_start", "slot_end")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOT_START_FIELD_NUMBER: _ClassVar[int]
    SLOT_END_FIELD_NUMBER: _ClassVar[int]
    address: str
    slot_start: int
    slot_end: int
    def __init__(self, address: _Optional[str] = ..., slot_start: _Optional[int] = ..., slot_end: _Optional[int] = ...) -> None: ...

class GetTopologyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TopologyInfo(_message.Message):
    __slots__ = ("version", "shards")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardRange]
    def __init__(self, version: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardRange, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionStatus(_message.Message):
    __slots__ = ("name", "points", "memory_bytes", "payload_index_entries", "snapshot_age_seconds", "snapshot_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_INDEX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    points: int
    memory_bytes: int
    payload_index_entries: int
    snapshot_age_seconds: float
    snapshot_sequence: int
    def __init__(self, name: _Optional[str] = ..., points: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., payload_index_entries: _Optional[int] = ..., snapshot_age_seconds: _Optional[float] = ..., snapshot_sequence: _Optional[int] = ...) -> None: ...

class ProcessStatus(_message.Message):
    __slots__ = ("role", "address", "state", "metrics_address", "group", "member_role", "slot_start", "slot_end", "sequence", "collections", "error", "lag")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ROLE_FIELD_NUMBER: _ClassVar[int]
    SLOT_START_FIELD_NUMBER: _ClassVar[int]
    SLOT_END_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    role: str
    address: str
    state: str
    metrics_address: str
    group: str
    member_role: str
    slot_start: int
    slot_end: int
    sequence: int
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStatus]
    error: str
    lag: int
    def __init__(self, role: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., metrics_address: _Optional[str] = ..., group: _Optional[str] = ..., member_role: _Optional[str] = ..., slot_start: _Optional[int] = ..., slot_end: _Optional[int] = ..., sequence: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CollectionStatus, _Mapping]]] = ..., error: _Optional[str] = ..., lag: _Optional[int] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("topology_version", "processes")
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    topology_version: int
    processes: _containers.RepeatedCompositeFieldContainer[ProcessStatus]
    def __init__(self, topology_version: _Optional[int] = ..., processes: _Optional[_Iterable[_Union[ProcessStatus, _Mapping]]] = ...) -> None: ...
