"""The crash loop: writers upsert and delete unique ids while a nemesis kills and restarts shards and the
coordinator; after healing, every invariant of a durable store must hold (Jepsen's "set" test, for Shoal).

Every call is recorded as ok, failed (the server answered with an error: it may still have happened on
some shard) or unknown (timeout, connection lost). Afterwards: every acknowledged upsert never targeted by
a delete is present, byte for byte; no acknowledged delete is present; no id that was never written
appears; each id lives on exactly one shard, the one owning its slot; every shard's index holds exactly
its RocksDB keys; every present point is found by an exact search for its own vector.

`python -m scripts.crashloop` runs the same loop for longer (not in CI).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._config import SLOTS
from shoal._hash import slots_of
from shoal._local import LocalCluster, Process
from shoal._wire import decode_ids
from shoal.v1 import shard_pb2, shard_pb2_grpc

pytestmark = pytest.mark.slow  # kills shards hundreds of times

COLLECTIONS = ("u", "s")  # uint64 ids, string ids
QUARANTINE_SECONDS = 30.0
LOG_EVENTS = {  # what the shards' logs say about how each index came back
    "snapshots taken": ": snapshot of ",
    "loaded from a snapshot": "points from the snapshot at sequence",
    "rebuilt from RocksDB": "rebuilt its index",
    "unfinished snapshot writes removed": "removing an unfinished snapshot write",
}


@dataclass(frozen=True)
class LoopConfig:
    """How long and how hard to run."""

    seconds: float = 40.0
    shards: int = 2
    writers: int = 3
    dim: int = 8
    live_target: int = 1200  # per collection; above it writers delete more than they insert
    interval: float = 1.5  # mean seconds between two nemesis actions
    seed: int = 0
    call_timeout: float = 3.0
    # Frequent snapshots, so kills land in the middle of them and restarts replay from them.
    shard_env: dict[str, str] = field(
        default_factory=lambda: {
            "SHOAL_SNAPSHOT_CHANGES": "200",
            "SHOAL_SNAPSHOT_MIN_INTERVAL": "0.3",
            "SHOAL_SNAPSHOT_MAX_INTERVAL": "2",
        }
    )


@dataclass
class History:
    """What the writers sent and what they were told."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, dict[Any, tuple[bytes, dict[str, Any]]]] = field(
        default_factory=lambda: {c: {} for c in COLLECTIONS}
    )
    acked: dict[str, set[Any]] = field(default_factory=lambda: {c: set() for c in COLLECTIONS})
    deleting: dict[str, set[Any]] = field(default_factory=lambda: {c: set() for c in COLLECTIONS})
    deleted: dict[str, set[Any]] = field(default_factory=lambda: {c: set() for c in COLLECTIONS})
    deletable: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in COLLECTIONS})
    # Ids whose upsert or delete did not succeed: deletable again once no late copy of that call can be
    # in flight any more (deadlines are seconds), so the live set stays bounded over long runs.
    limbo: dict[str, list[tuple[float, list[Any]]]] = field(default_factory=lambda: {c: [] for c in COLLECTIONS})
    outcomes: Counter[str] = field(default_factory=Counter)
    next_id: int = 1


