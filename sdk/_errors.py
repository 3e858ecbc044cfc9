"""The one error catalogue of Shoal, shared by the SDK and the servers.

Every failure is a `ShoalError` carrying its gRPC status `code`:

    ShoalError
    ├── InvalidArgument      INVALID_ARGUMENT     bad input; nothing was changed
    ├── NotFound             NOT_FOUND            unknown collection
    ├── AlreadyExists        ALREADY_EXISTS       collection exists with another config
    ├── FailedPrecondition   FAILED_PRECONDITION  the system is not in a state to do it
    ├── ResourceExhausted    RESOURCE_EXHAUSTED   message too large, disk full
    ├── Unavailable          UNAVAILABLE          a shard or the coordinator cannot answer
    ├── Aborted              ABORTED              a shard is at another topology version (slots moved): retry
    ├── DeadlineExceeded     DEADLINE_EXCEEDED    the call's deadline passed
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED
    └── Internal             INTERNAL             a bug; details are only in the server log

Servers raise these; one translator (`shoal._server.error_status`) turns them into a `google.rpc.Status`
with details: `BadRequest` field violations for bad input, `RetryInfo` where a retry helps. The SDK turns
a status back into the same class, with `field` and `retry_after`, with `from_rpc_error`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2

# The trailing metadata key gRPC carries a call's google.rpc.Status in (as grpcio-status writes it).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ShoalError(Exception):
    """Base of every Shoal error; `code` is the gRPC status code.

    `field` names the request field at fault (a dotted path such as "k", "config.dim" or "filter.year.$gt"),
    when known; `retry_after` is how many seconds to wait before a retry, when a retry may succeed.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after


class InvalidArgument(ShoalError):
    """The request is malformed or out of range; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ShoalError):
    """The named collection does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ShoalError):
    """The collection already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ShoalError):
    """The system is not in a state that allows the call."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ShoalError):
    """A limit was hit: message size, disk space."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ShoalError):
    """A process could not be reached or is not serving; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class Aborted(ShoalError):
    """A read that reached a shard at another topology version than its caller's (between coordinators and shards)."""

    code = grpc.StatusCode.ABORTED


class DeadlineExceeded(ShoalError):
    """The deadline passed before the answer."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ShoalError):
    """The caller is not authenticated."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ShoalError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Internal(ShoalError):
    """An unexpected server error."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ShoalError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Aborted,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def error_for_code(
    code: grpc.StatusCode, message: str, *, field: str | None = None, retry_after: float | None = None
) -> ShoalError:
    """The catalogue's exception for a status code (ShoalError for codes it does not name)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = ShoalError(message, field=field, retry_after=retry_after)
        err.code = code
        return err
    return cls(message, field=field, retry_after=retry_after)


def to_status(exc: ShoalError) -> status_pb2.Status:
    """A catalogue error as a google.rpc.Status, its field and retry delay as BadRequest and RetryInfo details."""
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message)
    if exc.field is not None:
        bad = error_details_pb2.BadRequest()
        bad.field_violations.add(field=exc.field, description=exc.message)
        status.details.add().Pack(bad)
    if exc.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(round(exc.retry_after * 1e9))
        status.details.add().Pack(retry)
    return status


def from_status(status: status_pb2.Status) -> ShoalError:
    """The catalogue's exception for a google.rpc.Status, with the field and retry delay of its details."""
    field = retry_after = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else None
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    code = status_from_value(status.code)
    return error_for_code(code, status.message or code.name, field=field, retry_after=retry_after)


def from_rpc_error(exc: grpc.RpcError) -> ShoalError:
    """Turn a failed gRPC call into the catalogue's exception, with the details of its rich status if any."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    trailers: Sequence[tuple[str, str | bytes]] = (
        (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ()
    )
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code == code.value[0]:
                return from_status(status)
    return error_for_code(code, details or code.name)


def status_from_value(value: int) -> grpc.StatusCode:
    """The StatusCode whose integer value (as carried in stream answers' error_code) is `value`."""
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)
