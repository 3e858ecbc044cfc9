"""The wire codec and the shared input checks."""

import numpy as np
import pytest

from shoal import InvalidArgument
from shoal._wire import (
    as_id_array,
    check_ids,
    check_payloads,
    check_upsert,
    decode_counts,
    decode_ids,
    decode_matrix,
    encode_counts,
    encode_ids,
    encode_matrix,
)
from shoal.v1 import types_pb2 as pb


def test_matrix_round_trip_is_exact_and_zero_copy() -> None:
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    msg = encode_matrix(x)
    assert (msg.rows, msg.dim, len(msg.data)) == (7, 5, 7 * 5 * 4)
    y = decode_matrix(msg)
    assert y.tobytes() == x.tobytes()
    assert not y.flags.owndata  # a view over the message's bytes


def test_matrix_is_little_endian_float32_row_major() -> None:
    msg = encode_matrix(np.array([[1.0, 2.0]], dtype=">f8"))
    assert msg.data == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_matrix_with_wrong_byte_count_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="do not hold 2 x 3"):
        decode_matrix(pb.Matrix(rows=2, dim=3, data=b"\0" * 20))


def test_ids_round_trip() -> None:
    ints = decode_ids(encode_ids(np.array([0, 5, 2**64 - 1], dtype=np.uint64)))
    assert ints.dtype == np.uint64 and ints.tolist() == [0, 5, 2**64 - 1]
    strs = decode_ids(encode_ids(["a", "héllo"]))
    assert strs.dtype == object and strs.tolist() == ["a", "héllo"]
    assert as_id_array(range(3)).dtype == np.uint64


def test_counts_round_trip() -> None:
    assert decode_counts(encode_counts(np.array([3, 0, 10]))).tolist() == [3, 0, 10]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([], dtype=np.uint64), "empty"),
        (np.array([1, 2, 1], dtype=np.uint64), "duplicate id in the batch: 1"),
        (np.array(["a", "b", "a"], dtype=object), "duplicate id in the batch: 'a'"),
        (np.array([""], dtype=object), "must be 1-512 bytes"),
    ],
)
def test_bad_ids(ids: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_ids(ids)


def test_mixed_and_negative_ids_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="not a mix"):
        as_id_array([1, "a"])
    with pytest.raises(InvalidArgument, match="non-negative"):
        as_id_array([-1])


def test_id_type_must_match_collection() -> None:
    with pytest.raises(InvalidArgument, match="string ids, got integer"):
        check_ids(np.array([1], dtype=np.uint64), "string")


def test_upsert_checks() -> None:
    ids = np.arange(2, dtype=np.uint64)
    x = np.zeros((2, 3), dtype=np.float32)
    check_upsert(ids, x, [], dim=3)
    with pytest.raises(InvalidArgument, match="2 ids but 1 vectors"):
        check_upsert(ids, x[:1], [])
    with pytest.raises(InvalidArgument, match="dimension 3, the collection has dimension 4"):
        check_upsert(ids, x, [], dim=4)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidArgument, match="row 1 contains NaN or Inf"):
        check_upsert(ids, bad, [])
    with pytest.raises(InvalidArgument, match="2 ids but 1 payloads"):
        check_upsert(ids, x, [b"{}"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "must be a JSON object, got list"),
        (b"{oops", "not valid JSON"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_bad_payloads(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_payloads([b"{}", raw])
