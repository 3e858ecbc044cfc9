"""The cluster metadata store: catalogue, topology, shard groups and API keys in etcd, each change one etcd transaction.

Server-side code (coordinator and shard import it; `import shoal` does not). Agreement is etcd's: leases
for liveness, compare-and-swap transactions for every decision, watches for change. A lost compare raises
FailedPrecondition, an unreachable etcd Unavailable.

The client library is aetcd (asyncio over grpc.aio). Tried, with grpcio 1.85 and protobuf 7.36:
- aetcd 1.0.0: installs and works (KV, txn, leases, watch from a revision); the successor of the
  long-lived python-etcd3 API, released in 2026, pins only grpcio<2 and protobuf<8. No type hints, so it
  stays behind this module.
- etcd3aio 0.3.0: works and is typed, but is a young single-author project (first release 2026).
- etcd3-async-client 0.3.1: needs grpcio-tools at run time (it generates code on import).
- etcd3gw 2.7.0: blocking, over etcd's JSON gateway (base64 everywhere), not asyncio.
- etcd-client-py 0.5.1: a Rust binding with its own runtime; more moving parts than a gRPC client.
- etcd3 0.12 and its forks: stale generated code for protobuf 3, unmaintained since 2020.

Several endpoints (`--meta a:2379,b:2379,c:2379`, as etcd's own clients take them): aetcd connects to one
host:port only, but it hands gRPC a target string, and a gRPC target can be a list of addresses. gRPC's
default balancer (pick_first) then uses the first address that answers and, when that connection dies, the
next one that does; calls in flight fail with UNAVAILABLE (callers retry, watches are re-opened), and a
lease keeps being renewed through the same channel. Such lists hold IP literals only, so names are
resolved once, at connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import aetcd
import aetcd.exceptions
import grpc

from shoal._access import ApiKey
from shoal._config import CollectionConfig, check_name
from shoal._errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ShoalError,
    Unauthenticated,
    Unavailable,
    error_for_code,
)
from shoal._meta_values import (
    Change,
    GroupState,
    Keys,
    Move,
    Phase,
    Section,
    SlotRange,
    Topology,
    check_moves,
    check_ranges,
    config_from_json,
    config_to_json,
    decode,
    encode,
    group_from_kvs,
    moved,
    moves_from_json,
    ranges_from_json,
    ranges_to_json,
)

log = logging.getLogger(__name__)

LEASE_TTL = 10  # seconds a member stays listed after its process stops renewing
CALL_TIMEOUT = 5  # seconds for one etcd call

_ERRORS: dict[type[Exception], type[ShoalError]] = {
    aetcd.exceptions.ConnectionFailedError: Unavailable,
    aetcd.exceptions.ConnectionTimeoutError: Unavailable,
    aetcd.exceptions.PreconditionFailedError: FailedPrecondition,
    aetcd.exceptions.RevisionCompactedError: FailedPrecondition,
    aetcd.exceptions.InvalidArgumentError: InvalidArgument,
    aetcd.exceptions.UnauthenticatedError: Unauthenticated,
}


def channel_target(endpoints: str) -> str:
    """The gRPC target of etcd endpoints "HOST:PORT[,HOST:PORT...]": one as given, several as an address list
    (names resolved now; IPv4 addresses, or IPv6 ones when a name has no IPv4 address)."""
    parts = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not parts:
        raise InvalidArgument("no etcd endpoint given: HOST:PORT[,HOST:PORT...]")
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"etcd endpoint {part!r} is not HOST:PORT")
    if len(parts) == 1:
        return parts[0]
    resolved: list[tuple[socket.AddressFamily, str]] = []
    for part in parts:
        host, _, port = part.rpartition(":")
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unavailable(f"etcd endpoint {part!r}: {exc}") from None
        family, _, _, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
        resolved.append((family, f"{address[0]}:{port}" if family == socket.AF_INET else f"[{address[0]}]:{port}"))
    families = {family for family, _ in resolved}
    if len(families) > 1:
        raise InvalidArgument(f"etcd endpoints {endpoints!r} mix IPv4 and IPv6 addresses")
    scheme = "ipv4" if families == {socket.AF_INET} else "ipv6"
    return f"{scheme}:" + ",".join(address for _, address in resolved)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn the etcd client's errors into the catalogue's."""
    try:
        yield
    except ShoalError:
        raise
    except grpc.aio.AioRpcError as exc:
        raise error_for_code(exc.code(), f"etcd: {exc.details()}") from exc
    except (TimeoutError, OSError) as exc:
        raise Unavailable(f"etcd: {exc!r}") from exc
    except aetcd.exceptions.ClientError as exc:
        raise _ERRORS.get(type(exc), Internal)(f"etcd: {exc}") from exc


