"""The blocking client's search stream: coalescing, timeouts and withdrawal, broken streams, idle close (no sockets)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from shoal import _mux
from shoal._errors import DeadlineExceeded, NotFound, Unavailable
from shoal._mux import SearchMux
from shoal._results import TopK, topk_to_proto
from shoal._search import Search, SearchShape
from shoal._server import error_status
from shoal.v1 import types_pb2 as pb

SHAPE = SearchShape("c", 2)


def asked(queries: np.ndarray) -> Search:
    return Search(SHAPE, queries)


class FakeServer:
    """Holds the request iterator of each opened stream; answers are pushed by the test."""

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue[Iterator[pb.SearchRequest]] = queue.SimpleQueue()
        self.replies: queue.SimpleQueue[pb.SearchResponse | BaseException | None] = queue.SimpleQueue()

    def open(self, requests: Iterator[pb.SearchRequest]) -> Iterator[pb.SearchResponse]:
        self.requests.put(requests)
        return Replies(self.replies)


class Replies:
    """One stream's answers as the test pushes them; cancel() ends them, as gRPC's does."""

    def __init__(self, replies: queue.SimpleQueue[pb.SearchResponse | BaseException | None]) -> None:
        self._replies = replies

    def __iter__(self) -> Iterator[pb.SearchResponse]:
        while (item := self._replies.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self._replies.put(None)


def answer(request: pb.SearchRequest) -> pb.SearchResponse:
    """Each query row's hits: ids row*10 and row*10+1 (row = the query's first value)."""
    q = np.frombuffer(request.queries.data, np.float32).reshape(request.queries.rows, 4)
    first = np.nan_to_num(q[:, 0]).astype(np.uint64)
    ids = np.stack([first * 10, first * 10 + 1], axis=1)
    top = TopK(ids, np.zeros(ids.shape, np.float32), np.full(len(q), 2, np.uint32))
    return topk_to_proto(top, request.request_id)


def until(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_concurrent_searches_share_one_message_and_get_their_own_rows() -> None:
    server = FakeServer()
    mux = SearchMux(server.open)
    results: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        results[i] = mux.search(asked(np.full((1, 4), i + 1, np.float32)), 10.0).ids

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    requests = server.requests.get(timeout=10)
    until(lambda: mux._stream is not None)  # set once opening returns
    stream = mux._stream
    assert stream is not None
    until(lambda: stream._outbox.qsize() == 3)  # all three wait before the first message is drawn
    message = next(requests)
    assert message.queries.rows == 3
    server.replies.put(answer(message))
    for t in threads:
        t.join(10)
    assert {i: r.tolist() for i, r in results.items()} == {i: [[(i + 1) * 10, (i + 1) * 10 + 1]] for i in range(3)}
    mux.close()


def test_a_query_the_server_would_refuse_travels_alone() -> None:
    server = FakeServer()
    mux = SearchMux(server.open)
    outcomes: list[object] = []
    bad = np.full((1, 4), np.nan, np.float32)
    good = np.ones((1, 4), np.float32)
    threads = [threading.Thread(target=lambda q=q: outcomes.append(mux.search(asked(q), 10.0))) for q in (good, bad)]
    for t in threads:
        t.start()
    requests = server.requests.get(timeout=10)
    until(lambda: mux._stream is not None)  # set once opening returns
    stream = mux._stream
    assert stream is not None
    until(lambda: stream._outbox.qsize() == 2)
    first, second = next(requests), next(requests)
    assert (first.queries.rows, second.queries.rows) == (1, 1)
    for m in (first, second):
        server.replies.put(answer(m))
    for t in threads:
        t.join(10)
    assert len(outcomes) == 2
    mux.close()


def test_timeout_withdraws_the_search_with_a_cancel_message() -> None:
    server = FakeServer()
    mux = SearchMux(server.open)
    caught: list[BaseException] = []

    def ask() -> None:
        try:
            mux.search(asked(np.ones((1, 4), np.float32)), 0.2)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=ask)
    t.start()
    requests = server.requests.get(timeout=10)
    sent = next(requests)
    cancel = next(requests)  # drawn once the caller's timeout passed
    t.join(10)
    assert isinstance(caught[0], DeadlineExceeded)
    assert cancel.cancel and cancel.request_id == sent.request_id
    server.replies.put(answer(sent))  # a late answer is ignored
    mux.close()


def test_an_error_answer_fails_only_its_search_and_a_broken_stream_reopens() -> None:
    server = FakeServer()
    mux = SearchMux(server.open)
    out: queue.SimpleQueue[object] = queue.SimpleQueue()

    def ask() -> None:
        try:
            out.put(mux.search(asked(np.ones((1, 4), np.float32)), 10.0))
        except Exception as exc:
            out.put(exc)

    threading.Thread(target=ask).start()
    requests = server.requests.get(timeout=10)
    m = next(requests)
    error = error_status(NotFound("no collection c"), "/shoal.v1.Shoal/SearchStream")
    server.replies.put(pb.SearchResponse(request_id=m.request_id, error=error))
    assert isinstance(out.get(timeout=10), NotFound)

    threading.Thread(target=ask).start()
    next(requests)
    server.replies.put(RuntimeError("stream gone"))
    assert isinstance(out.get(timeout=10), Unavailable)

    threading.Thread(target=ask).start()  # the next search opens a new stream
    again = server.requests.get(timeout=10)
    server.replies.put(answer(next(again)))
    result = out.get(timeout=10)
    assert not isinstance(result, Exception)
    mux.close()


@pytest.mark.parametrize("rows", [0, 2])
def test_query_rows_arrive_as_sent(rows: int) -> None:
    server = FakeServer()
    mux = SearchMux(server.open)
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    q = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    threading.Thread(target=lambda: out.put(mux.search(asked(q), 10.0, "00-abc"))).start()
    m = next(server.requests.get(timeout=10))
    assert m.queries.rows == rows and m.traceparent == "00-abc"
    server.replies.put(answer(m))
    assert len(out.get(timeout=10)) == rows  # type: ignore[arg-type]
    mux.close()


def test_an_idle_stream_closes_and_the_next_search_opens_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_mux, "IDLE_SECONDS", 0.05)
    server = FakeServer()
    mux = SearchMux(server.open)
    out: queue.SimpleQueue[object] = queue.SimpleQueue()

    def ask() -> None:
        out.put(mux.search(asked(np.ones((1, 4), np.float32)), 10.0))

    threading.Thread(target=ask).start()
    requests = server.requests.get(timeout=10)
    server.replies.put(answer(next(requests)))
    assert not isinstance(out.get(timeout=10), Exception)
    assert list(requests) == []  # no search for IDLE_SECONDS: the requests end, so the server ends the stream
    server.replies.put(None)
    first = mux._stream
    assert first is not None
    first._reader.join(10)
    assert not first._reader.is_alive()  # no thread is left behind while the client idles

    threading.Thread(target=ask).start()
    again = server.requests.get(timeout=10)
    server.replies.put(answer(next(again)))
    assert not isinstance(out.get(timeout=10), Exception)
    assert mux._stream is not first
    mux.close()


def test_a_fork_closes_the_stream_and_a_search_in_flight_goes_again_on_a_new_one() -> None:
    server = FakeServer()
    mux = SearchMux(server.open)
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    threading.Thread(target=lambda: out.put(mux.search(asked(np.ones((1, 4), np.float32)), 10.0))).start()
    requests = server.requests.get(timeout=10)
    next(requests)  # sent, not answered
    first = mux._stream
    assert first is not None
    _mux._before_fork()  # what os.fork runs first
    try:
        assert not first._reader.is_alive()  # the stream's thread ended before the fork
    finally:
        _mux._after_fork()
    again = server.requests.get(timeout=10)  # the search in flight goes again
    server.replies.put(answer(next(again)))
    assert not isinstance(out.get(timeout=10), Exception)
    mux.close()
