"""A member that holds writes its primary lacks is told apart from one that is only behind (catchup.diverged)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from shoal.shard.catchup import diverged
from shoal.shard.core import Shard
from shoal.v1 import shard_pb2


class _LogCall:
    """A ReadLog call's stand-in: the entries after `after` of a shard's op log, read one by one."""

    def __init__(self, shard: Shard, after: int) -> None:
        self.entries = shard.storage.entries(after, 100)
        self.cancelled = False

    async def read(self) -> Any:
        if not self.entries:
            return grpc.aio.EOF
        seq, plan = self.entries.pop(0)
        return shard_pb2.ReplicateRequest(seq=seq, plan=plan)

    def cancel(self) -> None:
        self.cancelled = True


class _PrimaryStub:
    """The primary's ReadLog, served from its shard."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.calls: list[_LogCall] = []

    def ReadLog(self, request: shard_pb2.ReadLogRequest, timeout: float, metadata: object) -> _LogCall:  # noqa: N802
        self.calls.append(_LogCall(self.shard, int(request.after)))
        return self.calls[-1]


def _log(shard: Shard, *plans: bytes) -> None:
    for plan in plans:
        shard.storage.write(shard.storage.batch(), plan)


def _diverged(member: Shard, primary: Shard) -> bool:
    state = shard_pb2.ReplicaStateResponse(
        role="primary", seq=primary.storage.seq, log_start=primary.storage.log_start()
    )
    stub = _PrimaryStub(primary)
    found = asyncio.run(diverged(member, stub, state, ()))  # type: ignore[arg-type]
    assert all(call.cancelled for call in stub.calls)  # the primary's stream is never left open
    return found


def test_a_member_with_writes_its_primary_lacks_has_diverged(tmp_path: Path) -> None:
    with Shard(tmp_path / "p") as primary, Shard(tmp_path / "m") as member:
        assert not _diverged(member, primary)  # both empty
        _log(primary, b"w1", b"w2", b"w3")
        _log(member, b"w1", b"w2")
        assert not _diverged(member, primary)  # only behind: the op log brings it up to date
        _log(member, b"w3")
        assert not _diverged(member, primary)  # identical
        _log(member, b"lost")
        assert _diverged(member, primary)  # ahead: a write no one acknowledged, which the primary never had
        _log(primary, b"new primary's write")
        assert _diverged(member, primary)  # same length, different write at its last sequence
