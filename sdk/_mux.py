"""The blocking client's plain searches over one long-lived search stream: searches waiting together share a message.

A unary call costs the coordinator about twice the CPU of a stream message, so `Client.search` sends each
search as a message of one stream kept open per client. Searches of one shape that queue while a message
is being written leave together as one message (the threads of a process coalesce, as the coordinator's
batcher does for streams). Each caller waits for its own rows at most the client's timeout; one that gives
up withdraws its search (a cancel message when it travelled alone). A broken stream fails the searches
it carried and the next search opens a new one.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import grpc
import numpy as np

from shoal._errors import DeadlineExceeded, ShoalError, Unavailable, from_rpc_error, from_status
from shoal._results import answer_rows
from shoal._search import Search, SearchShape
from shoal._types import Fields, SearchResult
from shoal.v1 import types_pb2 as pb

# Query rows in one coalesced message, at most (fewer when their answer would not fit in one message).
MAX_ROWS = 512
# Opens the stream: the stub's SearchStream bound to the client's metadata, over an iterator of requests.
Open = Callable[[Iterator[pb.SearchRequest]], Iterator[pb.SearchResponse]]


@dataclass(eq=False)
class _Asked:
    """One caller's search waiting for its rows."""

    shape: SearchShape
    queries: np.ndarray
    traceparent: str
    fields: Fields  # the payload fields this caller keeps (None: all); the server sends whole payloads to all
    # It may share a message: it has rows and none the server would refuse (NaN, Inf, all zeros), so a
    # message's error is always one each of its searches would have got alone.
    joinable: bool = False
    future: Future[SearchResult] = field(default_factory=Future)
    request_id: int = 0  # of the message it travelled in, once sent
    alone: bool = True  # its message carried only it


_END = object()  # in the outbox: the stream is closing


class _Stream:
    """One open SearchStream: the outbox its request iterator drains, and the messages awaiting an answer."""

    def __init__(self, open_: Open, ids: Iterator[int]) -> None:
        self._ids = ids
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # _Asked, a cancel request, or _END
        self._sent: dict[int, list[_Asked]] = {}
        self.broken = False
        self._responses = open_(self._requests())
        self._reader = threading.Thread(target=self._read, name="shoal-search-stream", daemon=True)
        self._reader.start()

    def submit(self, asked: _Asked) -> bool:
        """Queue a search; False when the stream is broken (the caller opens another)."""
        with self._lock:
            if self.broken:
                return False
            self._outbox.put(asked)
        return True

    def withdraw(self, asked: _Asked) -> None:
        """The caller gave up: a search not yet sent is dropped; one sent alone is cancelled on the server."""
        with self._lock:
            asked.future.cancel()  # one still in the outbox is skipped when its turn comes
            if not asked.request_id or not asked.alone:  # not sent, or others still want its message
                return
            if self._sent.pop(asked.request_id, None) is not None and not self.broken:
                self._outbox.put(pb.SearchRequest(request_id=asked.request_id, cancel=True))

    def close(self) -> None:
        """End the stream; searches still waiting fail."""
        self._break(Unavailable("the client is closed"))
        self._outbox.put(_END)
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None:
            cancel()

    def _requests(self) -> Iterator[pb.SearchRequest]:
        held: _Asked | None = None  # taken from the outbox but of another shape than the message before it
        while True:
            item = held if held is not None else self._outbox.get()
            held = None
            if item is _END:
                return
            if isinstance(item, pb.SearchRequest):  # a cancel
                yield item
                continue
            assert isinstance(item, _Asked)
            if item.future.done():  # withdrawn before it was sent
                continue
            batch, rows = [item], len(item.queries)
            limit = _rows_for(item)
            while rows < limit:
                try:
                    more = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(more, _Asked) or not _joins(item, more) or rows + len(more.queries) > limit:
                    held = more  # type: ignore[assignment]
                    break
                if not more.future.done():
                    batch.append(more)
                    rows += len(more.queries)
            message = self._message(batch)
            if message is not None:
                yield message

    def _message(self, batch: list[_Asked]) -> pb.SearchRequest | None:
        """The message carrying `batch`, registered to await its answer (None when the stream broke)."""
        with self._lock:
            batch = [a for a in batch if not a.future.done()]  # withdrawn meanwhile
            if self.broken or not batch:
                return None
            request_id = next(self._ids)
            alone = len(batch) == 1
            for a in batch:
                a.request_id, a.alone = request_id, alone
            self._sent[request_id] = batch
        queries = batch[0].queries if alone else np.concatenate([a.queries for a in batch])
        message = Search(batch[0].shape, queries).to_proto(request_id)
        if batch[0].traceparent:
            message.traceparent = batch[0].traceparent
        return message

    def _read(self) -> None:
        try:
            for reply in self._responses:
                with self._lock:
                    batch = self._sent.pop(reply.request_id, None)
                if batch is not None:
                    _answer(batch, reply)
            self._break(Unavailable("the server ended the search stream"))
        except grpc.RpcError as exc:
            self._break(from_rpc_error(exc))
        except Exception as exc:  # whatever ends the stream, the waiting searches must hear of it
            self._break(Unavailable(f"the search stream failed: {exc}"))

    def _break(self, error: ShoalError) -> None:
        with self._lock:
            if self.broken:
                return
            self.broken = True
            batches = list(self._sent.values())
            self._sent.clear()
            waiting = []
            while True:
                try:
                    waiting.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
        self._outbox.put(_END)
        for asked in itertools.chain.from_iterable(batches):
            _fail(asked, error)
        for item in waiting:
            if isinstance(item, _Asked):
                _fail(item, error)


