"""Where API keys live: a JSON file (`--auth FILE`) or the cluster metadata in etcd, both behind `KeyStore`.

Server-side and CLI code. A server looks keys up in memory on every call (`lookup`); the file store
re-reads its file when it changes (checked at most once a second), the etcd table follows a watch, so
a revocation reaches every coordinator within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TypeVar

from shoal._access import ApiKey, new_key
from shoal._errors import NotFound
from shoal._meta import MetaStore

log = logging.getLogger("shoal.keys")

RELOAD_SECONDS = 1.0  # the file store looks at its file's change time at most this often
FILE_FORMAT = 1

T = TypeVar("T")


class KeyStore(Protocol):
    """Lookup (in memory, on every call) and management of API keys."""

    def lookup(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, or None."""
        ...


class FileKeyStore:
    """API keys in one JSON file (mode 0600), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_hash: dict[str, ApiKey] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._next_check = 0.0
        self._reload()

    # -- lookup ---------------------------------------------------------------------------------------

    def lookup(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, or None; re-reads the file when it changed (looked at once a second)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_SECONDS
            self._reload()
        return self._by_hash.get(key_hash)

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._by_hash, self._seen = {}, None
            return
        if self._seen == (st.st_mtime_ns, st.st_size):
            return
        try:
            keys = self._read()
        except (OSError, ValueError, KeyError) as exc:  # a half-edited file keeps the keys last read
            log.error("cannot read the API keys in %s: %s", self.path, exc)
            return
        self._by_hash = {k.hash: k for k in keys}
        self._seen = (st.st_mtime_ns, st.st_size)
        log.info("loaded %d API keys from %s", len(keys), self.path)

    def _read(self) -> list[ApiKey]:
        if not self.path.exists():
            return []
        return [ApiKey.from_json(k) for k in json.loads(self.path.read_text()).get("keys", [])]

    # -- management (the `shoal keys` command) --------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two `shoal keys` commands must not lose each other's key)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, keys: Iterable[ApiKey]) -> None:
        staged = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(staged, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FILE_FORMAT, "keys": [k.to_json() for k in keys]}, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, self.path)

    def create(self, role: str, collections: Iterable[str] = ()) -> tuple[str, ApiKey]:
        """Add a new key; the token (shown once) and its record."""
        token, key = new_key(role, collections)
        with self._locked():
            self._write([*self._read(), key])
        return token, key

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included."""
        return self._read()

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked; NotFound for an unknown id."""
        with self._locked():
            keys = self._read()
            if not any(k.id == key_id for k in keys):
                raise NotFound(f"no API key with id {key_id!r} in {self.path}")
            keys = [replace(k, revoked=True) if k.id == key_id else k for k in keys]
            self._write(keys)
        return next(k for k in keys if k.id == key_id)


class MetaKeyStore:
    """Management (the `shoal keys --meta` command) of the API keys in the cluster metadata in etcd."""

    def __init__(self, endpoint: str, cluster: str = "default") -> None:
        self.endpoint, self.cluster = endpoint, cluster

    def _run(self, step: Callable[[MetaStore], Awaitable[T]]) -> T:
        async def body() -> T:
            async with await MetaStore.connect(self.endpoint, self.cluster) as store:
                return await step(store)

        return asyncio.run(body())

    def create(self, role: str, collections: Iterable[str] = ()) -> tuple[str, ApiKey]:
        """Add a new key; the token (shown once) and its record."""
        token, key = new_key(role, collections)
        self._run(lambda store: store.put_api_key(key))
        return token, key

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included."""
        return self._run(lambda store: store.list_api_keys())

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked; NotFound for an unknown id."""
        return self._run(lambda store: store.revoke_api_key(key_id))


class EtcdKeyTable:
    """The API keys of the cluster metadata, kept in memory by a watch; `run()` or `follow()` keeps it current."""

    def __init__(self, store: MetaStore | None = None) -> None:
        self._store = store
        self._by_hash: dict[str, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}
        self.loaded = asyncio.Event()

    def lookup(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, or None."""
        return self._by_hash.get(key_hash)

    def _set(self, key: ApiKey) -> None:
        old = self._by_id.pop(key.id, None)
        if old is not None:
            self._by_hash.pop(old.hash, None)
        self._by_id[key.id] = key
        self._by_hash[key.hash] = key

    async def follow(self, store: MetaStore) -> None:
        """Keep the table current from `store` until cancelled, loading it anew after a broken watch."""
        self._store = store
        while True:
            try:
                await self.run()
            except Exception as exc:  # etcd away for a while: the keys last seen stay in force meanwhile
                log.warning("following the API keys in etcd: %s", exc)
            await asyncio.sleep(RELOAD_SECONDS)

    async def run(self) -> None:
        """Load every key, then follow changes until cancelled (or the watch breaks)."""
        assert self._store is not None, "a table to run needs its store"
        revision = await self._store.revision()
        keys = await self._store.list_api_keys()
        self._by_hash, self._by_id = {k.hash: k for k in keys}, {k.id: k for k in keys}
        self.loaded.set()
        async for change in self._store.watch("keys", start_revision=revision + 1):
            if change.deleted:
                old = self._by_id.pop(change.key.removeprefix("keys/"), None)
                if old is not None:
                    self._by_hash.pop(old.hash, None)
            else:
                self._set(ApiKey.from_json(change.value))
