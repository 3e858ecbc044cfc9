"""The two ways a shard process ends on purpose without cleaning up: a fatal I/O error, and test crash points."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import NoReturn

log = logging.getLogger("shoal.shard")

FATAL_EXIT = 74  # EX_IOERR: the supervisor restarts the shard, which recovers from RocksDB
CRASH_EXIT = 86

# Test-only. SHOAL_CRASHPOINT=<point> makes the shard process die at that point, as a power cut would,
# so tests can check recovery from exactly there. Read once at process start; unset, it costs one
# comparison per crossing.
CRASHPOINT_ENV = "SHOAL_CRASHPOINT"
CRASHPOINTS = {
    "after-commit": "a write group is durable in RocksDB but not yet applied to the index",
    "mid-snapshot": "an index snapshot file is half written",
    "before-rename": "an index snapshot file is complete and synced but not yet renamed into place",
    "after-rename": "a new snapshot file is in place but its manifest is not yet written",
    "mid-catchup": "a member copying its primary's data (catch-up by snapshot) has half of it",
}


# Test-only. SHOAL_TEST_REPLICA_DELAY=<seconds> makes a replica wait that long before applying each of its
# primary's writes, so tests can read from a member that lags. Read once when the shard joins its group.
REPLICA_DELAY_ENV = "SHOAL_TEST_REPLICA_DELAY"


def replica_delay_from_env(environ: Mapping[str, str]) -> float:
    """The test delay before a replica applies each write (0: none)."""
    return float(environ.get(REPLICA_DELAY_ENV) or 0)


def crashpoint_from_env(environ: Mapping[str, str]) -> str | None:
    """The crash point named by SHOAL_CRASHPOINT (None when unset); an unknown name is an error."""
    point = environ.get(CRASHPOINT_ENV) or None
    if point is not None and point not in CRASHPOINTS:
        raise SystemExit(f"{CRASHPOINT_ENV}={point!r} is not one of {sorted(CRASHPOINTS)}")
    return point


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # the process is about to end; nothing else can be done
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def fatal(message: str) -> NoReturn:
    """End the process at once: the state on disk may no longer match what callers were told."""
    log.critical("FATAL: %s; exiting so that a restart recovers from RocksDB", message)
    _flush_logs()
    os._exit(FATAL_EXIT)


class CrashPoints:
    """The armed crash point of this process (test-only), checked where each point is crossed."""

    def __init__(self, point: str | None = None, pid: int | None = None) -> None:
        self.point = point
        self.pid = pid if pid is not None else os.getpid()  # the shard process, also seen from a snapshot child

    def __call__(self, point: str) -> None:
        """Kill the shard process here if `point` is the armed one."""
        if self.point == point:
            log.warning("crash point %s reached: killing the shard process", point)
            _flush_logs()
            os.kill(self.pid, signal.SIGKILL)
            os._exit(CRASH_EXIT)  # reached only in a snapshot child, whose parent is gone now
