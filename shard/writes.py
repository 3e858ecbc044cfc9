"""Writes as values: every write is a request (a dataclass), planned with no I/O and no threads into a plan.

`Shard.upsert` validates and submits an `Upsert` request to the committer; on its thread `plan_write` turns the
request into a `WritePlan` against the current state, read only through a `Catalogue` of `StoreView`s (so
tests drive planning with in-memory fakes); execute.py writes the plan's RocksDB part (one WriteBatch, made
durable by the committer's group sync) and, on the index worker, applies its index part and resolves the
caller. Create and drop collection plan into `CreatePlan` and `DropPlan`. A new kind of write is added
here, in one place: its request, its planning function and its case in `plan_write`. Plans are serializable
(`to_bytes`, `plan_from_bytes`), so a primary can ship them to replicas that apply them as they are.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shoal._config import CollectionConfig
from shoal._errors import AlreadyExists, NotFound
from shoal._filter import Node
from shoal._hash import slots_of
from shoal.shard import records as rec
from shoal.shard.payload_index import (
    EMPTY_PAYLOAD,
    Field,
    entries_to_delete,
    entries_to_write,
    indexed,
)
from shoal.shard.storage import collection_families, keys_bytes, pack_key, pack_keys, unpack_keys

POINTS, IDS, INDEX = "p", "i", "x"  # the column families a plan writes (storage.py has the layout)
_EMPTY_KEYS = np.zeros(0, np.uint64)


class StoreView(Protocol):
    """The read-only state planning needs: one collection's records, id map and filter matches."""

    @property
    def config(self) -> CollectionConfig: ...
    @property
    def born(self) -> int: ...
    @property
    def next_key(self) -> int: ...
    def records(self, keys: list[bytes]) -> list[bytes | None]: ...
    def keys_of(self, ids: Sequence[str] | np.ndarray) -> list[bytes | None]: ...
    def ids_of(self, keys: list[bytes]) -> list[bytes | None]: ...
    def match(self, node: Node) -> np.ndarray: ...


class Catalogue(Protocol):
    """The collections as the committer sees them (ahead of what callers see): a view of each by name."""

    def view(self, name: str) -> StoreView | None: ...


# The requests: what callers submit, validated on their own thread. A point write names the collection
# incarnation (`born`) it was validated against, so a write to a collection dropped since fails.


@dataclass(frozen=True, eq=False)
class Upsert:
    """Insert or replace points (ids validated; vectors (n, dim) float32; payloads empty or one per id)."""

    collection: str
    born: int
    ids: np.ndarray
    vectors: np.ndarray
    payloads: Sequence[bytes] = ()


@dataclass(frozen=True, eq=False)
class Delete:
    """Delete points by id."""

    collection: str
    born: int
    ids: np.ndarray


@dataclass(frozen=True, eq=False)
class DeleteByFilter:
    """Delete every point matching a filter (only of the slots in `owned`, when given: bool per slot)."""

    collection: str
    born: int
    node: Node
    owned: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class SetPayload:
    """Set top-level payload keys, then remove dotted paths, of existing points."""

    collection: str
    born: int
    ids: np.ndarray
    updates: dict[str, Any]
    paths: Sequence[str]


@dataclass(frozen=True)
class CreateCollection:
    """Create a collection (nothing to do when it exists with the same config)."""

    config: CollectionConfig


@dataclass(frozen=True)
class DropCollection:
    """Drop a collection and all its points (nothing to do when it does not exist)."""

    name: str


Request = Upsert | Delete | DeleteByFilter | SetPayload | CreateCollection | DropCollection


