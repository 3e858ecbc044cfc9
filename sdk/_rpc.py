"""The one factory for client channels: every option with the reason it is set."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from shoal._config import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS, MAX_MESSAGE_BYTES
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


def channel(address: str, tls: TLS | None = None) -> grpc.Channel:
    """A blocking channel to a Shoal process, over TLS when `tls` is given."""
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS)


def aio_channel(
    address: str, extra_options: Iterable[tuple[str, Any]] = (), tls: TLS | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to a Shoal process, over TLS when `tls` is given; `extra_options` replace defaults."""
    # gRPC keeps the first of two options with one name, so a default would silently win over an override.
    options = dict(CHANNEL_OPTIONS)
    options.update(extra_options)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options.items()))
    return grpc.aio.secure_channel(address, tls.credentials(), options=list(options.items()))


def member_channel(
    address: str, credentials: ClusterCredentials, extra_options: Iterable[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel from one cluster member to another; its calls pass `credentials.metadata`."""
    return aio_channel(address, extra_options, tls=credentials.tls)
