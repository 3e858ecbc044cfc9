"""N single-query searches through a shard core in this process, for counting instructions per query.

    valgrind --tool=callgrind python loadtest/shard_instructions.py 100
    valgrind --tool=callgrind python loadtest/shard_instructions.py 600

The difference of the two totals over 500 is the instructions one single-query search costs (2,000 points of
64 dimensions, so usearch's share is small and the Python around it shows): repeatable whatever else the
machine is doing, unlike a timing.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from shoal._config import CollectionConfig
from shoal.shard.core import Shard


def main(n: int) -> None:
    """Open a shard, load 2,000 points, run n single-query searches."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2000, 64)).astype(np.float32)
    queries = rng.standard_normal((max(n, 1), 64)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder, Shard(Path(folder), threads=1) as shard:
        shard.create_collection(CollectionConfig(name="c", dim=64, metric="cosine"))
        shard.upsert("c", np.arange(2000, dtype=np.uint64), base)
        for i in range(n):
            shard.search("c", queries[i : i + 1], 10, 32)


if __name__ == "__main__":
    main(int(sys.argv[1]))
