"""`shoal check` compares a group's members only at one moment of its history (no processes: the reads faked)."""

from __future__ import annotations

import asyncio

import pytest

from shoal import _check
from shoal._group_status import MemberStatus
from shoal._tls import ClusterCredentials

MEMBERS = [MemberStatus(m, f"{m}:1", "replica", "in-sync") for m in ("a", "b", "c")]


def run(
    monkeypatch: pytest.MonkeyPatch, sequences: list[dict[str, int]], counts: list[dict[str, int]]
) -> tuple[dict[str, tuple[int, str]], int]:
    """`_settled` over members whose sequence reads and digests follow the scripts; (results, reads made)."""
    seqs, digests = iter(sequences), iter(counts)
    reads = {"seq": 0, "digest": 0}
    current: dict[str, dict[str, int]] = {}

    async def sequence(address: str, credentials: ClusterCredentials) -> int:
        if reads["seq"] % 3 == 0:
            current["seq"] = next(seqs)
        reads["seq"] += 1
        return current["seq"][address[0]]

    async def digest(address: str, name: str, credentials: ClusterCredentials, version: int = 0) -> tuple[int, str]:
        if reads["digest"] % 3 == 0:
            current["count"] = next(digests)
        reads["digest"] += 1
        return current["count"][address[0]], f"d{current['count'][address[0]]}"

    monkeypatch.setattr(_check, "_sequence", sequence)
    monkeypatch.setattr(_check, "digest", digest)
    monkeypatch.setattr(_check, "SETTLE_PAUSE", 0.0)
    results = asyncio.run(_check._settled(MEMBERS, "c", 7, ClusterCredentials()))
    return results, reads["digest"] // 3


def test_members_read_while_a_write_reaches_them_are_read_again_and_found_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The primary applied one more write than its replicas when it was read; a moment later all have it.
    sequences = [{"a": 10, "b": 9, "c": 9}] + [{"a": 10, "b": 10, "c": 10}] * 3  # before and after each read
    counts = [{"a": 5, "b": 4, "c": 4}, {"a": 5, "b": 5, "c": 5}]
    results, rounds = run(monkeypatch, sequences, counts)
    assert rounds == 2 and set(results.values()) == {(5, "d5")}


def test_members_at_one_sequence_that_differ_are_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sequences = [{"a": 10, "b": 10, "c": 10}] * 2
    counts = [{"a": 5, "b": 4, "c": 4}]
    results, rounds = run(monkeypatch, sequences, counts)
    assert rounds == 1 and results == {"a": (5, "d5"), "b": (4, "d4"), "c": (4, "d4")}


def test_a_difference_while_sequences_keep_moving_is_reported_after_the_last_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sequences = [{"a": 10 + i, "b": 9 + i, "c": 9 + i} for i in range(2 * _check.ATTEMPTS)]
    counts = [{"a": 5, "b": 4, "c": 4}] * _check.ATTEMPTS
    results, rounds = run(monkeypatch, sequences, counts)
    assert rounds == _check.ATTEMPTS and results["a"] != results["b"]
