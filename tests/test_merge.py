"""Merging shard answers: the global top-k is brute force over the union; get keeps the request order."""

from __future__ import annotations

import numpy as np
import pytest

from shoal._results import Found, TopK, empty, topk_from_proto, topk_to_proto
from shoal.coordinator.merge import merge, merge_found

DIM = 4


def make_ids(n: int, string_ids: bool, rng: np.random.Generator) -> np.ndarray:
    if string_ids:
        return np.array([f"id-{i}" for i in rng.permutation(n)], dtype=object)
    return rng.choice(2**40, size=n, replace=False).astype(np.uint64) + np.uint64(1)


def local_topk(
    ids: np.ndarray, distances: np.ndarray, vectors: np.ndarray, payloads: np.ndarray, k: int, string_ids: bool
) -> TopK:
    """What a shard answers: its own top-k of each query, padded to k columns."""
    q, n = distances.shape
    out = empty(q, k, string_ids=string_ids, payloads=True, dim=DIM)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    m = order.shape[1]
    out.ids[:, :m] = ids[order]
    out.distances[:, :m] = np.take_along_axis(distances, order, axis=1)
    out.payloads[:, :m] = payloads[order]  # type: ignore[index]
    out.vectors[:, :m] = vectors[order]  # type: ignore[index]
    return TopK(out.ids, out.distances, np.full(q, m, dtype=np.uint32), out.payloads, out.vectors)


