"""A new cluster's first topology in etcd: the slots split evenly over shard groups g0..gN-1."""

from __future__ import annotations

from shoal._config import SLOTS
from shoal._meta import MetaStore
from shoal._meta_values import SlotRange


def even_ranges(groups: int) -> tuple[SlotRange, ...]:
    """Slots split into `groups` contiguous ranges, range i owned by group gi."""
    return tuple(SlotRange(i * SLOTS // groups, (i + 1) * SLOTS // groups, f"g{i}") for i in range(groups))


async def init_topology(endpoint: str, cluster: str, groups: int) -> int:
    """Write the even topology unless the cluster has one already; the topology's version."""
    async with await MetaStore.connect(endpoint, cluster) as meta:
        current = await meta.get_topology()
        if current.version:
            return current.version
        return (await meta.replace_topology(even_ranges(groups), 0)).version
