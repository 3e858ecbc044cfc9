"""Client credentials: `TLS` (certificate files) and the API key, from arguments or SHOAL_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

PathLike = str | os.PathLike[str]

# The metadata a call carries: a user's API key to a coordinator, the cluster secret to a shard.
API_KEY_HEADER = "authorization"
API_KEY_SCHEME = "Bearer "
CLUSTER_SECRET_HEADER = "shoal-cluster-secret"

ENV_API_KEY = "SHOAL_API_KEY"
ENV_TLS_CA = "SHOAL_TLS_CA"
ENV_TLS_CERT = "SHOAL_TLS_CERT"
ENV_TLS_KEY = "SHOAL_TLS_KEY"

Metadata = tuple[tuple[str, str], ...]


def _read(path: PathLike | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS to a Shoal server: the CA that signed its certificate and, for mutual TLS, this client's cert and key.

    All three are PEM file paths. Without `ca` the system's trusted roots are used.
    """

    ca: PathLike | None = None
    cert: PathLike | None = None
    key: PathLike | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key for a client certificate, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc's channel credentials made from the files (read now)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TLS | None:
        """TLS from SHOAL_TLS_CA, SHOAL_TLS_CERT and SHOAL_TLS_KEY; None when none of them is set."""
        env = os.environ if env is None else env
        ca, cert, key = (env.get(name) or None for name in (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY))
        if ca is None and cert is None and key is None:
            return None
        return cls(ca=ca, cert=cert, key=key)


def api_key_metadata(api_key: str | None) -> Metadata:
    """The metadata that presents `api_key` (none without one)."""
    return ((API_KEY_HEADER, API_KEY_SCHEME + api_key),) if api_key else ()


def cluster_metadata(secret: bytes | None) -> Metadata:
    """The metadata that proves cluster membership with the cluster secret (none without one)."""
    return ((CLUSTER_SECRET_HEADER, secret.decode()),) if secret else ()


@dataclass(frozen=True)
class ClusterCredentials:
    """How one cluster member reaches another (coordinator to shard, shard to shard): TLS and the cluster secret."""

    tls: TLS | None = None  # the CA of the members' certificates and, for mutual TLS, this member's certificate
    secret: bytes | None = None

    @property
    def metadata(self) -> Metadata:
        """The metadata every call to a member carries."""
        return cluster_metadata(self.secret)


def resolve(api_key: str | None, tls: TLS | None | bool) -> tuple[str | None, TLS | None]:
    """The API key and TLS given, or else from the SHOAL_* variables; `tls=False` means plaintext whatever is set."""
    key = api_key if api_key is not None else (os.environ.get(ENV_API_KEY) or None)
    if tls is False:
        return key, None
    if tls is True:
        return key, TLS.from_env() or TLS()
    return key, tls if tls is not None else TLS.from_env()
