"""--meta with several etcd endpoints: the target they make, and a cluster that outlives the etcd member its
servers were connected to (a real 3-member etcd cluster, real processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal._errors import FailedPrecondition, InvalidArgument, ShoalError
from shoal._etcd import EtcdCluster, find_binary
from shoal._local import LocalCluster
from shoal._meta import MetaStore, channel_target
from tests.conftest import clustered
from tests.test_replication import by_role, group_state


def test_one_endpoint_is_the_target_itself() -> None:
    assert channel_target("etcd-0.etcd:2379") == "etcd-0.etcd:2379"
    assert channel_target(" 127.0.0.1:2379 ") == "127.0.0.1:2379"


def test_several_endpoints_make_one_address_list() -> None:
    assert channel_target("127.0.0.1:2379,127.0.0.2:2380") == "ipv4:127.0.0.1:2379,127.0.0.2:2380"
    assert channel_target("localhost:2379, 127.0.0.1:2380") == "ipv4:127.0.0.1:2379,127.0.0.1:2380"
    assert channel_target("[::1]:2379,[::1]:2380") == "ipv6:[::1]:2379,[::1]:2380"


@pytest.mark.parametrize("bad", ["", ",", "127.0.0.1", "127.0.0.1:x,127.0.0.1:2379", "127.0.0.1:2379,[::1]:2379"])
def test_malformed_endpoints_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        channel_target(bad)


@pytest.fixture
def three_etcds(tmp_path: Path) -> Iterator[LocalCluster]:
    """A group of a primary and a replica, its coordinator, and a 3-member etcd cluster."""
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with LocalCluster(data=tmp_path / "c", shards=1, replicas=2, etcd_members=3) as c:
        yield c


def retry(action: object, timeout: float = 30.0) -> None:
    """Run `action` until it stops raising a Shoal error (a failover under way), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()  # type: ignore[operator]
            return
        except ShoalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
def test_the_cluster_outlives_the_etcd_member_it_was_connected_to(three_etcds: LocalCluster) -> None:
    etcd = three_etcds.etcd
    assert isinstance(etcd, EtcdCluster)
    x = clustered(400, 8)
    with shoal.Client(three_etcds.address) as client:
        client.create_collection("before", dim=8)
        client.upsert("before", ids=np.arange(200), vectors=x[:200])
        # gRPC's pick_first connected every server to the first endpoint of the list: kill that member.
        etcd.members[0].kill()
        # Routing goes on (it needs no etcd call)...
        assert client.search("before", x[:5], k=1).ids[:, 0].tolist() == [0, 1, 2, 3, 4]
        # ...catalogue changes go through another member, and the shards' watches see them...
        retry(lambda: client.create_collection("after", dim=8))
        retry(lambda: client.upsert("after", ids=np.arange(200), vectors=x[200:]))
        assert client.count("after") == 200
        # ...and the coordinator follows a failover of the shard group (the new primary's election is a
        # transaction on the surviving members, the coordinator learns of it by its watch).
        primary, _ = by_role(three_etcds)
        term = group_state(three_etcds).term
        primary.kill()
        retry(lambda: client.upsert("before", ids=np.arange(200, 400), vectors=x[200:]))
        assert client.count("before") == 400
    assert group_state(three_etcds).term > term

    async def members_answering() -> int:
        async with await MetaStore.connect(etcd.endpoint, three_etcds.cluster) as meta:
            return len((await meta.get_group("g0")).members)

    assert asyncio.run(members_answering()) == 1  # the killed primary's lease ran out
