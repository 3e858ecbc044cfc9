"""Who may call what: roles, API keys (stored only as hashes), the access table and the one decision.

Server-side (the auth interceptor in `shoal._server` and the key stores use it; `import shoal` does not).
Every RPC of both services has a row; a method without one is refused (deny by default), and a test
enumerates both services by reflection so a new RPC without a row fails.

Keys are `shoal_<id>_<secret>` with a 256-bit random secret (`secrets.token_urlsafe(32)`); only the sha256 of
the whole token is stored. A slow password hash (bcrypt, argon2) protects guessable passwords; a 256-bit
random secret cannot be guessed from its sha256, and a fast hash keeps the check per call at about a
microsecond instead of milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from shoal._config import check_name
from shoal._errors import InvalidArgument
from shoal._tls import API_KEY_HEADER, API_KEY_SCHEME, CLUSTER_SECRET_HEADER

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")  # each role may do what the ones before it may
Need = Literal["read", "write", "admin", "cluster"]
CLUSTER: Need = "cluster"  # a method only cluster members (coordinators, peer shards) may call

_SHOAL = "/shoal.v1.Shoal/"
_SHARD = "/shoal.v1.Shard/"

# The access table: every method of both services and what a caller needs to call it.
ACCESS: dict[str, Need] = {
    _SHOAL + "CreateCollection": "admin",
    _SHOAL + "DropCollection": "admin",
    _SHOAL + "ListCollections": "read",
    _SHOAL + "DescribeCollection": "read",
    _SHOAL + "GetTopology": "admin",  # shard addresses: for operators (`shoal status`, `shoal backup`)
    _SHOAL + "GetStatus": "admin",  # every process's address and state: for operators (`shoal status`)
    _SHOAL + "Upsert": "write",
    _SHOAL + "UpsertStream": "write",
    _SHOAL + "Get": "read",
    _SHOAL + "Delete": "write",
    _SHOAL + "Count": "read",
    _SHOAL + "Scroll": "read",
    _SHOAL + "SetPayload": "write",
    _SHOAL + "Search": "read",
    _SHOAL + "SearchStream": "read",
    **{
        _SHARD + name: CLUSTER
        for name in (
            "CreateCollection",
            "DropCollection",
            "ListCollections",
            "DescribeCollection",
            "GetStatus",
            "Upsert",
            "Get",
            "Delete",
            "Count",
            "Scroll",
            "SetPayload",
            "Search",
            "SearchStream",
            "Snapshot",
            "Backup",
            "Verify",
            "Replicate",  # peer shards of a group
            "ReplicaState",
            "ReadLog",
            "ExportRange",  # the mover (slot moves)
            "ExportChanges",
            "Import",
            "DeleteRange",
            "AwaitTopology",
        )
    },
}
# Open to anyone who can connect: health (probes, load balancers) and reflection (the schema, for grpcurl).
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")


def hash_token(token: str) -> str:
    """The stored form of a key: the hex sha256 of the whole token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored: never the token, only its hash."""

    id: str
    role: Role
    hash: str
    collections: tuple[str, ...] = ()  # empty: every collection
    created: float = 0.0
    revoked: bool = False

    def to_json(self) -> dict[str, Any]:
        """The stored JSON form."""
        return {
            "id": self.id,
            "role": self.role,
            "hash": self.hash,
            "collections": list(self.collections),
            "created": self.created,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ApiKey:
        """A key from its stored JSON form."""
        return cls(
            id=str(value["id"]),
            role=check_role(str(value["role"])),
            hash=str(value["hash"]),
            collections=tuple(value.get("collections", ())),
            created=float(value.get("created", 0.0)),
            revoked=bool(value.get("revoked", False)),
        )


def check_role(role: str) -> Role:
    """A role name, or InvalidArgument."""
    for known in ROLES:
        if role == known:
            return known
    raise InvalidArgument(f"role must be one of {list(ROLES)}, got {role!r}")


def new_key(role: str, collections: Iterable[str] = ()) -> tuple[str, ApiKey]:
    """A fresh key: the token (shown once, to the user) and what is stored."""
    key_id = secrets.token_hex(6)
    token = f"shoal_{key_id}_{secrets.token_urlsafe(32)}"
    names = tuple(sorted({check_name(c) for c in collections}))
    return token, ApiKey(key_id, check_role(role), hash_token(token), names, time.time())


@dataclass(frozen=True)
class Verdict:
    """The decision on one call: a refusal (code and message) or, when allowed, the collections it is limited to."""

    code: grpc.StatusCode | None = None
    message: str = ""
    collections: frozenset[str] | None = None  # None: any collection


ALLOWED = Verdict()
_UNAUTHENTICATED = Verdict(grpc.StatusCode.UNAUTHENTICATED, "a valid API key is required")


def _header(metadata: Iterable[tuple[str, Any]] | None, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else bytes(value).decode(errors="replace")
    return None


@dataclass
class Guard:
    """The one decision behind the auth interceptor: who calls, and may they call this method.

    `keys` looks a key up by its hash (None: this server checks no API keys); `cluster_secret` is the secret
    that proves cluster membership; `members_by_certificate` says the TLS handshake already proved it
    (mutual TLS against the cluster CA).
    """

    keys: Callable[[str], ApiKey | None] | None = None
    cluster_secret: bytes | None = None
    members_by_certificate: bool = False
    open: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.open = self.keys is None and self.cluster_secret is None and not self.members_by_certificate

    def decide(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Verdict:
        """The verdict on calling `method` with these metadata."""
        if self.open or method.startswith(OPEN_PREFIXES):
            return ALLOWED
        need = ACCESS.get(method)
        if need is None:
            return Verdict(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not in the access table")
        if need == CLUSTER:
            return self._member(metadata)
        if self.keys is None:  # a server without keys is reached only by members
            return self._member(metadata)
        header = _header(metadata, API_KEY_HEADER)
        if header is None or not header.startswith(API_KEY_SCHEME):
            return _UNAUTHENTICATED
        key = self.keys(hash_token(header[len(API_KEY_SCHEME) :]))
        if key is None or key.revoked:
            return _UNAUTHENTICATED
        if ROLES.index(key.role) < ROLES.index(need):
            return Verdict(grpc.StatusCode.PERMISSION_DENIED, f"a {key.role} key may not call {method}")
        return Verdict(collections=frozenset(key.collections)) if key.collections else ALLOWED

    def _member(self, metadata: Iterable[tuple[str, Any]] | None) -> Verdict:
        if self.members_by_certificate:
            return ALLOWED
        secret = _header(metadata, CLUSTER_SECRET_HEADER)
        if self.cluster_secret is not None and secret is not None:
            if hmac.compare_digest(secret.encode(), self.cluster_secret):
                return ALLOWED
            return Verdict(grpc.StatusCode.UNAUTHENTICATED, "wrong cluster secret")
        if _header(metadata, API_KEY_HEADER) is not None:
            return Verdict(grpc.StatusCode.PERMISSION_DENIED, "this port is for cluster members, not API keys")
        return Verdict(grpc.StatusCode.UNAUTHENTICATED, "this port is for cluster members only")


def collection_of(request: Any) -> str:
    """The collection a request names ('' for one that names none)."""
    collection = getattr(request, "collection", None)
    if isinstance(collection, str):
        return collection
    name = getattr(request, "name", None)
    if isinstance(name, str):
        return name
    config = getattr(request, "config", None)
    return str(config.name) if config is not None else ""
