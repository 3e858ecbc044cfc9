"""Index snapshot files: one folder per collection incarnation, holding a usearch file and its manifest.

    index/<born>-<name>/snapshot-<seq>.usearch   the index as of write sequence <seq>
    index/<born>-<name>/manifest.json            the current file, its size, CRC-32, point count, config
    **/*.tmp                                     unfinished writes (removed on start)

Publishing is safe at every crash point: the file is written under a temporary name, synced, renamed to
its own final name and the folder synced; only then is the manifest replaced the same way. A crash leaves
either the old manifest naming the old file or the new manifest naming the new file.

A snapshot is written by a forked child (like Redis's BGSAVE): usearch's save holds the GIL for seconds
on a large index, which would stall every thread of the shard, while a fork only pauses the index worker
for the time it takes to copy the page tables. The child sees the index exactly as it was between two
worker queue items, writes and syncs the file, reports its size and checksum through a pipe and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import mmap
import os
import shutil
import signal
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import usearch

from shoal.shard.faults import CrashPoints
from shoal.shard.index import VectorIndex
from shoal.shard.storage import CollectionStore

log = logging.getLogger("shoal.shard.snapshots")

MANIFEST = "manifest.json"
FORMAT = 1
_PR_SET_PDEATHSIG = 1
_SYNC_RANGE_ALL = 1 | 2 | 4  # sync_file_range: wait for earlier writeback, start it, wait for it
_WRITEBACK_SLICE = 16 * 2**20
_LIBC = ctypes.CDLL(None, use_errno=True)
_CHILD_FAILED, _CHILD_FSYNC_FAILED = 1, 2


class SnapshotError(Exception):
    """A snapshot that cannot be used: missing, stale, truncated or corrupt."""


class FsyncFailed(OSError):
    """An fsync failed: what was written may be lost, and retrying could hide that (fatal)."""


@dataclass(frozen=True)
class Manifest:
    """What a snapshot file holds and how to check it."""

    collection: str
    born: int
    sequence: int  # the last write sequence the snapshot contains
    file: str
    size: int
    crc32: int
    count: int
    config: dict[str, Any]
    format: int = FORMAT
    usearch: str = usearch.__version__
    removed: int = 0  # tombstones the saved graph holds (VectorIndex.removed), which compaction sheds

    def to_json(self) -> bytes:
        """The manifest file's content."""
        return json.dumps(dataclasses.asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse a manifest file (SnapshotError when it is not one)."""
        try:
            fields = json.loads(raw)
            return cls(**fields)
        except (ValueError, TypeError) as exc:
            raise SnapshotError(f"its manifest is unreadable ({exc})") from None


def checksum(path: Path) -> tuple[int, int]:
    """Size and CRC-32 of a file, read through a memory map (zlib releases the GIL while it sums)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0, 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return size, zlib.crc32(m)


def fsync_path(path: Path) -> None:
    """fsync a file or folder; FsyncFailed when it fails."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise FsyncFailed(exc.errno, f"fsync of {path} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _write_out_gradually(path: Path) -> None:
    """Start and wait for the writeback of a file's dirty pages a slice at a time, before its fsync.

    One fsync of a whole large file would hold up every WAL sync of the shard on the same file system
    (ext4 commits them together) until all of it is on disk: measured here, 50-200 ms for 320 MiB, against
    about 15 ms with 16 MiB slices. Best effort: the fsync that follows is what guarantees durability.
    """
    sync_file_range = getattr(_LIBC, "sync_file_range", None)
    if sync_file_range is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in range(0, os.fstat(fd).st_size, _WRITEBACK_SLICE):
            sync_file_range(fd, ctypes.c_longlong(offset), ctypes.c_longlong(_WRITEBACK_SLICE), _SYNC_RANGE_ALL)
    finally:
        os.close(fd)


def write_index(index: VectorIndex, path: Path, crash: CrashPoints) -> tuple[int, int]:
    """Save an index to `path` and sync it; its size and CRC-32."""
    index.save(path)
    if crash.point == "mid-snapshot":
        os.truncate(path, os.path.getsize(path) // 2)  # a torn write, as a power cut leaves it
        crash("mid-snapshot")
    _write_out_gradually(path)
    size, crc = checksum(path)
    fsync_path(path)
    return size, crc


class Writing:
    """A snapshot file being written, by a forked child or (already done) in this process."""

    def __init__(self, pid: int = 0, pipe: int = -1, result: tuple[int, int] | None = None) -> None:
        self._pid, self._pipe, self._result = pid, pipe, result

    def wait(self) -> tuple[int, int]:
        """The file's size and CRC-32 once written; OSError if it could not be, FsyncFailed if unsynced."""
        if self._result is not None:
            return self._result
        chunks = []
        while chunk := os.read(self._pipe, 65536):
            chunks.append(chunk)
        os.close(self._pipe)
        _, status = os.waitpid(self._pid, 0)
        report = json.loads(b"".join(chunks) or b"{}")
        code = os.waitstatus_to_exitcode(status)
        if code == _CHILD_FSYNC_FAILED:
            raise FsyncFailed(0, report.get("error", "fsync failed in the snapshot child"))
        if code != 0:
            raise OSError(f"the snapshot child failed ({code}): {report.get('error', 'no report')}")
        return int(report["size"]), int(report["crc32"])


def fork_write(index: VectorIndex, path: Path, crash: CrashPoints) -> Writing:
    """On the index worker: fork a child that writes the index to `path` as it is now."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork in a threaded process: the child here only saves and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into the shard's code
        code, report = _CHILD_FAILED, dict[str, object]()
        try:
            # Keep only the report pipe: an inherited listening socket would keep the shard's port taken
            # after the shard died, and its restart could not bind it.
            os.closerange(3, write)
            os.closerange(write + 1, os.sysconf("SC_OPEN_MAX"))
            # Signals belong to the shard: a handler run here would wake the parent's event loop.
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != crash.pid:
                os._exit(_CHILD_FAILED)  # the shard died before the line above
            os.nice(19)  # the shard's own threads, serving calls on the same cores, go first
            size, crc = write_index(index, path, crash)
            code, report = 0, {"size": size, "crc32": crc}
        except FsyncFailed as exc:
            code, report = _CHILD_FSYNC_FAILED, {"error": str(exc)}
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            with contextlib.suppress(BaseException):
                os.write(write, json.dumps(report).encode())
            os._exit(code)
    os.close(write)
    return Writing(pid, read)


class SnapshotFiles:
    """The snapshot folders under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, store: CollectionStore) -> Path:
        """The folder of a collection incarnation's snapshots."""
        return self.root / f"{store.born}-{store.name}"

    def temporary(self, store: CollectionStore, tag: str) -> Path:
        """A fresh temporary path in the collection's folder (created if missing)."""
        folder = self.folder(store)
        folder.mkdir(exist_ok=True)
        return folder / f"snapshot.{os.getpid()}.{tag}.tmp"

    def read_manifest(self, store: CollectionStore) -> Manifest:
        """The collection's current manifest; SnapshotError when there is none or it is unreadable."""
        try:
            raw = (self.folder(store) / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise SnapshotError("it has no snapshot") from None
        return Manifest.from_json(raw)

    @contextlib.contextmanager
    def open(self, store: CollectionStore, manifest: Manifest) -> Iterator[mmap.mmap]:
        """The snapshot file mapped into memory, after its size and checksum were checked."""
        path = self.folder(store) / manifest.file
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the map
        except FileNotFoundError:
            raise SnapshotError(f"its snapshot file {manifest.file} is missing") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != manifest.size or size == 0:
                raise SnapshotError(f"its snapshot file is truncated or padded ({size} bytes, not {manifest.size})")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                crc = zlib.crc32(m)
                if crc != manifest.crc32:
                    raise SnapshotError(f"its snapshot file is corrupt (CRC-32 {crc:08x}, not {manifest.crc32:08x})")
                yield m

    def publish(self, store: CollectionStore, tmp: Path, manifest: Manifest, crash: CrashPoints) -> None:
        """Move a synced temporary file into place and make it current (see the module docstring)."""
        folder = self.folder(store)
        os.replace(tmp, folder / manifest.file)
        fsync_path(folder)
        crash("after-rename")
        staged = folder / f"{MANIFEST}.{os.getpid()}.tmp"
        with open(staged, "wb") as f:
            f.write(manifest.to_json())
            f.flush()
            try:
                os.fsync(f.fileno())
            except OSError as exc:
                raise FsyncFailed(exc.errno, f"fsync of {staged} failed: {exc.strerror}") from exc
        os.replace(staged, folder / MANIFEST)
        fsync_path(folder)
        for old in folder.glob("snapshot-*.usearch"):
            if old.name != manifest.file:
                old.unlink(missing_ok=True)

    def link(self, store: CollectionStore, manifest: Manifest, target: Path) -> None:
        """Copy the current snapshot and manifest into `target` (hard links where the file system allows)."""
        folder = self.folder(store)
        out = target / folder.name
        out.mkdir(parents=True)
        for name in (manifest.file, MANIFEST):
            try:
                os.link(folder / name, out / name)
            except OSError:
                shutil.copy2(folder / name, out / name)

    def cleanup(self, live: set[Path], temporary: bool) -> None:
        """Remove folders of collections that no longer exist and, on start, every unfinished write."""
        for folder in self.root.iterdir():
            if folder not in live:
                log.info("removing the snapshots of a dropped collection: %s", folder.name)
                shutil.rmtree(folder, ignore_errors=True)
            elif temporary:
                for tmp in folder.glob("*.tmp"):
                    log.info("removing an unfinished snapshot write: %s", tmp)
                    tmp.unlink(missing_ok=True)
                try:
                    current = Manifest.from_json((folder / MANIFEST).read_bytes()).file
                except (OSError, SnapshotError):
                    continue  # without a readable manifest, the next snapshot's publish cleans up
                for old in folder.glob("snapshot-*.usearch"):
                    if old.name != current:  # renamed into place, but its manifest was never written
                        old.unlink(missing_ok=True)
