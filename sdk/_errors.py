"""The one error catalogue of Shoal, shared by the SDK and the servers.

Every failure is a `ShoalError` carrying its gRPC status `code`:

    ShoalError
    ├── InvalidArgument      INVALID_ARGUMENT     bad input; nothing was changed
    ├── NotFound             NOT_FOUND            unknown collection
    ├── AlreadyExists        ALREADY_EXISTS       collection exists with another config
    ├── FailedPrecondition   FAILED_PRECONDITION  the system is not in a state to do it
    ├── ResourceExhausted    RESOURCE_EXHAUSTED   message too large, disk full
    ├── Unavailable          UNAVAILABLE          a shard or the coordinator cannot answer
    ├── DeadlineExceeded     DEADLINE_EXCEEDED    the call's deadline passed
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED
    └── Internal             INTERNAL             a bug; details are only in the server log

Servers raise these; one translator turns them into status codes. The SDK turns a status
code back into the same class with `from_rpc_error`.
"""

from __future__ import annotations

import grpc


class ShoalError(Exception):
    """Base of every Shoal error; `code` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def error_for_code(code: grpc.StatusCode, message: str) -> ShoalError:
    """The catalogue's exception for a status code (ShoalError for codes it does not name)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = ShoalError(message)
        err.code = code
        return err
    return cls(message)


def from_rpc_error(exc: grpc.RpcError) -> ShoalError:
    """Turn a failed gRPC call into the catalogue's exception."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for_code(code, details or code.name)


def status_from_value(value: int) -> grpc.StatusCode:
    """The StatusCode whose integer value (as carried in stream answers' error_code) is `value`."""
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)
