from shoal.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportRangeRequest(_message.Message):
    __slots__ = ("collection", "start", "end", "cursor", "limit")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    start: int
    end: int
    cursor: str
    limit: int
    def __init__(self, collection: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ExportChangesRequest(_message.Message):
    __slots__ = ("collection", "start", "end", "after", "upto")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    UPTO_FIELD_NUMBER: _ClassVar[int]
    collection: str
    start: int
    end: int
    after: int
    upto: int
    def __init__(self, collection: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., after: _Optional[int] = ..., upto: _Optional[int] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("points", "deleted", "cursor", "seq")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    points: _types_pb2.UpsertRequest
    deleted: _types_pb2.Ids
    cursor: str
    seq: int
    def __init__(self, points: _Optional[_Union[_types_pb2.UpsertRequest, _Mapping]] = ..., deleted: _Optional[_Union[_types_pb2.Ids, _Mapping]] = ..., cursor: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("points", "deleted")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    points: _types_pb2.UpsertRequest
    deleted: _types_pb2.Ids
    def __init__(self, points: _Optional[_Union[_types_pb2.UpsertRequest, _Mapping]] = ..., deleted: _Optional[_Union[_types_pb2.Ids, _Mapping]] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("written",)
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    def __init__(self, written: _Optional[int] = ...) -> None: ...

class DeleteRangeRequest(_message.Message):
    __slots__ = ("collection", "start", "end")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    collection: str
    start: int
    end: int
    def __init__(self, collection: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class DeleteRangeResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class AwaitTopologyRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class AwaitTopologyResponse(_message.Message):
    __slots__ = ("version", "seq")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    version: int
    seq: int
    def __init__(self, version: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("term", "seq", "plan", "primary")
    TERM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    term: int
    seq: int
    plan: bytes
    primary: str
    def __init__(self, term: _Optional[int] = ..., seq: _Optional[int] = ..., plan: _Optional[bytes] = ..., primary: _Optional[str] = ...) -> None: ...

class ReplicateAck(_message.Message):
    __slots__ = ("seq", "term", "digest")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    term: int
    digest: bytes
    def __init__(self, seq: _Optional[int] = ..., term: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class ReplicaStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStateResponse(_message.Message):
    __slots__ = ("seq", "term", "group", "member", "role", "log_start")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LOG_START_FIELD_NUMBER: _ClassVar[int]
    seq: int
    term: int
    group: str
    member: str
    role: str
    log_start: int
    def __init__(self, seq: _Optional[int] = ..., term: _Optional[int] = ..., group: _Optional[str] = ..., member: _Optional[str] = ..., role: _Optional[str] = ..., log_start: _Optional[int] = ...) -> None: ...

class ReadLogRequest(_message.Message):
    __slots__ = ("after",)
    AFTER_FIELD_NUMBER: _ClassVar[int]
    after: int
    def __init__(self, after: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionSequence(_message.Message):
    __slots__ = ("collection", "sequence")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    sequence: int
    def __init__(self, collection: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("snapshots", "failed")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[CollectionSequence]
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[CollectionSequence, _Mapping]]] = ..., failed: _Optional[_Iterable[str]] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionSequence]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionSequence, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("ids", "stored", "indexed", "missing", "extra", "unmapped", "consistent")
    IDS_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    UNMAPPED_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    ids: _types_pb2.Ids
    stored: int
    indexed: int
    missing: bytes
    extra: bytes
    unmapped: int
    consistent: bool
    def __init__(self, ids: _Optional[_Union[_types_pb2.Ids, _Mapping]] = ..., stored: _Optional[int] = ..., indexed: _Optional[int] = ..., missing: _Optional[bytes] = ..., extra: _Optional[bytes] = ..., unmapped: _Optional[int] = ..., consistent: _Optional[bool] = ...) -> None: ...
