"""The AsyncClient an integration's async methods use: the one given, or a copy of its Client per event loop."""

from __future__ import annotations

import asyncio
import threading

from shoal._aio import AsyncClient
from shoal._client import Client


class LoopClient:
    """The AsyncClient of the running event loop: the one given, else a copy of `client` made in that loop.

    A grpc.aio channel belongs to the loop it was made in. An application keeps one loop, but each test of an
    async suite runs its own, so the copy is made again when a thread's loop changes; the previous copy's
    channel closes when it is dropped.
    """

    def __init__(self, client: Client, given: AsyncClient | None = None) -> None:
        self._client = client
        self._given = given
        self._local = threading.local()  # a loop runs in one thread: (loop, its AsyncClient) per thread

    def get(self) -> AsyncClient:
        """The AsyncClient to await in the running loop (made on first use in it)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        made: tuple[asyncio.AbstractEventLoop, AsyncClient] | None = getattr(self._local, "made", None)
        if made is None or made[0] is not loop:
            made = (loop, self._client._async_copy())
            self._local.made = made
        return made[1]
