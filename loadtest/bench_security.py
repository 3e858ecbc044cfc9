"""The cost of TLS and the API-key check on search, as ratios against plaintext in the same run.

    python loadtest/bench_security.py --n 20000 --dim 128 --repeat 5

Starts two local clusters on the same data (plaintext, and `secure`: TLS on every link, mutual TLS and an
API key on the coordinator, the cluster secret on the shards), then measures interleaved, --repeat rounds,
so both see the same machine load: single-query search (blocking client, one query per unary call, one
at a time) and batched search (--batch queries per call). Reports the median per-round ratio secure /
plaintext of queries per second, and the auth check alone (`Guard.decide`) in microseconds per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import shoal
from shoal._access import Guard, hash_token, new_key
from shoal._local import LocalCluster
from shoal._tls import api_key_metadata


def qps(client: shoal.Client, queries: np.ndarray, batch: int, seconds: float) -> float:
    """Queries per second of back-to-back search calls of `batch` queries for about `seconds`."""
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        q = queries[i : i + batch] if i + batch <= len(queries) else queries[:batch]
        client.search("bench", q, k=10, with_payload=False)
        done += len(q)
        i = (i + batch) % len(queries)
    return done / (time.perf_counter() - start)


def guard_cost(calls: int = 200_000) -> float:
    """Microseconds per access decision of a valid key (the interceptor's work besides grpc's own)."""
    token, key = new_key("read")
    keys = {key.hash: key}
    guard = Guard(keys=keys.get)
    metadata = api_key_metadata(token)
    assert hash_token(token) == key.hash
    start = time.perf_counter()
    for _ in range(calls):
        guard.decide("/shoal.v1.Shoal/Search", metadata)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="per mode, per round")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    queries = rng.standard_normal((2000, args.dim)).astype(np.float32)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(data=Path(tmp) / "plain", shards=2) as plain,
        LocalCluster(data=Path(tmp) / "secure", shards=2, secure=True) as secure,
    ):
        clients = {
            "plain": shoal.Client(plain.address, tls=False, api_key=""),
            "secure": shoal.Client(secure.address, tls=secure.tls, api_key=secure.api_key),
        }
        for c in clients.values():
            c.create_collection("bench", dim=args.dim)
            c.upsert("bench", ids=np.arange(args.n), vectors=x)
            qps(c, queries, 1, 0.5)  # warm up
        ratios: dict[str, list[float]] = {"single": [], "batched": []}
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for mode, batch in (("single", 1), ("batched", args.batch)):
                got = {name: qps(c, queries, batch, args.seconds) for name, c in clients.items()}
                for name, r in got.items():
                    rates.setdefault(f"{mode} {name}", []).append(r)
                ratios[mode].append(got["secure"] / got["plain"])
        for c in clients.values():
            c.close()
    result = {
        "n": args.n,
        "dim": args.dim,
        "batch": args.batch,
        "rounds": args.repeat,
        "qps_median": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "secure_over_plain_median": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
        "secure_over_plain_rounds": {k: [round(r, 3) for r in v] for k, v in ratios.items()},
        "auth_check_us_per_call": round(guard_cost(), 2),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
