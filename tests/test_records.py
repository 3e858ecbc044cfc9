"""The stored record codec: one record and many at once round-trip."""

from __future__ import annotations

import numpy as np

from shoal.shard import records


def test_many_records_round_trip_vectors_and_payloads() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    packed = records.pack_many(x, [b'{"a":1}', b"", b"{}", b'{"z":"\\u0000"}'])
    assert len(packed) == 4 and len(packed[1]) == records.row_bytes(3)
    np.testing.assert_array_equal(records.vectors(packed, 3), x)
    assert records.payloads(packed, 3) == [b'{"a":1}', b"", b"{}", b'{"z":"\\u0000"}']
    bare = records.pack_many(x, [])
    assert records.payloads(bare, 3) == [b""] * 4 and records.vectors(bare, 3).tobytes() == x.tobytes()


def test_one_record_packs_unpacks_and_takes_a_new_payload() -> None:
    v = np.array([1.5, -2.0], np.float32)
    record = records.pack(v.tobytes(), b'{"k":1}')
    assert records.vector_bytes(record, 2) == v.tobytes() and records.payload(record, 2) == b'{"k":1}'
    changed = records.with_payload(record, 2, b"")
    assert records.payload(changed, 2) == b"" and records.vector_bytes(changed, 2) == v.tobytes()
    assert records.vectors([], 2).shape == (0, 2) and records.payloads([], 2) == []