@dataclass
class Report:
    """The loop's numbers and every invariant it found broken."""

    seconds: float = 0.0
    actions: Counter[str] = field(default_factory=Counter)
    restart_seconds: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    present: dict[str, int] = field(default_factory=dict)
    recoveries: Counter[str] = field(default_factory=Counter)  # from the shards' logs
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for a human."""
        restarts = self.restart_seconds or [0.0]
        return "\n".join(
            [
                f"{self.seconds:.0f} s of chaos; nemesis: " + _counts(self.actions),
                f"restart to SERVING: mean {np.mean(restarts):.2f} s, max {max(restarts):.2f} s",
                "calls: " + _counts(self.outcomes),
                "present after healing: " + ", ".join(f"{k} {v}" for k, v in self.present.items()),
                "index recoveries: " + _counts(self.recoveries),
                f"invariant violations: {len(self.violations)}",
                *self.violations[:20],
            ]
        )


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


def _outcome(exc: shoal.ShoalError) -> str:
    """failed: a server answered with an error; unknown: no answer (the call may have happened)."""
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "unknown"
    if exc.code == grpc.StatusCode.UNAVAILABLE and not exc.message.startswith("shard "):
        return "unknown"  # the coordinator itself could not be reached, or went away mid-call
    return "failed"


def _writer(address: str, history: History, config: LoopConfig, w: int, stop: threading.Event) -> None:
    rng = np.random.default_rng(config.seed * 1000 + w)
    with shoal.Client(address, timeout=config.call_timeout) as client:
        while not stop.is_set():
            coll = COLLECTIONS[int(rng.integers(2))]
            with history.lock:
                live = history.deletable[coll]
                limbo = history.limbo[coll]
                while limbo and limbo[0][0] < time.monotonic() - QUARANTINE_SECONDS:
                    live.extend(limbo.pop(0)[1])
                delete = bool(live) and (len(live) > config.live_target or rng.random() < 0.3)
                if delete:
                    ids = [live.pop(int(rng.integers(len(live)))) for _ in range(min(len(live), rng.integers(1, 6)))]
                    history.deleting[coll].update(ids)
                else:
                    n = int(rng.integers(1, 11))
                    numbers = range(history.next_id, history.next_id + n)
                    history.next_id += n
                    ids = list(numbers) if coll == "u" else [f"p{i}" for i in numbers]
                    x = rng.standard_normal((n, config.dim)).astype(np.float32)
                    payloads = [{"w": w, "n": i} for i in numbers]
                    history.sent[coll].update({i: (x[j].tobytes(), payloads[j]) for j, i in enumerate(ids)})
            op = "delete" if delete else "upsert"
            try:
                if delete:
                    client.delete(coll, ids=ids)
                else:
                    client.upsert(coll, ids=ids, vectors=x, payloads=payloads)
            except shoal.ShoalError as exc:
                with history.lock:
                    history.outcomes[f"{op} {_outcome(exc)}"] += 1
                    history.limbo[coll].append((time.monotonic(), ids))
                stop.wait(0.05)  # pace retries while a process is down
                continue
            with history.lock:
                history.outcomes[f"{op} ok"] += 1
                if delete:
                    history.deleted[coll].update(ids)
                else:
                    history.acked[coll].update(ids)
                    history.deletable[coll].extend(ids)


def _create(address: str, dim: int) -> None:
    with shoal.Client(address, timeout=30) as client:
        client.create_collection("u", dim=dim)
        client.create_collection("s", dim=dim, metric="l2", id_type="string")


def _nemesis(cluster: LocalCluster, config: LoopConfig, report: Report, deadline: float) -> None:
    rng = random.Random(config.seed)
    procs: list[Process] = [*cluster.shard_procs, cluster.coordinator]  # type: ignore[list-item]
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.7) * config.interval)  # the nemesis's schedule, not a wait for a state
        for proc in procs:  # a process that died on its own is a finding
            if proc.popen is not None and proc.popen.poll() is not None:
                report.violations.append(f"{proc.role} exited by itself with code {proc.popen.returncode}")
                _restart(cluster, proc, report)
        proc = procs[-1] if rng.random() < 0.2 else rng.choice(procs[:-1])
        role = "coordinator" if proc is procs[-1] else "shard"
        if rng.random() < 0.85:
            proc.kill()
            report.actions[f"SIGKILL {role}"] += 1
        else:
            code = proc.stop()
            report.actions[f"SIGTERM {role}"] += 1
            if code != 0:
                report.violations.append(f"{proc.role} did not stop cleanly on SIGTERM: exit code {code}")
        _restart(cluster, proc, report)


def _restart(cluster: LocalCluster, proc: Process, report: Report) -> None:
    started = time.monotonic()
    cluster.restart(proc)
    report.restart_seconds.append(time.monotonic() - started)


def _check(cluster: LocalCluster, history: History, report: Report) -> None:
    """Every invariant of the module docstring, each broken one recorded in the report."""
    starts = np.array([i * SLOTS // len(cluster.shard_procs) for i in range(len(cluster.shard_procs))])
    bad = report.violations
    for coll in COLLECTIONS:
        where: dict[Any, int] = {}
        for s, proc in enumerate(cluster.shard_procs):
            with _rpc.channel(proc.address) as channel:
                found = shard_pb2_grpc.ShardStub(channel).Verify(shard_pb2.VerifyRequest(collection=coll), timeout=120)
            if not found.consistent:
                bad.append(
                    f"shard {s} {coll}: index != RocksDB ({found.stored} stored, {found.indexed} indexed, "
                    f"{len(found.missing) // 8} missing, {len(found.extra) // 8} extra, "
                    f"{found.unmapped} unmapped)"
                )
            for pid in decode_ids(found.ids).tolist():
                if pid in where:
                    bad.append(f"{coll} id {pid} is on shards {where[pid]} and {s}")
                where[pid] = s
        ids = list(where)
        report.present[coll] = len(ids)
        owners = np.searchsorted(starts, slots_of(np.array(ids, np.uint64) if coll == "u" else ids), "right") - 1
        bad += [
            f"{coll} id {i} is on shard {where[i]}, its slot is shard {o}'s"
            for i, o in zip(ids, owners.tolist(), strict=True)
            if where[i] != o
        ][:5]
        sent, present = history.sent[coll], set(ids)
        bad += [f"{coll} id {i} was never written but is present" for i in list(present - set(sent))[:5]]
        kept = history.acked[coll] - history.deleting[coll]
        bad += [f"{coll} id {i}: acknowledged upsert lost" for i in list(kept - present)[:5]]
        bad += [f"{coll} id {i}: acknowledged delete undone" for i in list(history.deleted[coll] & present)[:5]]
        _check_points(cluster.address, coll, [i for i in ids if i in sent], sent, bad)


def _check_points(
    address: str, coll: str, ids: list[Any], sent: dict[Any, tuple[bytes, dict[str, Any]]], bad: list[str]
) -> None:
    with shoal.Client(address, timeout=120) as client:
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            points = client.get(coll, ids=chunk, with_vectors=True)
            got = {p.id: p for p in points}
            for i in chunk:
                p = got.get(i)
                if p is None or p.vector is None or (p.vector.tobytes(), p.payload) != sent[i]:
                    bad.append(f"{coll} id {i}: stored point differs from what was sent")
            vectors = np.stack([np.frombuffer(sent[i][0], np.float32) for i in chunk])
            found = client.search(coll, vectors, k=3, ef=4096)  # exact while a shard holds <= 4096 points
            bad += [
                f"{coll} id {i}: not found by its own vector"
                for r, i in enumerate(chunk)
                if i not in found.ids[r].tolist()
            ][:5]


def run_crash_loop(data: Path, config: LoopConfig) -> Report:
    """Run the loop on a fresh local cluster under `data`; the report of what happened and what broke."""
    report, history = Report(), History()
    with LocalCluster(data=data, shards=config.shards, shard_env=dict(config.shard_env)) as cluster:
        _create(cluster.address, config.dim)
        stop = threading.Event()
        writers = [
            threading.Thread(target=_writer, args=(cluster.address, history, config, w, stop))
            for w in range(config.writers)
        ]
        for t in writers:
            t.start()
        started = time.monotonic()
        try:
            _nemesis(cluster, config, report, started + config.seconds)
        finally:
            stop.set()
            for t in writers:
                t.join()
        report.seconds = time.monotonic() - started
        report.outcomes = history.outcomes
        for proc in [*cluster.shard_procs, cluster.coordinator]:  # heal
            if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
                report.violations.append(f"{proc.role} exited by itself with code {proc.popen.returncode}")
                _restart(cluster, proc, report)
        _check(cluster, history, report)
        for proc in cluster.shard_procs:
            log = proc.log_path.read_text(errors="replace")
            for key, line in LOG_EVENTS.items():
                report.recoveries[key] += log.count(line)
    return report


def test_crash_loop_loses_no_acknowledged_write(tmp_path: Path) -> None:
    report = run_crash_loop(tmp_path / "data", LoopConfig())
    print(report.summary())
    assert not report.violations, report.summary()
    assert sum(report.actions.values()) >= 10 and report.actions["SIGKILL shard"] >= 5, report.summary()
    assert report.outcomes["upsert ok"] >= 100 and report.outcomes["delete ok"] >= 20, report.summary()
