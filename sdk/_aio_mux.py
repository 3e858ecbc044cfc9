"""The asyncio client's plain searches over one search stream: searches of concurrent tasks share a message.

As `_mux.py` does for the blocking client's threads: `AsyncClient.search` sends each search as a message of a
stream the client keeps open while it searches, and searches of one shape queued while the stream's writer
was busy leave together as one message. Each caller waits for its own rows at most its timeout; one that
gives up (or whose task is cancelled) withdraws its search. A broken stream fails the searches it carried and
the next search opens a new one; a stream without a search for IDLE_SECONDS closes. Everything runs on the
client's event loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from shoal._errors import DeadlineExceeded, ShoalError, Unavailable, from_rpc_error
from shoal._mux import IDLE_SECONDS, ChannelClosed, _Asked, answer, asking, fail_all, message, outgoing, withdrawn
from shoal._search import Search
from shoal._types import Fields, SearchResult
from shoal.v1 import types_pb2 as pb

# Opens the stream: the stub's SearchStream bound to the client's metadata, over an async iterator of requests.
AsyncOpen = Callable[[AsyncIterator[pb.SearchRequest]], Any]

_END = object()  # in the outbox: the stream is closing


class _Stream:
    """One open SearchStream: the outbox its request iterator drains, and the messages awaiting an answer."""

    def __init__(self, open_: AsyncOpen, ids: Iterator[int]) -> None:
        self._ids = ids
        self._outbox: asyncio.Queue[object] = asyncio.Queue()  # _Asked, a cancel request, or _END
        self._sent: dict[int, list[_Asked]] = {}
        self.broken = False
        self._call = open_(self._requests())
        self._reader = asyncio.ensure_future(self._read())

    def submit(self, asked: _Asked) -> bool:
        """Queue a search; False when the stream is closed (the caller opens another)."""
        if self.broken:
            return False
        self._outbox.put_nowait(asked)
        return True

    def withdraw(self, asked: _Asked) -> None:
        """The caller gave up: a search not yet sent is dropped; one sent alone is cancelled on the server."""
        if (cancel := withdrawn(asked, self._sent, self.broken)) is not None:
            self._outbox.put_nowait(cancel)

    def close(self, error: ShoalError) -> None:
        """End the stream, failing the searches still waiting with `error`."""
        self._break(error)
        self._call.cancel()

    async def ended(self) -> None:
        """Wait until the stream's reader has finished."""
        with contextlib.suppress(BaseException):
            await self._reader

    async def _requests(self) -> AsyncIterator[pb.SearchRequest]:
        held: object = None  # taken from the outbox but of another shape than the message before it
        while True:
            if held is not None:
                item, held = held, None
            else:
                try:
                    item = await asyncio.wait_for(self._outbox.get(), IDLE_SECONDS)
                except TimeoutError:
                    if self._idle():
                        return  # the server ends the stream once it has answered; the reader then ends
                    continue
            if item is _END:
                return
            out, held = outgoing(item, self._take)
            if isinstance(out, pb.SearchRequest):
                yield out
            elif out and not self.broken:
                request_id = next(self._ids)
                self._sent[request_id] = out
                yield message(out, request_id)

    def _take(self) -> object:
        try:
            return self._outbox.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def _idle(self) -> bool:
        """Close the stream for new searches when nothing is queued or awaited; whether it was."""
        if self.broken or self._sent or not self._outbox.empty():
            return self.broken
        self.broken = True
        return True

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                batch = self._sent.pop(reply.request_id, None)
                if batch is not None:
                    answer(batch, reply)
            self._break(Unavailable("the server ended the search stream"))
        except grpc.RpcError as exc:
            self._break(from_rpc_error(exc))
        except asyncio.CancelledError:
            self._break(Unavailable("the client is closed"))
            raise
        except Exception as exc:  # whatever ends the stream, the waiting searches must hear of it
            self._break(Unavailable(f"the search stream failed: {exc}"))

    def _break(self, error: ShoalError) -> None:
        batches = list(self._sent.values())
        self._sent.clear()
        self.broken = True
        waiting = []
        while (item := self._take()) is not None:
            waiting.append(item)
        self._outbox.put_nowait(_END)
        fail_all(itertools.chain(itertools.chain.from_iterable(batches), waiting), error)


class AsyncSearchMux:
    """An asyncio client's plain searches over its search stream (opened on use, closed when idle)."""

    def __init__(self, open_: AsyncOpen) -> None:
        self._open = open_
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)  # one counter across reopened streams

    async def search(
        self, search: Search, timeout: float | None, traceparent: str = "", fields: Fields = None
    ) -> SearchResult:
        """The answer of one search, waited for at most `timeout` seconds."""
        future: asyncio.Future[SearchResult] = asyncio.get_running_loop().create_future()
        asked = asking(search, fields, traceparent, future)
        stream = self._submit(asked)
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout)
        except BaseException:  # the caller's task was cancelled: withdraw the search, then let it go on
            stream.withdraw(asked)
            raise
        if not done:
            stream.withdraw(asked)
            raise DeadlineExceeded(f"no answer within the timeout of {timeout} s")
        return future.result()

    def _submit(self, asked: _Asked) -> _Stream:
        if self._stream is None or not self._stream.submit(asked):
            try:
                self._stream = _Stream(self._open, self._ids)
            except grpc.RpcError as exc:  # the stream could not be opened
                raise from_rpc_error(exc) from exc
            except (ValueError, grpc.aio.UsageError) as exc:  # gRPC's answer on a closed channel
                raise ChannelClosed(str(exc)) from exc
            self._stream.submit(asked)
        return self._stream

    async def close(self) -> None:
        """End the stream (a later search opens a new one, if the channel is still open)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(Unavailable("the client is closed"))
            await stream.ended()
