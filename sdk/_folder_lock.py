"""An exclusive lock on a data folder, held while one `shoal up` runs the cluster in it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shoal._errors import FailedPrecondition

LOCK_FILE = "shoal.lock"  # holds the pid of the `shoal up` that runs the cluster in its folder


class FolderLock:
    """`take()` fails at once, naming the lock and its holder, while another process holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def take(self) -> None:
        """Hold the lock (flock, so a crashed holder leaves nothing to clean up) and write this pid in it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FailedPrecondition(
                f"{self.path.parent} is in use by another `shoal up` (pid {holder}, lock {self.path}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock; safe to call when not held."""
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
