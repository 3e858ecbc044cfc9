"""The results servers hand each other and the SDK, and their wire form: search top-k lists, found points, pages.

Decoding checks that an answer's parts fit together (ValueError otherwise), so a bad answer is never merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal._config import MAX_MESSAGE_BYTES
from shoal._errors import ResourceExhausted
from shoal._wire import RESERVED_ID, decode_counts, decode_ids, decode_matrix, encode_counts, encode_ids, encode_matrix
from shoal.v1 import types_pb2 as pb


@dataclass(frozen=True)
class TopK:
    """Results of q queries in k columns, nearest first; columns from counts[i] on are padding.

    ids: (q, k) uint64, or object array of str; distances: (q, k) float32; counts: (q,) integers;
    payloads: (q, k) object array of bytes, or None; vectors: (q, k, dim) float32, or None.
    """

    ids: np.ndarray
    distances: np.ndarray
    counts: np.ndarray
    payloads: np.ndarray | None = None
    vectors: np.ndarray | None = None

    @property
    def queries(self) -> int:
        """The number of queries (rows)."""
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        """The number of columns."""
        return int(self.ids.shape[1])


def empty(q: int, k: int, *, string_ids: bool, payloads: bool = False, dim: int | None = None) -> TopK:
    """A result of q queries with k columns of padding only."""
    return TopK(
        # Padding ids can never be real ones: "" and 2**64 - 1 are refused as ids (shoal._wire.check_ids).
        ids=np.full((q, k), "", dtype=object) if string_ids else np.full((q, k), RESERVED_ID, dtype=np.uint64),
        distances=np.full((q, k), np.inf, dtype=np.float32),
        counts=np.zeros(q, dtype=np.uint32),
        payloads=np.full((q, k), b"", dtype=object) if payloads else None,
        vectors=np.zeros((q, k, dim), dtype=np.float32) if dim is not None else None,
    )


def valid_mask(part: TopK) -> np.ndarray:
    """(q, k) booleans: True where a column holds a real hit rather than padding."""
    counts = np.minimum(np.asarray(part.counts, dtype=np.int64), part.k)
    return np.arange(part.k)[None, :] < counts[:, None]


@dataclass(frozen=True)
class Found:
    """Points found by id: ids (n,); vectors (n, dim) float32 or None; payloads (n,) of bytes or None."""

    ids: np.ndarray
    vectors: np.ndarray | None = None
    payloads: np.ndarray | None = None


# A search answer's bytes apart from its q x k cells: k, request id, error fields, the plan, framing.
ANSWER_OVERHEAD = 4096
# The least a cell takes on the wire: an id as 8 bytes (uint64; string ids are counted alike), a float32
# distance, and with payloads their field framing (a tag and a length byte, for an empty payload).
_CELL_BYTES, _PAYLOAD_FRAMING = 12, 2


def answer_bytes(queries: int, k: int, dim: int, with_payload: bool, with_vectors: bool) -> int:
    """The estimated bytes of a search answer before any payload: what the budget checks before work starts."""
    cell = _CELL_BYTES + (_PAYLOAD_FRAMING if with_payload else 0) + (4 * dim if with_vectors else 0)
    return queries * (k * cell + 4) + ANSWER_OVERHEAD


def answer_rows(k: int, dim: int, with_payload: bool, with_vectors: bool) -> int:
    """The most query rows whose answer of this shape fits in one message by the estimate."""
    row = answer_bytes(1, k, dim, with_payload, with_vectors) - ANSWER_OVERHEAD
    return max(0, (MAX_MESSAGE_BYTES - ANSWER_OVERHEAD) // row)


def check_answer_budget(queries: int, k: int, dim: int, with_payload: bool, with_vectors: bool) -> None:
    """ResourceExhausted, saying how to split the call, when its answer cannot fit in one message."""
    fit = answer_rows(k, dim, with_payload, with_vectors)
    if queries <= fit:
        return
    size = answer_bytes(queries, k, dim, with_payload, with_vectors)
    extras = "".join(
        text for on, text in ((with_payload, ", with payloads"), (with_vectors, f", with {dim}-d vectors")) if on
    )
    raise ResourceExhausted(
        f"the answer to {queries} queries with k={k}{extras} would take at least {size / 2**20:.0f} MiB, over the "
        f"{MAX_MESSAGE_BYTES // 2**20} MiB message limit: split the call into searches of at most {fit} queries"
        + (", or lower k" if k > 1 else "")
        + (", or leave out the vectors" if with_vectors else "")
    )


def check_answer_size(msg: pb.SearchResponse) -> pb.SearchResponse:
    """The answer, or ResourceExhausted when it is too large to send (its payloads, most likely)."""
    size = msg.ByteSize()
    if size > MAX_MESSAGE_BYTES:
        rows = len(msg.counts) // 4
        raise ResourceExhausted(
            f"the answer to {rows} queries with k={msg.k} takes {size / 2**20:.0f} MiB, over the "
            f"{MAX_MESSAGE_BYTES // 2**20} MiB message limit (large payloads?): split the call into searches "
            f"of at most {max(1, rows * MAX_MESSAGE_BYTES // size // 2)} queries, or lower k"
        )
    return msg


def topk_from_proto(msg: pb.SearchResponse, queries: int, with_payload: bool = False) -> TopK:
    """A shard's search answer as a TopK of `queries` rows; ValueError when its parts do not fit together.

    With `with_payload`, an answer without payloads gets empty ones, so the merged answer always has them.
    """
    k = msg.k
    cells = queries * k
    ids = decode_ids(msg.ids)
    if len(ids) != cells:
        raise ValueError(f"{len(ids)} ids for {queries} queries x k={k}")
    distances = decode_matrix(msg.distances, "distances")
    if distances.size != cells:
        raise ValueError(f"{distances.size} distances for {queries} queries x k={k}")
    counts = decode_counts(msg.counts)
    if len(counts) != queries:
        raise ValueError(f"{len(counts)} counts for {queries} queries")
    payloads = None
    if msg.payloads:
        if len(msg.payloads) != cells:
            raise ValueError(f"{len(msg.payloads)} payloads for {queries} queries x k={k}")
        payloads = _object_array(list(msg.payloads)).reshape(queries, k)
    elif with_payload:
        payloads = np.full((queries, k), b"", dtype=object)
    vectors = None
    if msg.vectors.rows or msg.vectors.dim:
        flat = decode_matrix(msg.vectors, "result vectors")
        if len(flat) != cells:
            raise ValueError(f"{len(flat)} result vectors for {queries} queries x k={k}")
        vectors = flat.reshape(queries, k, flat.shape[1])
    return TopK(ids.reshape(queries, k), distances.reshape(queries, k), counts, payloads, vectors)


def topk_to_proto(result: TopK, request_id: int = 0) -> pb.SearchResponse:
    """The wire answer of a merged search."""
    q, k = result.queries, result.k
    if result.ids.dtype == object:
        ids = pb.Ids(str=result.ids.ravel().tolist())
    else:
        ids = pb.Ids(u64=np.ascontiguousarray(result.ids, dtype="<u8").tobytes())
    msg = pb.SearchResponse(
        k=k,
        ids=ids,
        distances=encode_matrix(result.distances.reshape(q, k)),
        counts=encode_counts(result.counts),
        request_id=request_id,
    )
    if result.payloads is not None:
        msg.payloads.extend(result.payloads.ravel().tolist())
    if result.vectors is not None:
        msg.vectors.CopyFrom(encode_matrix(result.vectors.reshape(q * k, result.vectors.shape[2])))
    return msg


def found_from_proto(msg: pb.GetResponse, with_vectors: bool, with_payload: bool) -> Found:
    """A shard's get answer; ValueError when its vectors or payloads do not match its ids."""
    ids = decode_ids(msg.ids)
    vectors = None
    if with_vectors:
        vectors = decode_matrix(msg.vectors, "found vectors")
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors for {len(ids)} found ids")
    payloads = None
    if with_payload:
        if len(msg.payloads) not in (0, len(ids)):
            raise ValueError(f"{len(msg.payloads)} payloads for {len(ids)} found ids")
        payloads = _object_array(list(msg.payloads) or [b""] * len(ids))
    return Found(ids, vectors, payloads)


def found_to_proto(found: Found) -> pb.GetResponse:
    """The wire answer of a get."""
    msg = pb.GetResponse(ids=encode_ids(found.ids))
    if found.vectors is not None:
        msg.vectors.CopyFrom(encode_matrix(found.vectors))
    if found.payloads is not None:
        msg.payloads.extend(found.payloads.tolist())
    return msg


def _object_array(items: list[bytes]) -> np.ndarray:
    # np.array(list_of_bytes) would make a fixed-width bytes array that strips trailing zero bytes.
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclass(frozen=True)
class Page:
    """A page of a scroll: ids, vectors and payloads when asked, and the cursor of the next page ("" at the end)."""

    ids: np.ndarray
    vectors: np.ndarray | None
    payloads: list[bytes] | None
    next_cursor: str


def page_to_proto(page: Page) -> pb.ScrollResponse:
    """The wire answer of a scroll."""
    msg = pb.ScrollResponse(ids=encode_ids(page.ids), payloads=page.payloads or [], next_cursor=page.next_cursor)
    if page.vectors is not None and len(page.vectors):
        msg.vectors.CopyFrom(encode_matrix(page.vectors))
    return msg