def _rows_for(asked: _Asked) -> int:
    s = asked.shape
    return max(1, min(MAX_ROWS, answer_rows(s.k, asked.queries.shape[1], s.with_payload, s.with_vectors)))


def _joins(first: _Asked, other: _Asked) -> bool:
    """Whether two searches can travel in one message: both joinable, of one shape and dimension."""
    return (
        first.joinable
        and other.joinable
        and other.shape == first.shape
        and other.queries.shape[1] == first.queries.shape[1]
    )


def _fail(asked: _Asked, error: ShoalError) -> None:
    if not asked.future.done():
        asked.future.set_exception(error)


def _answer(batch: list[_Asked], reply: pb.SearchResponse) -> None:
    """Give each search of a message its rows of the answer (or the message's error)."""
    if reply.error.code:
        error = from_status(reply.error)
        for asked in batch:
            _fail(asked, error)
        return
    result = SearchResult.from_proto(reply, batch[0].fields)
    if len(batch) == 1:
        if not batch[0].future.done():
            batch[0].future.set_result(result)
        return
    k = result.ids.shape[1]
    lo = 0
    for asked in batch:
        hi = lo + len(asked.queries)
        part = SearchResult(
            ids=result.ids[lo:hi],
            distances=result.distances[lo:hi],
            counts=result.counts[lo:hi],
            payloads=result.payloads[lo * k : hi * k],
            vectors=None if result.vectors is None else result.vectors[lo:hi],
            plan=result.plan,
            fields=asked.fields,
        )
        if not asked.future.done():
            asked.future.set_result(part)
        lo = hi


class SearchMux:
    """A client's plain searches over its long-lived search stream (opened on first use, reopened when broken)."""

    def __init__(self, open_: Open) -> None:
        self._open = open_
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)  # one counter across reopened streams

    def search(
        self, shape: SearchShape, queries: np.ndarray, timeout: float | None, traceparent: str, fields: Fields = None
    ) -> SearchResult:
        """The answer of one search, waited for at most `timeout` seconds, keeping `fields` of its payloads."""
        joinable = (
            not traceparent and len(queries) > 0 and bool(np.isfinite(queries).all() and queries.any(axis=1).all())
        )
        asked = _Asked(shape, queries, traceparent, fields, joinable)
        stream = self._submit(asked)
        try:
            return asked.future.result(timeout)
        except FutureTimeout:
            stream.withdraw(asked)
            if asked.future.done() and not asked.future.cancelled():
                return asked.future.result()  # answered just now
            raise DeadlineExceeded(f"no answer within the timeout of {timeout} s") from None
        except BaseException:
            if not asked.future.done():  # interrupted: withdraw it, then let the interruption go on
                stream.withdraw(asked)
            raise

    def _submit(self, asked: _Asked) -> _Stream:
        with self._lock:
            if self._stream is None or not self._stream.submit(asked):
                self._stream = _Stream(self._open, self._ids)
                self._stream.submit(asked)
            return self._stream

    def close(self) -> None:
        """End the stream (a later search opens a new one, if the channel is still open)."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
