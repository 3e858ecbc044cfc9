"""A thread fed by a queue: items are handled in arrival order, and stop() finishes what is queued first."""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

from shoal._errors import Unavailable

T = TypeVar("T")


class QueueThread(Generic[T]):
    """The lifecycle the committer and the index worker share; subclasses drain `_queue` in `_run`."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()  # None: the stop marker
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        self._lock = threading.Lock()  # no item may be queued behind the stop marker

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Handle everything queued, then end the thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def depth(self) -> int:
        """Items waiting (approximate)."""
        return self._queue.qsize()

    def _put(self, item: T) -> None:
        """Queue an item; Unavailable once stop() has begun."""
        with self._lock:
            if self._stopped:
                raise Unavailable("the shard is shutting down")
            self._queue.put(item)

    def _run(self) -> None:
        raise NotImplementedError
