"""What observability costs: search throughput with metrics off and on, and with tracing at 1% and 100%.

    python loadtest/observability_cost.py [--n 20000] [--dim 128] [--clients 16] [--seconds 2] [--rounds 6]

Four local clusters (2 shards each) run side by side on the same data: `off` (no --metrics, no tracing),
`metrics` (--metrics), `trace-1%` and `trace-100%` (--metrics plus OTLP export at that sampling ratio, to
an OTLP sink in this process that accepts every span, so export work is paid in full). Rounds are
interleaved (each round starting with the next mode), so all four see the same machine load; each mode's
throughput is divided by `off`'s of the same round and the median ratio is reported. On a machine others
load too, throughput swings with their work; the servers' CPU time per query (coordinator and shards, from
/proc) is the steadier measure of what Shoal itself spends, so both are reported. Two loads: --clients
asyncio clients each sending one query per unary call (the per-call path, where per-RPC costs show most),
and one client sending --batch queries per call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from loadgen import CpuMeter  # loadtest/ is on the path of a script run from it, as for bench.py
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import shoal
from shoal._local import LocalCluster

MODES = {
    "off": (False, None),
    "metrics": (True, None),
    "trace-1%": (True, 0.01),
    "trace-100%": (True, 1.0),
}


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that accepts and counts every span."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext) -> object:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def sink() -> Iterator[tuple[str, Sink]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    receiver = Sink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        server.stop(0)


async def singles(address: str, queries: np.ndarray, clients: int, seconds: float) -> float:
    """Queries per second of `clients` concurrent callers, one query per unary call."""
    done = 0
    async with shoal.AsyncClient(address) as client:
        await client.search("bench", queries[0], k=10, with_payload=False)  # connect first
        stop = time.perf_counter() + seconds

        async def caller(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < stop:
                await client.search("bench", queries[i % len(queries)], k=10, with_payload=False)
                done += 1
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in range(clients)))
        return done / (time.perf_counter() - started)


def batches(address: str, queries: np.ndarray, batch: int, seconds: float) -> float:
    """Queries per second of one client sending `batch` queries per call."""
    done = 0
    with shoal.Client(address) as client:
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < seconds:
            rows = queries[(i * batch) % len(queries) :][:batch]
            client.search("bench", rows, k=10, with_payload=False)
            done += len(rows)
            i += 1
        return done / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="points per cluster (default 20,000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clients", type=int, default=16, help="concurrent single-query callers (default 16)")
    p.add_argument("--batch", type=int, default=100, help="queries per call in the batch load (default 100)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (default 2)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    queries = rng.standard_normal((2000, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp, sink() as (endpoint, receiver), contextlib.ExitStack() as stack:
        clusters: dict[str, LocalCluster] = {}
        for name, (metrics, ratio) in MODES.items():
            extra = [] if ratio is None else ["--otlp-endpoint", endpoint, "--trace-sample-ratio", str(ratio)]
            cluster = LocalCluster(Path(tmp) / name, shards=2, metrics=metrics, server_args=extra)
            clusters[name] = stack.enter_context(cluster)
            with shoal.Client(cluster.address, timeout=600) as client:
                client.create_collection("bench", dim=args.dim)
                client.upsert("bench", ids=np.arange(args.n), vectors=base)
        loads = ("single", "batch")
        qps: dict[str, dict[str, list[float]]] = {load: {m: [] for m in MODES} for load in loads}
        cpu: dict[str, dict[str, list[float]]] = {load: {m: [] for m in MODES} for load in loads}
        for rnd in range(args.rounds):
            # Each round starts with another mode, so no mode always follows the same one.
            names = list(clusters)
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                cluster = clusters[name]
                pids = {p.role: p.popen.pid for p in [cluster.coordinator, *cluster.shard_procs] if p and p.popen}
                for load in loads:
                    meter = CpuMeter(pids)
                    meter.start()
                    if load == "single":
                        rate = asyncio.run(singles(cluster.address, queries, args.clients, args.seconds))
                    else:
                        rate = batches(cluster.address, queries, args.batch, args.seconds)
                    used = meter.stop()
                    servers = sum(v for k, v in used.items() if k != "client")
                    qps[load][name].append(rate)
                    cpu[load][name].append(1e6 * servers / (rate * args.seconds))
                    print(
                        f"round {rnd + 1} {name:<11} {load:<6} {rate:8.0f} q/s {cpu[load][name][-1]:7.0f} us CPU/query",
                        flush=True,
                    )
        print(f"\nspans received by the OTLP sink: {receiver.spans:,}")
        for load in loads:
            what = f"{args.clients} clients, 1 query a call" if load == "single" else f"{args.batch} queries a call"
            print(f"\n{load} ({what}): medians over {args.rounds} rounds, ratios to off taken per round")
            for name in MODES:
                q_ratio = statistics.median(r / b for r, b in zip(qps[load][name], qps[load]["off"], strict=True))
                c_ratio = statistics.median(r / b for r, b in zip(cpu[load][name], cpu[load]["off"], strict=True))
                print(
                    f"  {name:<11} {statistics.median(qps[load][name]):8.0f} q/s (x{q_ratio:.3f})  "
                    f"{statistics.median(cpu[load][name]):7.0f} us server CPU/query (x{c_ratio:.3f})"
                )


if __name__ == "__main__":
    main()