@dataclass
class WritePlan:
    """One write, decided: its RocksDB changes, its index changes and its result."""

    collection: str
    result: int = 0
    puts: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (column family, key, value)
    deletes: list[tuple[str, bytes]] = field(default_factory=list)  # (column family, key), before the puts
    next_key: int | None = None  # the string-id key counter to persist, when it advanced
    logged: bytes = b""  # the key8s the change log records for this write
    index_keys: np.ndarray = field(default_factory=lambda: _EMPTY_KEYS)  # usearch upserts ...
    index_vectors: np.ndarray | None = None  # ... with these rows
    removed: np.ndarray = field(default_factory=lambda: _EMPTY_KEYS)  # gone from usearch and the mirror
    mirror_keys: np.ndarray = field(default_factory=lambda: _EMPTY_KEYS)  # payload-mirror upserts ...
    mirror_fields: list[tuple[Field, ...]] = field(default_factory=list)  # ... with these fields

    @property
    def writes(self) -> bool:
        """Whether the plan changes RocksDB at all."""
        return bool(self.puts or self.deletes)

    def to_bytes(self) -> bytes:
        """The plan as bytes (JSON; binary parts in base64)."""
        vectors = self.index_vectors
        doc = {
            "kind": "points",
            "collection": self.collection,
            "result": self.result,
            "puts": [[cf, _b64(k), _b64(v)] for cf, k, v in self.puts],
            "deletes": [[cf, _b64(k)] for cf, k in self.deletes],
            "next_key": self.next_key,
            "logged": _b64(self.logged),
            "index_keys": _b64(keys_bytes(self.index_keys)),
            "index_vectors": None if vectors is None else [vectors.shape[1], _b64(rec.pack_many(vectors, []))],
            "removed": _b64(keys_bytes(self.removed)),
            "mirror_keys": _b64(keys_bytes(self.mirror_keys)),
            "mirror_fields": [list(map(list, f)) for f in self.mirror_fields],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> WritePlan:
        """The plan `to_bytes` made."""
        doc = json.loads(raw)
        vectors = None
        if doc["index_vectors"] is not None:
            dim, blob = doc["index_vectors"]
            vectors = np.frombuffer(_unb64(blob), "<f4").reshape(-1, dim)
        return cls(
            collection=doc["collection"],
            result=doc["result"],
            puts=[(cf, _unb64(k), _unb64(v)) for cf, k, v in doc["puts"]],
            deletes=[(cf, _unb64(k)) for cf, k in doc["deletes"]],
            next_key=doc["next_key"],
            logged=_unb64(doc["logged"]),
            index_keys=_keys(doc["index_keys"]),
            index_vectors=vectors,
            removed=_keys(doc["removed"]),
            mirror_keys=_keys(doc["mirror_keys"]),
            mirror_fields=[tuple((p, t, v) for p, t, v in f) for f in doc["mirror_fields"]],
        )


@dataclass(frozen=True)
class CreatePlan:
    """A collection's creation, decided: its config and column families, or nothing when it exists already."""

    config: CollectionConfig
    created: bool  # False: it exists with this config, and the caller gets its stats
    families: tuple[str, ...] = ()  # the column families to create

    def to_bytes(self) -> bytes:
        """The plan as bytes (JSON)."""
        doc = {"kind": "create", "config": dataclasses.asdict(self.config), "created": self.created}
        return json.dumps({**doc, "families": list(self.families)}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CreatePlan:
        """The plan `to_bytes` made."""
        doc = json.loads(raw)
        return cls(CollectionConfig(**doc["config"]), doc["created"], tuple(doc["families"]))


@dataclass(frozen=True)
class DropPlan:
    """A collection's removal, decided: the column families to drop, or nothing when it does not exist."""

    name: str
    dropped: bool
    families: tuple[str, ...] = ()  # the column families to drop

    def to_bytes(self) -> bytes:
        """The plan as bytes (JSON)."""
        doc = {"kind": "drop", "name": self.name, "dropped": self.dropped, "families": list(self.families)}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DropPlan:
        """The plan `to_bytes` made."""
        doc = json.loads(raw)
        return cls(doc["name"], doc["dropped"], tuple(doc["families"]))


Plan = WritePlan | CreatePlan | DropPlan
_KINDS: dict[str, type[WritePlan] | type[CreatePlan] | type[DropPlan]] = {
    "points": WritePlan,
    "create": CreatePlan,
    "drop": DropPlan,
}


def plan_from_bytes(raw: bytes) -> Plan:
    """Any plan that its `to_bytes` made."""
    return _KINDS[json.loads(raw)["kind"]].from_bytes(raw)


def plan_write(request: Request, catalogue: Catalogue) -> Plan:
    """The plan of any request against the current state: the one place a kind of write is dispatched."""
    match request:
        case CreateCollection(config):
            return plan_create(catalogue, config)
        case DropCollection(name):
            return plan_drop(catalogue, name)
        case Upsert():
            view = writable(catalogue, request.collection, request.born)
            return plan_upsert(view, request.ids, request.vectors, request.payloads)
        case Delete():
            return plan_delete(writable(catalogue, request.collection, request.born), request.ids)
        case DeleteByFilter():
            view = writable(catalogue, request.collection, request.born)
            return plan_delete_filter(view, request.node, request.owned)
        case SetPayload():
            view = writable(catalogue, request.collection, request.born)
            return plan_set_payload(view, request.ids, request.updates, request.paths)


def writable(catalogue: Catalogue, name: str, born: int) -> StoreView:
    """The collection incarnation a request was validated against; NotFound if it was dropped since."""
    view = catalogue.view(name)
    if view is None or view.born != born:
        raise NotFound(f"collection {name!r} does not exist")
    return view


def plan_create(catalogue: Catalogue, config: CollectionConfig) -> CreatePlan:
    """Create a collection; AlreadyExists if one of that name has another config."""
    existing = catalogue.view(config.name)
    if existing is None:
        return CreatePlan(config, True, collection_families(config))
    if existing.config != config:
        raise AlreadyExists(f"collection {config.name!r} already exists with another config: {existing.config}")
    return CreatePlan(config, False)


def plan_drop(catalogue: Catalogue, name: str) -> DropPlan:
    """Drop a collection if it exists."""
    existing = catalogue.view(name)
    if existing is None:
        return DropPlan(name, False)
    return DropPlan(name, True, collection_families(existing.config))


def _b64(raw: bytes | list[bytes]) -> str:
    return base64.b64encode(raw if isinstance(raw, bytes) else b"".join(raw)).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _keys(text: str) -> np.ndarray:
    return np.frombuffer(_unb64(text), ">u8").astype(np.uint64)


def plan_upsert(view: StoreView, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[bytes]) -> WritePlan:
    """Insert or replace points (ids validated; vectors (n, dim) float32; payloads empty or one per id)."""
    config = view.config
    plan = WritePlan(config.name, result=len(ids))
    if config.id_type == "string":
        keys8 = _string_keys(view, ids, plan)
        keys = unpack_keys(keys8)
    else:
        keys, keys8 = ids, pack_keys(ids)
    entries = [indexed(p) for p in payloads] if payloads else [EMPTY_PAYLOAD] * len(ids)
    plan.puts += [(POINTS, k, r) for k, r in zip(keys8, rec.pack_many(vectors, payloads), strict=True)]
    puts, deletes = entries_to_write(keys8, entries, view.records(keys8), config.dim)
    plan.deletes += [(INDEX, k) for k in deletes]
    plan.puts += [(INDEX, k, b"") for k in puts]
    plan.logged = keys_bytes(keys)
    plan.index_keys, plan.index_vectors = keys, vectors
    plan.mirror_keys, plan.mirror_fields = keys, [e.fields for e in entries]
    return plan


def _string_keys(view: StoreView, ids: np.ndarray, plan: WritePlan) -> list[bytes]:
    """The internal keys of string ids, allocating (in the plan) those that are new."""
    keys8: list[bytes] = []
    next_key = view.next_key
    for sid, key in zip(ids, view.keys_of(ids), strict=True):
        if key is None:
            key = pack_key(next_key)
            next_key += 1
            sid8 = sid.encode()
            plan.puts += [(IDS, b"s" + sid8, key), (IDS, b"k" + key, sid8)]
        keys8.append(key)
    if next_key != view.next_key:
        plan.next_key = next_key
    return keys8


def plan_delete(view: StoreView, ids: np.ndarray) -> WritePlan:
    """Delete points by id; the result is how many existed."""
    plan = WritePlan(view.config.name)
    existing: list[bytes] = []
    if view.config.id_type == "uint64":
        keys8 = pack_keys(ids)
        existing = [k for k, r in zip(keys8, view.records(keys8), strict=True) if r is not None]
    else:
        for sid, key in zip(ids, view.keys_of(ids), strict=True):
            if key is not None:
                plan.deletes += [(IDS, b"s" + sid.encode()), (IDS, b"k" + key)]
                existing.append(key)
    return _remove(view, existing, plan)


def plan_delete_filter(view: StoreView, node: Node, owned: np.ndarray | None = None) -> WritePlan:
    """Delete every stored point matching a filter (of owned slots, when given); the result is how many there were."""
    plan = WritePlan(view.config.name)
    keys = view.match(node)
    string = view.config.id_type == "string"
    if owned is not None and len(keys):
        if string:
            names = view.ids_of(pack_keys(keys))
            slots = slots_of([n.decode() if n is not None else "" for n in names])
        else:
            slots = slots_of(keys)
        keys = keys[owned[slots]]
    keys8 = pack_keys(keys)
    if string:
        for key8, sid in zip(keys8, view.ids_of(keys8), strict=True):
            if sid is not None:
                plan.deletes += [(IDS, b"s" + sid), (IDS, b"k" + key8)]
    return _remove(view, keys8, plan)


def _remove(view: StoreView, keys8: list[bytes], plan: WritePlan) -> WritePlan:
    """The plan completed with the removal of stored points."""
    plan.deletes += [(POINTS, k) for k in keys8]
    plan.deletes += [(INDEX, k) for k in entries_to_delete(keys8, view.records(keys8), view.config.dim)]
    plan.removed = unpack_keys(keys8)
    plan.logged = b"".join(keys8)  # so that recovery from an older index snapshot removes them too
    plan.result = len(keys8)
    return plan


def plan_set_payload(view: StoreView, ids: np.ndarray, updates: dict[str, Any], paths: Sequence[str]) -> WritePlan:
    """Set top-level payload keys, then remove dotted paths, of existing points; the result is how many exist."""
    config = view.config
    plan = WritePlan(config.name)
    string = config.id_type == "string"
    keys8 = [k for k in view.keys_of(ids) if k is not None] if string else pack_keys(ids)
    changed: list[bytes] = []
    for key8, record in zip(keys8, view.records(keys8), strict=True):
        if record is None:
            continue
        plan.result += 1
        stored = rec.payload(record, config.dim)
        old = json.loads(stored) if stored else None
        new = changed_payload(old, updates, paths)
        if new == old:
            continue
        raw = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode()
        plan.puts.append((POINTS, key8, rec.with_payload(record, config.dim, raw)))
        entry = indexed(raw)
        puts, deletes = entries_to_write([key8], [entry], [record], config.dim)
        plan.deletes += [(INDEX, k) for k in deletes]
        plan.puts += [(INDEX, k, b"") for k in puts]
        changed.append(key8)
        plan.mirror_fields.append(entry.fields)
    plan.mirror_keys = unpack_keys(changed)
    return plan


def changed_payload(old: dict[str, Any] | None, updates: dict[str, Any], paths: Sequence[str]) -> dict[str, Any] | None:
    """A payload with top-level keys set, then dotted paths removed (None stays None if nothing is set)."""
    if old is None and not updates:
        return None
    new = json.loads(json.dumps(old)) if old else {}  # a deep copy: removals may reach nested objects
    new.update(updates)
    for path in paths:
        *parents, last = path.split(".")
        node: Any = new
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return new
