"""The blocking client's plain searches over one search stream: searches waiting together share a message.

A unary call costs the coordinator about twice the CPU of a stream message, so `Client.search` sends each
search as a message of a stream the client keeps open while it searches. Searches of one shape that queue
while a message is being written leave together as one message (the threads of a process coalesce, as the
coordinator's batcher does for streams). Each caller waits for its own rows at most its timeout; one that
gives up withdraws its search (a cancel message when it travelled alone). A broken stream fails the
searches it carried and the next search opens a new one.

The stream holds a thread (and gRPC's own) only while it is in use: it closes after IDLE_SECONDS without
a search, and before any fork of the process (os.register_at_fork), so a child never inherits a thread
blocked inside gRPC. Searches in flight at a fork are sent again on a new stream once the fork is done.
A forked child searches with unary calls, as every search did before.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import grpc
import numpy as np

from shoal._errors import DeadlineExceeded, ShoalError, Unavailable, from_rpc_error, from_status
from shoal._results import answer_rows
from shoal._search import Search
from shoal._token import merge
from shoal._types import Fields, SearchResult
from shoal.v1 import types_pb2 as pb

# Query rows in one coalesced message, at most (fewer when their answer would not fit in one message).
MAX_ROWS = 512
# A stream without a search for this long is closed (its threads end); the next search opens another.
IDLE_SECONDS = 2.0
# How long a fork waits for a closing stream's thread to end.
FORK_JOIN_SECONDS = 5.0
# Opens the stream: the stub's SearchStream bound to the client's metadata, over an iterator of requests.
Open = Callable[[Iterator[pb.SearchRequest]], Iterator[pb.SearchResponse]]


class ChannelClosed(ValueError):
    """The channel is closed, so no stream opens (the caller's unary call then fails as it always did)."""


class _Paused(Unavailable):
    """The stream was closed for a fork: the search goes again on a new stream."""


@dataclass(eq=False)
class _Asked:
    """One caller's search waiting for its rows."""

    search: Search
    fields: Fields
    traceparent: str
    # It may share a message: it has rows and none the server would refuse (NaN, Inf, all zeros), so a
    # message's error is always one each of its searches would have got alone.
    joinable: bool = False
    # A thread's future (the blocking client) or the event loop's (the asyncio client, _aio_mux.py).
    future: Future[SearchResult] | asyncio.Future[SearchResult] = field(default_factory=Future)
    request_id: int = 0  # of the message it travelled in, once sent
    alone: bool = True  # its message carried only it


def asking(
    search: Search, fields: Fields, traceparent: str, future: Future[SearchResult] | asyncio.Future[SearchResult]
) -> _Asked:
    """A caller's search, joinable when it has rows and none the server would refuse (a traced one goes alone)."""
    queries = search.queries
    joinable = not traceparent and len(queries) > 0 and bool(np.isfinite(queries).all() and queries.any(axis=1).all())
    return _Asked(search, fields, traceparent, joinable, future)


_END = object()  # in the outbox: the stream is closing


class _Stream:
    """One open SearchStream: the outbox its request iterator drains, and the messages awaiting an answer."""

    def __init__(self, open_: Open, ids: Iterator[int]) -> None:
        self._ids = ids
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # _Asked, a cancel request, or _END
        self._sent: dict[int, list[_Asked]] = {}
        self.broken = False
        self._waiting = False  # gRPC's thread waits in the outbox for the next request...
        self._drawn = threading.Event()  # ...or has drawn the last one
        self._responses = open_(self._requests())
        self._reader = threading.Thread(target=self._read, name="shoal-search-stream", daemon=True)
        self._reader.start()

    def submit(self, asked: _Asked) -> bool:
        """Queue a search; False when the stream is closed (the caller opens another)."""
        with self._lock:
            if self.broken:
                return False
            self._outbox.put(asked)
        return True

    def withdraw(self, asked: _Asked) -> None:
        """The caller gave up: a search not yet sent is dropped; one sent alone is cancelled on the server."""
        with self._lock:
            if (cancel := withdrawn(asked, self._sent, self.broken)) is not None:
                self._outbox.put(cancel)

    def close(self, error: ShoalError, wait: float | None = None) -> None:
        """End the stream, failing the searches still waiting with `error`; wait up to `wait` s for its thread."""
        self._break(error)
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None:
            cancel()
        if wait is not None and self._reader is not threading.current_thread():
            self._reader.join(wait)
            if self._waiting:  # it draws the _END just queued and leaves (one paused at a yield is not in gRPC)
                self._drawn.wait(wait)

    def _requests(self) -> Iterator[pb.SearchRequest]:
        try:
            yield from self._draw()
        finally:
            self._drawn.set()

    def _next(self) -> object:
        """The next item of the outbox; queue.Empty after IDLE_SECONDS without one."""
        self._waiting = True
        try:
            return self._outbox.get(timeout=IDLE_SECONDS)
        finally:
            self._waiting = False

    def _draw(self) -> Iterator[pb.SearchRequest]:
        held: object = None  # taken from the outbox but of another shape than the message before it
        while True:
            try:
                item = held if held is not None else self._next()
            except queue.Empty:
                if self._idle():
                    return  # the server ends the stream once it has answered; the reader then ends
                continue
            if item is _END:
                return
            out, held = outgoing(item, self._take)
            if isinstance(out, pb.SearchRequest):
                yield out
            elif out and (message := self._message(out)) is not None:
                yield message

    def _take(self) -> object:
        try:
            return self._outbox.get_nowait()
        except queue.Empty:
            return None

    def _idle(self) -> bool:
        """Close the stream for new searches when nothing is queued or awaited; whether it was."""
        with self._lock:
            if self.broken or self._sent or not self._outbox.empty():
                return self.broken
            self.broken = True
        return True

    def _message(self, batch: list[_Asked]) -> pb.SearchRequest | None:
        """The message carrying `batch`, registered to await its answer (None when the stream broke)."""
        with self._lock:
            batch = [a for a in batch if not a.future.done()]  # withdrawn meanwhile
            if self.broken or not batch:
                return None
            request_id = next(self._ids)
            self._sent[request_id] = batch
            return message(batch, request_id)  # under the lock: a withdrawal sees the id it travels in

    def _read(self) -> None:
        try:
            for reply in self._responses:
                with self._lock:
                    batch = self._sent.pop(reply.request_id, None)
                if batch is not None:
                    answer(batch, reply)
            self._break(Unavailable("the server ended the search stream"))
        except grpc.RpcError as exc:
            self._break(from_rpc_error(exc))
        except Exception as exc:  # whatever ends the stream, the waiting searches must hear of it
            self._break(Unavailable(f"the search stream failed: {exc}"))

    def _break(self, error: ShoalError) -> None:
        with self._lock:
            batches = list(self._sent.values())
            self._sent.clear()
            self.broken = True
            waiting = []
            while (item := self._take()) is not None:
                waiting.append(item)
        self._outbox.put(_END)
        fail_all(itertools.chain(itertools.chain.from_iterable(batches), waiting), error)


def withdrawn(asked: _Asked, sent: dict[int, list[_Asked]], broken: bool) -> pb.SearchRequest | None:
    """Withdraw a search whose caller gave up: one not yet sent is skipped when its turn comes; for one sent alone
    on a live stream, the cancel request to send (others in its message still want the answer)."""
    asked.future.cancel()
    if not asked.request_id or not asked.alone:
        return None
    if sent.pop(asked.request_id, None) is None or broken:
        return None
    return pb.SearchRequest(request_id=asked.request_id, cancel=True)


def fail_all(items: Iterable[object], error: ShoalError) -> None:
    """Fail every search among a broken stream's items (sent or still queued) with `error`."""
    for item in items:
        if isinstance(item, _Asked):
            fail(item, error)


def outgoing(item: object, take: Callable[[], object]) -> tuple[pb.SearchRequest | list[_Asked], object]:
    """What an outbox item sends: a cancel request as it is, or the search with those queued behind it that can
    share its message (none when it was withdrawn); and an item taken that cannot join (None when none was)."""
    if isinstance(item, pb.SearchRequest):
        return item, None
    assert isinstance(item, _Asked)
    if item.future.done():  # withdrawn before it was sent
        return [], None
    return gather(item, take)


def gather(first: _Asked, take: Callable[[], object]) -> tuple[list[_Asked], object]:
    """`first` and the searches queued right behind it that can share its message (`take()` gives the next
    queued item, None when there is none), and the item taken that cannot (None when none was)."""
    batch, rows = [first], len(first.search.queries)
    limit = _rows_for(first)
    while rows < limit:
        more = take()
        if more is None:
            break
        if not isinstance(more, _Asked) or not _joins(first, more) or rows + len(more.search.queries) > limit:
            return batch, more
        if not more.future.done():
            batch.append(more)
            rows += len(more.search.queries)
    return batch, None


def message(batch: list[_Asked], request_id: int) -> pb.SearchRequest:
    """The message carrying `batch` as request `request_id` (each search notes the message it travels in)."""
    alone = len(batch) == 1
    for a in batch:
        a.request_id, a.alone = request_id, alone
    first = batch[0].search
    if alone:
        search = first
    else:
        queries = np.concatenate([a.search.queries for a in batch])
        search = Search(first.shape, queries, merge(a.search.token for a in batch))
    request = search.to_proto(request_id)
    if batch[0].traceparent:
        request.traceparent = batch[0].traceparent
    return request


def _rows_for(asked: _Asked) -> int:
    s, dim = asked.search.shape, asked.search.queries.shape[1]
    return max(1, min(MAX_ROWS, answer_rows(s.k, dim, s.with_payload, s.with_vectors)))


def _joins(first: _Asked, other: _Asked) -> bool:
    """Whether two searches can travel in one message: both joinable, of one shape, dimension and fields."""
    return (
        first.joinable
        and other.joinable
        and other.search.shape == first.search.shape
        and other.search.queries.shape[1] == first.search.queries.shape[1]
        and other.fields == first.fields
    )


def fail(asked: _Asked, error: ShoalError) -> None:
    """Fail a search still waiting."""
    if not asked.future.done():
        asked.future.set_exception(error)


def answer(batch: list[_Asked], reply: pb.SearchResponse) -> None:
    """Give each search of a message its rows of the answer (or the message's error)."""
    if reply.error.code:
        error = from_status(reply.error)
        for asked in batch:
            fail(asked, error)
        return
    result = SearchResult.from_proto(reply, batch[0].fields)
    if len(batch) == 1:
        if not batch[0].future.done():
            batch[0].future.set_result(result)
        return
    k = result.ids.shape[1]
    lo = 0
    for asked in batch:
        hi = lo + len(asked.search.queries)
        part = SearchResult(
            ids=result.ids[lo:hi],
            distances=result.distances[lo:hi],
            counts=result.counts[lo:hi],
            payloads=result.payloads[lo * k : hi * k],
            vectors=None if result.vectors is None else result.vectors[lo:hi],
            plan=result.plan,
            fields=result.fields,
        )
        if not asked.future.done():
            asked.future.set_result(part)
        lo = hi


class SearchMux:
    """A client's plain searches over its search stream (opened on use, closed when idle or for a fork)."""

    def __init__(self, open_: Open) -> None:
        self._open = open_
        self._lock = threading.Lock()  # also held across a fork, so no stream opens meanwhile
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)  # one counter across reopened streams
        _LIVE.add(self)

    def search(
        self, search: Search, timeout: float | None, traceparent: str = "", fields: Fields = None
    ) -> SearchResult:
        """The answer of one search, waited for at most `timeout` seconds."""
        while True:
            future: Future[SearchResult] = Future()
            asked = asking(search, fields, traceparent, future)
            stream = self._submit(asked)
            try:
                return future.result(timeout)
            except _Paused:  # a fork closed the stream: ask again on the next one
                continue
            except FutureTimeout:
                stream.withdraw(asked)
                if future.done() and not future.cancelled():
                    return future.result()  # answered just now
                raise DeadlineExceeded(f"no answer within the timeout of {timeout} s") from None
            except BaseException:
                if not asked.future.done():  # interrupted: withdraw it, then let the interruption go on
                    stream.withdraw(asked)
                raise

    def _submit(self, asked: _Asked) -> _Stream:
        with self._lock:
            if self._stream is None or not self._stream.submit(asked):
                try:
                    self._stream = _Stream(self._open, self._ids)
                except grpc.RpcError as exc:  # the stream could not be opened
                    raise from_rpc_error(exc) from exc
                except ValueError as exc:  # gRPC's answer on a closed channel
                    raise ChannelClosed(str(exc)) from exc
                self._stream.submit(asked)
            return self._stream

    def close(self) -> None:
        """End the stream (a later search opens a new one, if the channel is still open)."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(Unavailable("the client is closed"))

    def _before_fork(self) -> None:
        self._lock.acquire()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(_Paused("the search stream closed for a fork"), FORK_JOIN_SECONDS)

    def _after_fork(self) -> None:
        self._lock.release()


_LIVE: weakref.WeakSet[SearchMux] = weakref.WeakSet()
_PAUSED: list[SearchMux] = []  # those closed for the fork under way (a mux made meanwhile is not)
_FORKED = [False]  # this process is a fork of one that used gRPC


def usable() -> bool:
    """Whether searches may ride a stream here: not in a forked child, where gRPC's streams can hang (its
    background threads are not carried over a fork), while its blocking unary calls work as before."""
    return not _FORKED[0]


def _before_fork() -> None:
    _PAUSED.extend(_LIVE)
    for mux in _PAUSED:
        mux._before_fork()


def _after_fork() -> None:
    for mux in _PAUSED:
        mux._after_fork()
    _PAUSED.clear()


def _after_fork_in_child() -> None:
    _FORKED[0] = True
    _after_fork()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork_in_child)
