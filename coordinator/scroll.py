"""Scroll across shards: the opaque cursor (topology version, shard position, that shard's cursor) and the page.

Scroll walks the shards in topology order and each shard's points by internal key, so the cursor names the
shard it stopped in and the shard's own cursor; a cursor from another topology version is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

import numpy as np

from shoal._errors import Internal, InvalidArgument
from shoal._results import Page
from shoal._wire import decode_ids, decode_matrix
from shoal.v1 import types_pb2 as pb


def encode_cursor(version: int, shard: int, cursor: str) -> str:
    """An opaque scroll cursor: the topology version, a shard's position in it and that shard's cursor."""
    raw = json.dumps({"v": version, "s": shard, "c": cursor}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(text: str, version: int, shards: int) -> tuple[int, str]:
    """(shard position, shard cursor) of a scroll cursor; InvalidArgument for one this cluster did not give."""
    if not text:
        return 0, ""
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode()))
        shard, cursor, made_for = value["s"], value["c"], value["v"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidArgument(f"cursor {text[:40]!r} is not one this cluster gave out") from None
    if not isinstance(shard, int) or not 0 <= shard < shards or not isinstance(cursor, str):
        raise InvalidArgument(f"cursor {text[:40]!r} is not one this cluster gave out")
    if made_for != version:
        raise InvalidArgument(f"the cursor belongs to topology version {made_for}, not {version}: start over")
    return shard, cursor


def points_in(answer: pb.ScrollResponse) -> int:
    """The number of points in a shard's scroll answer."""
    return len(answer.ids.str) or len(answer.ids.u64) // 8


def join_pages(answers: Sequence[pb.ScrollResponse], with_payload: bool, with_vectors: bool, next_cursor: str) -> Page:
    """The shards' pages as one, in order."""
    parts = [a for a in answers if a.ids.str or a.ids.u64]
    ids = np.concatenate([decode_ids(a.ids) for a in parts]) if parts else np.zeros(0, np.uint64)
    vectors = None
    if with_vectors:
        matrices = [decode_matrix(a.vectors, "scroll vectors") for a in parts]
        vectors = np.concatenate(matrices) if matrices else np.zeros((0, 0), np.float32)
        if len(vectors) != len(ids):
            raise Internal(f"the shards answered scroll with {len(vectors)} vectors for {len(ids)} ids")
    payloads = None
    if with_payload:
        payloads = [p for a in parts for p in (a.payloads or [b""] * points_in(a))]
    return Page(ids, vectors, payloads, next_cursor)