class Membership:
    """A key kept alive by an etcd lease renewed in the background: a member's place in a group, or the mover lock."""

    def __init__(self, store: MetaStore, group: str, member: str, lease: Any, ttl: int) -> None:
        self.store, self.group, self.member, self.ttl = store, group, member, ttl
        self.lease_id: int = lease.id
        self._lease = lease
        self.lost = asyncio.Event()  # set when the lease is found expired: the member is no longer listed
        self._task = asyncio.create_task(self._keep_alive(), name=f"lease {group}/{member}")

    async def _keep_alive(self) -> None:
        try:
            while True:
                # A third of the TTL leaves two more tries before the lease runs out.
                await asyncio.sleep(self.ttl / 3)
                try:
                    with _translated():
                        reply = await self._lease.refresh()
                except ShoalError as exc:  # whatever etcd (or the way to it) answered: try again
                    log.warning("lease %s/%s: renewal failed: %s", self.group, self.member, exc)
                    continue
                if reply is None or reply.TTL <= 0:
                    log.warning("lease %s/%s expired", self.group, self.member)
                    return
        except Exception:
            log.exception("lease %s/%s: renewals stopped", self.group, self.member)
        finally:
            # However renewals end, the key is not kept alive any more: its owner must know (a member joins
            # again), never keep believing it is listed while etcd lets the lease run out.
            self.lost.set()

    async def abandon(self) -> None:
        """Stop renewing without revoking: the member disappears when the lease runs out, as after a crash."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def leave(self) -> None:
        """Stop renewing and revoke the lease: the member (and its primary key, if any) go at once."""
        await self.abandon()
        with _translated():
            await self._lease.revoke()


class MetaStore:
    """A typed API over etcd for one cluster's metadata; use `async with MetaStore.connect(...)`."""

    def __init__(self, client: aetcd.Client, cluster: str) -> None:
        self._client = client
        self.keys = Keys(cluster)
        self._tx = client.transactions

    @classmethod
    async def connect(cls, endpoint: str, cluster: str = "default", timeout: int = CALL_TIMEOUT) -> MetaStore:
        """A store over the etcd at `endpoint` (HOST:PORT, or several comma-separated); the first call tells
        whether etcd answers."""
        target = await asyncio.to_thread(channel_target, endpoint)
        # aetcd joins host and port back into the target with a colon: split the target at its last one.
        host, _, port = target.rpartition(":")
        client = aetcd.Client(host=host, port=int(port), timeout=timeout)
        with _translated():
            await client.connect()
        return cls(client, cluster)

    async def close(self) -> None:
        """Close the connection (leases of memberships are not revoked: call `leave` for that)."""
        with _translated():
            await self._client.close()

    async def __aenter__(self) -> MetaStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the collection catalogue --------------------------------------------------------------------

    async def create_collection(self, config: CollectionConfig) -> bool:
        """Add a collection; True if created, False if it exists with this config, AlreadyExists otherwise."""
        key, value = self.keys.collection(config.name), encode(config_to_json(config))
        with _translated():
            ok, responses = await self._client.transaction(
                compare=[self._tx.create(key) == 0], success=[self._tx.put(key, value)], failure=[self._tx.get(key)]
            )
        if ok:
            return True
        existing = responses[0][0][0] if responses and responses[0] else None
        if existing == value:
            return False
        raise AlreadyExists(f"collection {config.name!r} already exists with another config")

    async def drop_collection(self, name: str) -> bool:
        """Remove a collection; True if it was there."""
        check_name(name)
        with _translated():
            return await self._client.delete(self.keys.collection(name)) is not None

    async def get_collection(self, name: str) -> CollectionConfig:
        """A collection's config, or NotFound."""
        check_name(name)
        with _translated():
            got = await self._client.get(self.keys.collection(name))
        if got is None:
            raise NotFound(f"collection {name!r} does not exist")
        return config_from_json(decode(got.value))

    async def list_collections(self) -> list[CollectionConfig]:
        """Every collection, by name."""
        with _translated():
            got = await self._client.get_prefix(self.keys.section("catalogue"))
        return [config_from_json(decode(kv.value)) for kv in got]

    # -- API keys -------------------------------------------------------------------------------------

    async def put_api_key(self, key: ApiKey) -> None:
        """Store a key's record (a new key, or a revoked one replacing it)."""
        with _translated():
            await self._client.put(self.keys.api_key(key.id), encode(key.to_json()))

    async def list_api_keys(self) -> list[ApiKey]:
        """Every key's record, revoked ones included."""
        with _translated():
            got = await self._client.get_prefix(self.keys.section("keys"))
        return [ApiKey.from_json(decode(kv.value)) for kv in got]

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept, so `list` shows it); NotFound for an unknown id."""
        with _translated():
            got = await self._client.get(self.keys.api_key(key_id))
        if got is None:
            raise NotFound(f"no API key with id {key_id!r}")
        key = replace(ApiKey.from_json(decode(got.value)), revoked=True)
        await self.put_api_key(key)
        return key

    # -- the topology ---------------------------------------------------------------------------------

    async def get_topology(self) -> Topology:
        """The current topology (version 0 and no ranges before the first `replace_topology`)."""
        with _translated():
            got = await self._client.get(self.keys.topology)
        if got is None:
            return Topology()
        value = decode(got.value)
        return Topology(ranges_from_json(value), got.version, got.mod_revision, moves_from_json(value))

    async def replace_topology(
        self, ranges: tuple[SlotRange, ...], expected_version: int, moves: tuple[Move, ...] = ()
    ) -> Topology:
        """Replace the topology if its version is still `expected_version` (else FailedPrecondition)."""
        ranges, moves = tuple(ranges), tuple(moves)
        check_ranges(ranges)
        check_moves(ranges, moves)
        key = self.keys.topology
        with _translated():
            ok, _ = await self._client.transaction(
                compare=[self._tx.version(key) == expected_version],
                success=[self._tx.put(key, encode(ranges_to_json(ranges, moves)))],
                failure=[],
            )
        if not ok:
            current = await self.get_topology()
            raise FailedPrecondition(f"topology is at version {current.version}, not {expected_version}")
        return await self.get_topology()

    # -- slot moves -----------------------------------------------------------------------------------

    async def begin_move(self, topology: Topology, move: Move) -> Topology:
        """Add `move` (phase copy) to `topology` by compare-and-swap; FailedPrecondition if it changed since."""
        return await self.replace_topology(topology.ranges, topology.version, (*topology.moves, move))

    async def advance_move(self, topology: Topology, move_id: str, phase: Phase | None) -> Topology:
        """Take a move to its next phase (None: remove it, done) by compare-and-swap; cleanup gives its slots to
        the target. FailedPrecondition if the topology changed since `topology`."""
        ranges, moves = moved(topology, move_id, phase)
        return await self.replace_topology(ranges, topology.version, moves)

    async def lock_mover(self, owner: str, ttl: int = LEASE_TTL) -> Membership | None:
        """Take the mover lock for `owner` under a lease kept alive until `leave`; None while another holds it."""
        key = self.keys.mover
        with _translated():
            lease = await self._client.lease(ttl)
            ok, _ = await self._client.transaction(
                compare=[self._tx.create(key) == 0],
                success=[self._tx.put(key, encode({"owner": owner}), lease=lease.id)],
                failure=[],
            )
            if not ok:
                await lease.revoke()
                return None
        return Membership(self, "mover", owner, lease, ttl)

    async def mover(self) -> str | None:
        """Who holds the mover lock (None: nobody)."""
        with _translated():
            got = await self._client.get(self.keys.mover)
        return None if got is None else str(decode(got.value)["owner"])

    async def put_progress(self, move_id: str, progress: dict[str, Any]) -> None:
        """Record a move's progress (beside the topology, so the topology's version stays)."""
        with _translated():
            await self._client.put(self.keys.progress(move_id), encode(progress))

    async def get_progress(self, move_id: str) -> dict[str, Any] | None:
        """A move's last recorded progress."""
        with _translated():
            got = await self._client.get(self.keys.progress(move_id))
        return None if got is None else dict(decode(got.value))

    async def drop_progress(self, move_id: str) -> None:
        """Forget a finished move's progress."""
        with _translated():
            await self._client.delete(self.keys.progress(move_id))

    # -- shard groups ---------------------------------------------------------------------------------

    async def join(self, group: str, member: str, address: str, ttl: int = LEASE_TTL) -> Membership:
        """List `member` in `group` under a fresh lease kept alive until `leave`; AlreadyExists if it is listed."""
        check_name(group)
        check_name(member)
        key = self.keys.member(group, member)
        with _translated():
            lease = await self._client.lease(ttl)
            ok, _ = await self._client.transaction(
                compare=[self._tx.create(key) == 0],
                success=[self._tx.put(key, encode({"address": address}), lease=lease.id)],
                failure=[],
            )
            if not ok:
                await lease.revoke()
                raise AlreadyExists(f"member {member!r} of group {group!r} is already listed by a live lease")
        return Membership(self, group, member, lease, ttl)

    async def register_group(self, group: str) -> bool:
        """Claim a new group's name; False if it was claimed before (by anyone)."""
        check_name(group)
        key = self.keys.registered(group)
        with _translated():
            ok, _ = await self._client.transaction(
                compare=[self._tx.create(key) == 0], success=[self._tx.put(key, encode(True))], failure=[]
            )
        return bool(ok)

    async def get_groups(self) -> dict[str, GroupState]:
        """Every group etcd has any key of (members, term, a registered name), by name."""
        prefix = self.keys.section("groups")
        with _translated():
            got = await self._client.get_prefix(prefix)
        kvs: dict[str, dict[str, Any]] = {}
        for kv in got:
            name, _, rest = kv.key[len(prefix) :].decode().partition("/")
            kvs.setdefault(name, {})[rest] = decode(kv.value)
        revision = int(got.header.revision)
        return {name: group_from_kvs(name, kvs[name], revision) for name in sorted(kvs)}

    async def _group_kvs(self, group: str) -> tuple[dict[str, Any], int]:
        """A group's keys (relative to its prefix) with their etcd records, and the read's revision."""
        check_name(group)
        prefix = self.keys.group(group)
        with _translated():
            got = await self._client.get_prefix(prefix)
        return {kv.key[len(prefix) :].decode(): kv for kv in got}, got.header.revision

    async def get_group(self, group: str) -> GroupState:
        """A group's live members, primary, term and in-sync set."""
        kvs, revision = await self._group_kvs(group)
        return group_from_kvs(group, {k: decode(kv.value) for k, kv in kvs.items()}, revision)

    async def elect(self, group: str, member: str) -> int:
        """Make `member` primary with term+1 if the group has no live primary; the new term, or FailedPrecondition.

        The member must be listed (alive) and, once the group has an in-sync set, in it: only an in-sync copy
        holds every acknowledged write. Re-electing the current primary returns its term unchanged.
        """
        check_name(member)
        kvs, revision = await self._group_kvs(group)
        state = group_from_kvs(group, {k: decode(kv.value) for k, kv in kvs.items()}, revision)
        if state.primary is not None:
            if state.primary == member:
                return state.term
            raise FailedPrecondition(f"group {group!r} has a live primary {state.primary!r} (term {state.term})")
        member_kv = kvs.get(f"members/{member}")
        if member_kv is None:
            raise FailedPrecondition(f"member {member!r} is not a live member of group {group!r}")
        if state.in_sync and member not in state.in_sync:
            raise FailedPrecondition(f"member {member!r} is not in the in-sync set {list(state.in_sync)} of {group!r}")
        term = state.term + 1
        k = self.keys

        def mod_of(name: str) -> int:
            return kvs[name].mod_revision if name in kvs else 0

        with _translated():
            ok, _ = await self._client.transaction(
                compare=[
                    self._tx.create(k.primary(group)) == 0,
                    self._tx.mod(k.term(group)) == mod_of("term"),
                    self._tx.mod(k.in_sync(group)) == mod_of("in_sync"),
                    self._tx.mod(k.member(group, member)) == member_kv.mod_revision,
                ],
                success=[
                    self._tx.put(k.term(group), encode(term)),
                    self._tx.put(k.primary(group), encode({"member": member, "term": term}), lease=member_kv.lease),
                ],
                failure=[],
            )
        if not ok:
            raise FailedPrecondition(f"group {group!r} changed during the election of {member!r}; read it again")
        return term

    async def set_in_sync(self, group: str, members: list[str], term: int) -> None:
        """Set the group's in-sync set; only the live primary of the current `term` may (else FailedPrecondition)."""
        check_name(group)
        for m in members:
            check_name(m)
        k = self.keys
        value = encode({"term": term, "members": sorted(set(members))})
        with _translated():
            ok, _ = await self._client.transaction(
                compare=[self._tx.value(k.term(group)) == encode(term), self._tx.create(k.primary(group)) > 0],
                success=[self._tx.put(k.in_sync(group), value)],
                failure=[],
            )
        if not ok:
            raise FailedPrecondition(f"term {term} is not the term of a live primary of group {group!r}")

    # -- watches --------------------------------------------------------------------------------------

    async def revision(self) -> int:
        """etcd's current revision: read state at it, then watch from it + 1 to miss nothing."""
        with _translated():
            got = await self._client.get_prefix(self.keys.root)
        return int(got.header.revision)

    async def endpoints(self) -> list[str]:
        """The client URLs of every etcd member: the endpoints the cluster's metadata is served on."""
        with _translated():
            return sorted({url async for m in self._client.members() for url in m.client_urls})

    async def cluster_id(self) -> int:
        """etcd's cluster id: a fresh etcd (say, of a restored cluster) has a new one."""
        with _translated():
            got = await self._client.get_prefix(self.keys.root)
        return int(got.header.cluster_id)

    async def watch(self, section: Section, start_revision: int | None = None) -> AsyncIterator[Change]:
        """Changes under a section, in order, from `start_revision` (inclusive) or from now on."""
        prefix = self.keys.section(section)
        with _translated():
            if section == "topology":
                watch = await self._client.watch(prefix, start_revision=start_revision)
            else:
                watch = await self._client.watch_prefix(prefix, start_revision=start_revision)
        try:
            events = aiter(watch)
            while True:
                with _translated():
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                value = None if event.kind == "DELETE" else decode(event.kv.value)
                yield Change(self.keys.relative(event.kv.key), value, event.kv.mod_revision)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()
