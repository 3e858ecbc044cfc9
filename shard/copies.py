"""Whole copies of a shard's data folder, for catch-up by snapshot: chunked reading, staged download, swap.

A copy is what a backup holds (snapshotter.py: fresh index snapshots and a RocksDB checkpoint), laid out
as a data folder: `rocksdb/` and `index/`. The primary reads one from a scratch folder in its own data
folder (`scratch`, hard links where it can); the member writes it into DATA/catchup/ (`Download`), syncs
every file and folder, then writes the COMPLETE marker (synced). `finish`, run before a shard opens its
storage, swaps it in: for each part, the old one is removed and the new one renamed into place. A crash
before the marker leaves the old data, and `finish` removes the half copy; a crash after it is rolled
forward by the next `finish`, one part at a time, so every crash point leaves a folder that opens.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Generator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from shoal._errors import FailedPrecondition
from shoal.shard.snapshots import fsync_path

log = logging.getLogger("shoal.shard.copies")

CATCHUP = "catchup"  # the member's staging folder inside its data folder
COMPLETE = "COMPLETE"  # the marker: the staged copy is whole and synced
PARTS = ("rocksdb", "index")  # what a copy replaces, in this order
CHUNK = 1 << 20  # bytes per streamed message: well under gRPC's message limit, few messages per file
_SCRATCH = "copy-*.tmp"
_scratch_numbers = itertools.count()


def scratch(data: Path) -> Path:
    """A fresh scratch folder name for a copy read from the shard at `data` (same file system: hard links)."""
    return data / f"copy-{os.getpid()}-{next(_scratch_numbers)}.tmp"


def read_chunks(folder: Path) -> Generator[tuple[str, bytes]]:
    """Every file under `folder` as (path relative to it, chunk) in order; an empty file gives one empty chunk."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        with open(path, "rb") as f:
            while True:
                data = f.read(CHUNK)
                yield name, data
                if len(data) < CHUNK:
                    break


class Download:
    """A copy being written into DATA/catchup/, chunk by chunk (a fresh staging folder, the old one removed)."""

    def __init__(self, data: Path) -> None:
        self.data, self.root = data, data / CATCHUP
        shutil.rmtree(self.root, ignore_errors=True)
        for part in PARTS:
            (self.root / part).mkdir(parents=True)
        self.files = self.size = 0
        self._name = ""
        self._file: BinaryIO | None = None

    def write(self, name: str, data: bytes) -> None:
        """Append a chunk to the file `name` (a new name closes and syncs the previous file)."""
        if name != self._name:
            self.close()
            self._file = open(self._path(name), "wb")  # noqa: SIM115 - closed by the next file or complete()
            self._name, self.files = name, self.files + 1
        assert self._file is not None
        self._file.write(data)
        self.size += len(data)

    def _path(self, name: str) -> Path:
        """Where a received file goes; only plain paths inside a part, so a copy cannot write elsewhere."""
        parts = PurePosixPath(name).parts
        if len(parts) < 2 or parts[0] not in PARTS or any(p in ("", ".", "..") for p in parts) or "\\" in name:
            raise FailedPrecondition(f"a snapshot copy holds an unexpected path {name!r}")
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        """Sync and close the file being written (if any)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def complete(self, files: int, size: int) -> None:
        """Check the copy is whole, sync every folder of it, then write the COMPLETE marker (synced)."""
        self.close()
        if (files, size) != (self.files, self.size):
            raise FailedPrecondition(
                f"the snapshot copy is incomplete: {self.files} files of {self.size} bytes, not {files} of {size}"
            )
        for folder in sorted({p for p in self.root.rglob("*") if p.is_dir()}, key=lambda p: -len(p.parts)):
            fsync_path(folder)
        marker = self.root / COMPLETE
        with open(marker, "wb") as f:
            os.fsync(f.fileno())
        fsync_path(self.root)

    def abandon(self) -> None:
        """Remove the staging folder (the download failed; the old data stays)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.root, ignore_errors=True)


def finish(data: Path) -> bool:
    """Swap a complete staged copy into the data folder, or remove an incomplete one; whether one was swapped.

    Also removes scratch folders a primary left when it died while serving a copy.
    """
    for old in data.glob(_SCRATCH):
        shutil.rmtree(old, ignore_errors=True)
    staged = data / CATCHUP
    if not staged.exists():
        return False
    if not (staged / COMPLETE).exists():
        log.warning("removing an unfinished snapshot copy in %s: the data stays as it was", staged)
        shutil.rmtree(staged)
        return False
    for part in PARTS:
        if (staged / part).exists():
            shutil.rmtree(data / part, ignore_errors=True)
            os.replace(staged / part, data / part)
            fsync_path(data)
    shutil.rmtree(staged)
    fsync_path(data)
    log.info("the snapshot copy in %s replaced the data", staged)
    return True
