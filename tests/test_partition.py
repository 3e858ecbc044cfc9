"""A primary cut off from etcd and from its replicas by a network partition (network namespaces).

It cannot acknowledge a write; an in-sync replica becomes primary with a higher term and acknowledges the
writes sent through the coordinator; after healing, the old primary rejoins as a replica and every member
holds exactly the same points, every acknowledged write among them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._errors import FailedPrecondition
from shoal._wire import encode_ids, encode_matrix
from shoal.v1 import shard_pb2_grpc
from shoal.v1 import types_pb2 as pb
from tests.conftest import clustered
from tests.grouplab import Lab, member_count, member_state, safe_etcd
from tests.netns import unavailable_reason

pytestmark = pytest.mark.slow  # starts etcd, three shards and a coordinator on hosts of their own

DIM = 8
# A cut primary's lease (3 s) runs out and a replica is elected well within this; generous, for a busy CI.
FAILOVER_BUDGET = 30.0
DIRECT_TIMEOUT = 6.0  # seconds each write sent straight to the cut-off primary may take


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """One group of three members, etcd and a coordinator, each on a host of its own."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        safe_etcd()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with Lab(tmp_path / "lab", groups=1, replicas=3) as lab:
        assert lab.can_cut
        yield lab


def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)


def _direct_upsert(address: str, ids: np.ndarray, x: np.ndarray) -> str:
    """Send a write straight to one shard; "acknowledged" or the status code it failed with."""
    request = pb.UpsertRequest(collection="p", ids=encode_ids(ids), vectors=encode_matrix(x))
    try:
        with _rpc.channel(address) as channel:
            shard_pb2_grpc.ShardStub(channel).Upsert(request, timeout=DIRECT_TIMEOUT)
    except grpc.RpcError as exc:
        return str(exc.code())
    return "acknowledged"


def test_a_cut_off_primary_acknowledges_nothing_and_rejoins_as_a_replica(lab: Lab) -> None:
    x = clustered(1000, DIM)
    acked: list[int] = []
    with shoal.Client(lab.addresses[0]) as client:
        client.create_collection("p", dim=DIM)
        client.upsert("p", ids=np.arange(200), vectors=x[:200])
        acked.extend(range(200))
    old = lab.primary()
    old_term = lab.group_state().term
    old_address = lab.reach(lab.shards[old])
    lab.isolate(old)
    cut_at = time.monotonic()

    # Writes sent straight to the cut-off primary, while and after the group replaces it: none acknowledged.
    answers: list[str] = []

    def direct() -> None:
        for i in range(4):
            ids = np.arange(900 + 10 * i, 910 + 10 * i)
            answers.append(_direct_upsert(old_address, ids, x[ids]))

    writer = threading.Thread(target=direct)
    writer.start()
    _until(lambda: lab.group_state().primary not in (None, old), FAILOVER_BUDGET, "a new primary")
    elected = time.monotonic() - cut_at
    _until(lambda: lab.group_state().in_sync_term > old_term, FAILOVER_BUDGET, "the new primary's in-sync set")
    state = lab.group_state()
    assert state.term > old_term and old not in state.in_sync  # the cut-off member counts as a copy no more

    # The new primary acknowledges writes sent through the coordinator (once it routes to it).
    with shoal.Client(lab.addresses[0], timeout=5) as client:
        for start in range(200, 400, 20):
            ids = np.arange(start, start + 20)
            deadline = time.monotonic() + FAILOVER_BUDGET
            while True:
                try:
                    client.upsert("p", ids=ids, vectors=x[ids])
                    break
                except shoal.ShoalError:
                    assert time.monotonic() < deadline, "no write acknowledged through the coordinator"
            acked.extend(ids.tolist())
            if start == 200:
                print(
                    f"cut -> new primary {elected:.2f} s, -> first write acknowledged through the coordinator "
                    f"{time.monotonic() - cut_at:.2f} s",
                    file=sys.stderr,
                )
    writer.join()
    assert len(answers) == 4 and "acknowledged" not in answers, answers
    assert member_state(old_address).role == "primary"  # it cannot tell yet: it still believes it leads

    # Healed: the old primary learns it was replaced, rejoins as a replica and becomes an identical copy.
    lab.heal()
    _until(lambda: old in lab.group_state().in_sync, 90, "the old primary back in the in-sync set")
    state = lab.group_state()
    assert state.primary not in (None, old) and len(state.in_sync) == 3
    assert member_state(old_address).role == "replica"
    # Its unacknowledged writes are no one else's: no op log can bring it back, it was copied anew.
    assert "with writes the primary at" in (lab.root / f"{old}.log").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "check", "--meta", lab.endpoint(0)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 members identical" in done.stdout, done.stdout
    with shoal.Client(lab.addresses[0]) as client:
        found = client.get("p", ids=acked, with_payload=False, with_vectors=True)
        assert sorted(p.id for p in found) == sorted(acked)  # no acknowledged write lost
        total = client.count("p")
    for proc in lab.shards.values():
        assert member_count(lab.reach(proc), "p") == total