@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_merge_equals_brute_force_over_the_union(string_ids: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, k = int(rng.integers(1, 8)), int(rng.integers(1, 40))
    # Shard sizes from empty and shorter than k to much larger than k.
    sizes = [0, int(rng.integers(1, k + 1)), int(rng.integers(0, 3 * k)), int(rng.integers(k, 5 * k))]
    n = sum(sizes)
    ids = make_ids(n, string_ids, rng)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    payloads = np.empty(n, dtype=object)
    payloads[:] = [f'{{"n":{i}}}'.encode() for i in range(n)]
    queries = rng.standard_normal((q, DIM)).astype(np.float32)
    distances = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=-1).astype(np.float32)

    bounds = np.cumsum([0, *sizes])
    parts = [
        local_topk(ids[a:b], distances[:, a:b], vectors[a:b], payloads[a:b], k, string_ids)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    result = merge(parts, k)

    expected = np.argsort(distances, axis=1, kind="stable")[:, :k]
    hits = min(k, n)
    assert result.ids.shape == (q, k) and result.distances.dtype == np.float32
    assert result.counts.tolist() == [hits] * q
    assert (result.ids[:, :hits] == ids[expected]).all()
    assert np.array_equal(result.distances[:, :hits], np.take_along_axis(distances, expected, axis=1))
    assert (result.payloads[:, :hits] == payloads[expected]).all()  # type: ignore[index]
    assert np.array_equal(result.vectors[:, :hits], vectors[expected])  # type: ignore[index]
    # Padding after the hits: id 0 or "", +inf, no payload, zero vector.
    assert (result.ids[:, hits:] == ("" if string_ids else 0)).all()
    assert np.isinf(result.distances[:, hits:]).all()
    assert (result.payloads[:, hits:] == b"").all()  # type: ignore[index]
    assert not result.vectors[:, hits:].any()  # type: ignore[index]


def part(ids: list, distances: list[float], count: int, payloads: list[bytes] | None = None) -> TopK:
    """One query's answer of a shard, as a TopK of one row."""
    dtype = object if ids and isinstance(ids[0], str) else np.uint64
    blobs = None
    if payloads is not None:
        blobs = np.empty((1, len(payloads)), dtype=object)
        blobs[0, :] = payloads
    return TopK(
        np.array([ids], dtype=dtype), np.array([distances], dtype=np.float32), np.array([count], dtype=np.uint32), blobs
    )


def test_padding_never_beats_a_real_hit() -> None:
    # Padding is marked by counts, not by its distance: even a padding distance of -inf loses.
    a = part([5, 0, 0], [np.inf, -np.inf, -np.inf], 1)
    b = part([7, 0], [3.0e38, np.inf], 1)
    result = merge([a, b], 3)
    assert result.counts.tolist() == [2]
    assert result.ids.tolist() == [[7, 5, 2**64 - 1]]  # padding is the reserved id, never a real one
    assert result.distances.tolist()[0][:2] == [np.float32(3.0e38), np.inf]


def test_fewer_hits_than_k_are_padded_to_k() -> None:
    result = merge([part(["x", ""], [0.5, np.inf], 1), part(["", ""], [np.inf, np.inf], 0)], 4)
    assert result.ids.tolist() == [["x", "", "", ""]]
    assert result.counts.tolist() == [1]
    assert result.distances[0, 1:].tolist() == [np.inf] * 3


def test_ties_go_to_the_earlier_shard_then_the_earlier_column() -> None:
    a = part([1, 2, 3], [0.5, 0.5, 0.9], 3)
    b = part([4, 5, 6], [0.1, 0.5, 0.5], 3)
    assert merge([a, b], 5).ids.tolist() == [[4, 1, 2, 5, 6]]
    assert merge([b, a], 5).ids.tolist() == [[4, 5, 6, 1, 2]]
    assert merge([a, b], 5).ids.tolist() == merge([a, b], 5).ids.tolist()


def test_parts_of_different_widths_and_a_smaller_k() -> None:
    a = part([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], 4)
    b = part([9], [0.15], 1)
    c = TopK(np.zeros((1, 0), np.uint64), np.zeros((1, 0), np.float32), np.zeros(1, np.uint32))
    result = merge([a, b, c], 2)
    assert result.ids.tolist() == [[1, 9]] and result.counts.tolist() == [2]


def test_counts_beyond_the_columns_are_clamped() -> None:
    result = merge([part([1, 2], [0.1, 0.2], 9)], 3)
    assert result.counts.tolist() == [2] and result.ids.tolist() == [[1, 2, 2**64 - 1]]


def test_payloads_travel_with_their_hits() -> None:
    a = part(["a", "b"], [0.3, 0.4], 2, [b'{"x":"a"}', b'{"x":"b"}'])
    b = part(["c", ""], [0.1, np.inf], 1, [b'{"x":"c"}', b""])
    result = merge([a, b], 3)
    assert result.ids.tolist() == [["c", "a", "b"]]
    assert result.payloads is not None
    assert result.payloads.tolist() == [[b'{"x":"c"}', b'{"x":"a"}', b'{"x":"b"}']]


def test_a_string_collection_shard_without_hits_may_pad_with_integers() -> None:
    result = merge([part([0, 0], [np.inf, np.inf], 0), part(["s"], [0.2], 1)], 2)
    assert result.ids.tolist() == [["s", ""]]


def test_inconsistent_parts_are_rejected() -> None:
    with pytest.raises(ValueError, match="disagree on the id type"):
        merge([part([3], [0.1], 1), part(["s"], [0.2], 1)], 2)
    two_queries = TopK(np.zeros((2, 1), np.uint64), np.zeros((2, 1), np.float32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="different numbers of queries"):
        merge([part([3], [0.1], 1), two_queries], 2)
    with pytest.raises(ValueError, match="at least one part"):
        merge([], 2)


def test_a_merged_result_survives_the_wire() -> None:
    a = part(["a", "b"], [0.3, 0.4], 2, [b'{"x":1}', b"{}"])
    result = merge([a, part(["c", ""], [0.1, np.inf], 1, [b"", b""])], 4)
    back = topk_from_proto(topk_to_proto(result, request_id=9), queries=1)
    assert back.ids.tolist() == result.ids.tolist()
    assert back.distances.tolist() == result.distances.tolist()
    assert back.counts.tolist() == result.counts.tolist()
    assert back.payloads.tolist() == result.payloads.tolist()  # type: ignore[union-attr]


def found(ids: list, with_vectors: bool = True) -> Found:
    arr = np.array(ids, dtype=object if ids and isinstance(ids[0], str) else np.uint64)
    # A vector that depends only on the id, so it can be checked after reordering.
    vectors = np.array(
        [[float(int.from_bytes(str(i).encode()[-3:], "little"))] * DIM for i in ids], np.float32
    ).reshape(len(ids), DIM)
    payloads = np.empty(len(ids), dtype=object)
    payloads[:] = [f"{i}".encode() for i in ids]
    return Found(arr, vectors if with_vectors else None, payloads)


@pytest.mark.parametrize("string_ids", [False, True])
def test_get_results_come_back_in_request_order(string_ids: bool) -> None:
    rng = np.random.default_rng(3)
    requested = make_ids(200, string_ids, rng)
    exists = rng.random(200) < 0.7
    shard_of = rng.integers(0, 3, 200)
    parts = [found(requested[(shard_of == s) & exists].tolist()) for s in range(3)]
    result = merge_found(requested, parts)
    assert result.ids.tolist() == requested[exists].tolist()
    everything = found(requested[exists].tolist())
    assert np.array_equal(result.vectors, everything.vectors)  # type: ignore[arg-type]
    assert result.payloads.tolist() == everything.payloads.tolist()  # type: ignore[union-attr]


def test_get_of_nothing_found() -> None:
    nothing = Found(np.zeros(0, np.uint64), np.zeros((0, 0), np.float32))
    result = merge_found(np.array([4, 5], np.uint64), [nothing])
    assert result.ids.tolist() == [] and result.vectors.shape == (0, 0)  # type: ignore[union-attr]
    assert merge_found(np.array(["a"], dtype=object), []).ids.tolist() == []


def test_get_rejects_ids_that_were_not_asked_or_found_twice() -> None:
    with pytest.raises(ValueError, match="id 9 was found but not requested"):
        merge_found(np.array([1, 2], np.uint64), [found([2]), found([9])])
    with pytest.raises(ValueError, match="'z' was found but not requested"):
        merge_found(np.array(["a"], dtype=object), [found(["z"])])
    with pytest.raises(ValueError, match="found more than once"):
        merge_found(np.array([1, 2], np.uint64), [found([2]), found([2])])


def test_a_shard_answer_without_payloads_gets_empty_ones_when_they_were_asked() -> None:
    answer = topk_to_proto(part([1, 2], [0.1, 0.2], 2))
    assert topk_from_proto(answer, queries=1).payloads is None
    payloads = topk_from_proto(answer, queries=1, with_payload=True).payloads
    assert payloads is not None and payloads.tolist() == [[b"", b""]]


def test_a_malformed_shard_answer_is_rejected() -> None:
    answer = topk_to_proto(part([1, 2], [0.1, 0.2], 2))
    with pytest.raises(ValueError, match="2 ids for 2 queries x k=2"):
        topk_from_proto(answer, queries=2)
    answer.counts = b""
    with pytest.raises(ValueError, match="0 counts for 1 queries"):
        topk_from_proto(answer, queries=1)


@pytest.mark.parametrize("string_ids", [False, True])
def test_a_lone_part_comes_back_as_the_general_merge_returns_it(string_ids: bool) -> None:
    # One shard's answer skips the sort when it is already nearest first; a zero-width second part forces the
    # general path, which must agree on everything: order, padding, counts and payloads.
    rng = np.random.default_rng(7)
    for _ in range(300):
        q, k = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        width = k if rng.random() < 0.8 else k + 1
        distances = rng.random((q, width)).astype(np.float32)
        if rng.random() < 0.7:
            distances.sort(axis=1)
        if rng.random() < 0.2:
            distances[0, 0] = distances[0, -1]  # a tie, or out of order
        ids = make_ids(q * width, string_ids, rng).reshape(q, width)
        payloads = np.array([[b"p%d" % j for j in range(width)]] * q, dtype=object) if rng.random() < 0.5 else None
        part = TopK(ids, distances, rng.integers(0, width + 2, q).astype(np.uint32), payloads)
        nothing = empty(q, 0, string_ids=string_ids, payloads=payloads is not None)
        fast, general = merge([part], k), merge([part, nothing], k)
        for field in ("ids", "distances", "counts", "payloads"):
            got, want = getattr(fast, field), getattr(general, field)
            assert (got is None) == (want is None), field
            if want is not None:
                assert got.dtype == want.dtype and np.array_equal(got, want), (field, part)
