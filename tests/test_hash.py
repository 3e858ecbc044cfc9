"""The pinned hash: golden values every coordinator, SDK and version must agree on."""

import numpy as np

from shoal._hash import hash_str, hash_u64, slots_of


def test_u64_hash_is_splitmix64() -> None:
    # splitmix64's reference outputs: 0 -> 0xe220a8397b1dcdaf is the first value of the seed-0 generator.
    ids = np.array([0, 1, 2, 42, 2**63, 2**64 - 1], dtype=np.uint64)
    assert [hex(int(h)) for h in hash_u64(ids)] == [
        "0xe220a8397b1dcdaf",
        "0x910a2dec89025cc1",
        "0x975835de1c9756ce",
        "0xbdd732262feb6e95",
        "0x481ec0a212a9f3db",
        "0xe4d971771b652c20",
    ]
    assert slots_of(ids).tolist() == [3503, 3265, 1742, 3733, 987, 3104]


def test_string_hash_is_blake2b_8() -> None:
    assert [hex(int(h)) for h in hash_str(["", "a", "doc-1", "héllo"])] == [
        "0xb4b2797457a0a6e4",
        "0x2f42665b399ef840",
        "0x41f5345f287af456",
        "0xcbaf31c26ed35d13",
    ]
    assert slots_of(np.array(["a", "doc-1", "héllo"], dtype=object)).tolist() == [2112, 1110, 3347]


def test_slots_spread_evenly() -> None:
    slots = slots_of(np.arange(409_600, dtype=np.uint64))
    counts = np.bincount(slots, minlength=4096)
    assert slots.min() >= 0 and slots.max() < 4096
    # 100 ids per slot on average; a uniform hash keeps every slot within +-50%.
    assert counts.min() > 50 and counts.max() < 150
