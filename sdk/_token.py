"""Read-your-writes consistency tokens: per shard group, the sequence number a client's writes reached."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Token = dict[str, int]  # shard group name -> the sequence number its primary gave the write

# The words a member uses to refuse a read it is behind the caller's token for (the coordinator then asks the
# group's primary, which has every acknowledged write).
BEHIND = "behind the consistency token"
WAIT_SECONDS = 0.25  # how long a member behind a token waits to catch up before refusing the read


def merge(tokens: Iterable[Mapping[str, int]]) -> Token:
    """One token covering all of `tokens`: the highest sequence per group."""
    merged: Token = {}
    for token in tokens:
        for group, seq in token.items():
            if seq > merged.get(group, 0):
                merged[group] = int(seq)
    return merged
