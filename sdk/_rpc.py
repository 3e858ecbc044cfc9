"""The one factory for client channels: every option with the reason it is set."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc

from shoal._config import (
    KEEPALIVE_MS,
    KEEPALIVE_TIMEOUT_MS,
    MAX_MESSAGE_BYTES,
    RETRY_ATTEMPTS,
    RETRY_INITIAL_BACKOFF_S,
    RETRY_MAX_BACKOFF_S,
)
from shoal._tls import TLS, ClusterCredentials

# Every option says why it is set.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Batches of vectors are large; beyond this the peer answers RESOURCE_EXHAUSTED.
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Notice a dead peer within seconds, even on an idle long-lived stream. gRPC waits for the ping's
    # answer for ping_timeout (default 60 s), not keepalive_timeout; the latter sets TCP_USER_TIMEOUT.
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect to a restarted peer quickly instead of backing off for minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Re-resolve host names on reconnect, so a peer that moved address is found again.
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
]


# The calls of the public API that are safe to repeat: they read, or write by id to the same end state.
# Creating and dropping a collection are left out: a repeat would answer ALREADY_EXISTS or NOT_FOUND.
IDEMPOTENT_METHODS = (
    "ListCollections",
    "DescribeCollection",
    "GetTopology",
    "Upsert",
    "UpsertStream",
    "Get",
    "Delete",
    "Count",
    "Scroll",
    "SetPayload",
    "Search",
    "SearchStream",
)

# gRPC retries these calls itself when they meet UNAVAILABLE (a coordinator restarting, a connection
# reset), with exponential backoff and jitter, and only while no answer has reached the caller.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "shoal.v1.Shoal", "method": m} for m in IDEMPOTENT_METHODS],
                "retryPolicy": {
                    "maxAttempts": RETRY_ATTEMPTS,
                    "initialBackoff": f"{RETRY_INITIAL_BACKOFF_S}s",
                    "maxBackoff": f"{RETRY_MAX_BACKOFF_S}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.enable_retries", 1),
    ("grpc.service_config", RETRY_SERVICE_CONFIG),
]


def _merged(defaults: list[tuple[str, Any]], extra: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # gRPC keeps the first of two options with one name, so a default would silently win over an override.
    options = dict(defaults)
    options.update(extra)
    return list(options.items())


def _open(address: str, options: list[tuple[str, Any]], tls: TLS | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.credentials(), options=options)


def _aio_open(address: str, options: list[tuple[str, Any]], tls: TLS | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, tls.credentials(), options=options)


def channel(address: str, tls: TLS | None = None, extra_options: Iterable[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to a Shoal process, over TLS when `tls` is given; `extra_options` replace defaults."""
    return _open(address, _merged(CHANNEL_OPTIONS, extra_options), tls)


def aio_channel(
    address: str, extra_options: Iterable[tuple[str, Any]] = (), tls: TLS | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to a Shoal process, over TLS when `tls` is given; `extra_options` replace defaults."""
    return _aio_open(address, _merged(CHANNEL_OPTIONS, extra_options), tls)


def client_channel(address: str, extra_options: Iterable[tuple[str, Any]] = (), tls: TLS | None = None) -> grpc.Channel:
    """The SDK's blocking channel to a coordinator: retries of idempotent calls, the caller's options on top."""
    return _open(address, _merged(CLIENT_OPTIONS, extra_options), tls)


def aio_client_channel(
    address: str, extra_options: Iterable[tuple[str, Any]] = (), tls: TLS | None = None
) -> grpc.aio.Channel:
    """The SDK's asyncio channel to a coordinator: retries of idempotent calls, the caller's options on top."""
    return _aio_open(address, _merged(CLIENT_OPTIONS, extra_options), tls)


def member_channel(
    address: str, credentials: ClusterCredentials, extra_options: Iterable[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel from one cluster member to another; its calls pass `credentials.metadata`."""
    return aio_channel(address, extra_options, tls=credentials.tls)
