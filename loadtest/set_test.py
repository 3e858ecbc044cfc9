"""A Jepsen-style set test: concurrent adds and deletes of ids while a nemesis kills and cuts processes.

    python -m loadtest.set_test --faults 300 --seed 1      # from the repository root, as root for cuts

A real cluster (tests/grouplab.py): a 3-member etcd, 2 shard groups of 3 members, 2 coordinators, each
process on a network-namespace host of its own when namespaces can be made (else on loopback, kills only).
Clients add ids (each once, with a vector derived from the id) and delete some they added, recording each
operation as acknowledged, failed or unknown (an error after the request left: it may have been applied).
The nemesis applies `--faults` random faults one after the other, a second one overlapping now and then
(`--overlap`): kill -9 and restart of a primary, a replica, a coordinator or an etcd member, and cutting a
host off the network for a while. The faults go to stderr as they happen. Meanwhile (unless `--no-moves`) a
mover moves random ranges of 64 slots between the groups, one after the other; a move a fault cuts short
is rolled back or completed by the next one (`resume`). At the end it stops the mover, finishes any move
left, heals everything, waits until every group is whole and in sync, and checks: every acknowledged add is
present unless its delete was acknowledged or may have happened; no acknowledged delete came back; no id
that was never added exists; every vector is the one written; the members of every group are identical
(`shoal check`); exact searches equal numpy brute force over the final set; no move is left and every slot
has one owner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import shoal
from shoal._config import MAX_EF, SLOTS
from shoal._meta import MetaStore
from shoal._meta_values import Topology
from shoal.coordinator.mover import move, resume
from tests.grouplab import CLUSTER, Lab, Server

DIM = 8
BATCH = 4  # ids per add
# Ids a client keeps at most (it deletes beyond): the final set stays small enough for an exhaustive search
# (ef >= a shard's points), so results can be compared with brute force exactly, however long the run.
LIVE_PER_CLIENT = 1500
CALL_TIMEOUT = 5.0  # seconds a client call may take before it counts as unknown
GET_BATCH = 50_000  # ids per get of the final check (a call takes at most 100k)
SETTLE = 180.0  # seconds the healed cluster may take to be whole and in sync again
MOVE_SLOTS = 64  # slots per move of the mover
MOVE_RATE = 2000.0  # points per second a move copies


def vectors_of(ids: np.ndarray) -> np.ndarray:
    """The vector written for each id: a function of the id, so the final set can be checked exactly."""
    ids = np.asarray(ids, dtype=np.float64)[:, None]
    return np.sin(ids * np.arange(1, DIM + 1) * 0.731 + np.arange(DIM)).astype(np.float32)


@dataclass
class History:
    """What the clients did: per id, the outcome of its add and of its delete (if any)."""

    added: dict[int, str] = field(default_factory=dict)  # id -> "acked" | "failed" | "unknown"
    deleted: dict[int, str] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, ids: list[int], outcome: str) -> None:
        """One operation's outcome."""
        with self.lock:
            target = self.added if kind == "add" else self.deleted
            for i in ids:
                target[i] = outcome
            self.ops[f"{kind} {outcome}"] += 1


def outcome_of(exc: shoal.ShoalError) -> str:
    """Failed only when the request was refused before anything could apply it; else unknown."""
    if isinstance(exc, shoal.InvalidArgument | shoal.NotFound):
        return "failed"
    return "unknown"


def client_loop(address: str, base: int, history: History, stop: threading.Event, seed: int) -> None:
    """Add ids base, base+1, ... in batches; now and then delete a few ids this client's adds acknowledged."""
    rng = random.Random(seed)
    next_id = base
    mine: list[int] = []
    with shoal.Client(address, timeout=CALL_TIMEOUT) as client:
        while not stop.is_set():
            if mine and (len(mine) > LIVE_PER_CLIENT or rng.random() < 0.3):
                ids = [mine.pop(rng.randrange(len(mine))) for _ in range(min(2, len(mine)))]
                try:
                    client.delete("set", ids=ids)
                    history.record("delete", ids, "acked")
                except shoal.ShoalError as exc:
                    history.record("delete", ids, outcome_of(exc))
                continue
            ids = list(range(next_id, next_id + BATCH))
            next_id += BATCH
            try:
                client.upsert("set", ids=ids, vectors=vectors_of(np.array(ids)))
                history.record("add", ids, "acked")
                mine.extend(ids)
            except shoal.ShoalError as exc:
                history.record("add", ids, outcome_of(exc))


class Nemesis:
    """Random faults: each is applied, held a while, then healed; now and then a second one overlaps it."""

    def __init__(self, lab: Lab, rng: random.Random, log: list[str], overlap: float = 0.0) -> None:
        self.lab, self.rng, self.log, self.overlap = lab, rng, log, overlap

    def kinds(self) -> list[str]:
        """The faults this lab allows."""
        kinds = ["kill-primary", "kill-replica", "kill-coordinator", "kill-etcd"]
        return [*kinds, "cut-primary", "cut-replica", "cut-coordinator", "cut-etcd"] if self.lab.can_cut else kinds

    def _target(self, what: str) -> str:
        lab = self.lab
        if what in ("primary", "replica"):
            group = self.rng.choice(lab.group_names())
            try:
                primary = lab.primary(group)
            except (AssertionError, shoal.ShoalError):
                primary = None
            names = sorted(lab.members(group))
            if what == "primary" and primary is not None:
                return primary
            return self.rng.choice([n for n in names if n != primary] or names)
        if what == "coordinator":
            return self.rng.choice([p.role for p in lab.coords])
        return self.rng.choice([p.role for p in lab.etcd])

    def _process(self, name: str) -> Server:
        lab = self.lab
        return {**lab.shards, **{p.role: p for p in lab.coords}, **{p.role: p for p in lab.etcd}}[name]

    def _note(self, line: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {line}")
        print(self.log[-1], file=sys.stderr, flush=True)

    def _apply(self, busy: list[tuple[str, str]]) -> tuple[str, str] | None:
        """Apply a random fault to a process no fault holds (never a second etcd member: keep a quorum)."""
        for _ in range(10):
            action, what = self.rng.choice(self.kinds()).split("-")
            name = self._target(what)
            if any(name == n or (what == "etcd" and n.startswith("etcd")) for _, n in busy):
                continue
            self._note(f"{action} {what} {name}")
            if action == "cut":
                self.lab.isolate(name)
            else:
                self.lab.kill(self._process(name))
            return action, name
        return None

    def _heal(self, action: str, name: str) -> None:
        if action == "cut":
            self.lab.heal(name)
        else:
            self.lab.restart(self._process(name))
        self._note(f"healed {name}")

    def fault(self) -> None:
        """Apply one random fault (and now and then a second one meanwhile), hold, heal."""
        faults = [f for f in [self._apply([])] if f is not None]
        if self.rng.random() < self.overlap:
            time.sleep(self.rng.uniform(0.0, 1.5))
            second = self._apply(faults)
            if second is not None:
                faults.append(second)
        time.sleep(self.rng.uniform(0.5, 4.0))
        for action, name in reversed(faults):
            self._heal(action, name)
        time.sleep(self.rng.uniform(0.2, 1.5))


class Mover:
    """Moves random ranges of MOVE_SLOTS slots between the groups, one after the other, in a thread of its own."""

    def __init__(self, lab: Lab, rng: random.Random, log: list[str]) -> None:
        self.lab, self.rng, self.log = lab, rng, log
        self.moved = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Mover:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(600)

    def _note(self, line: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {line}")
        print(self.log[-1], file=sys.stderr, flush=True)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with await MetaStore.connect(self.lab.meta_endpoints, CLUSTER, timeout=5) as meta:
                    await resume(meta)  # a move a fault cut short: rolled back or completed first
                    start, end, target = self._pick(await meta.get_topology())
                    self._note(f"move slots {start}-{end - 1} to {target}")
                    await move(meta, start, end, target, rate=MOVE_RATE)
                    self.moved += 1
            except Exception as exc:  # noqa: BLE001 - a fault cut the move short; the next round resumes it
                self.failed += 1
                self._note(f"move failed ({type(exc).__name__}: {exc}); resumed next")
                await asyncio.sleep(1.0)

    def _pick(self, topology: Topology) -> tuple[int, int, str]:
        """A random range of up to MOVE_SLOTS slots of the group that owns the most, and another group to move
        it to: the groups stay near equal (within a range or two), so the final search stays exhaustive in each."""
        owned = {g: sum(r.end - r.start for r in topology.ranges if r.group == g) for g in self.lab.group_names()}
        source = self.rng.choice(sorted(g for g, n in owned.items() if n == max(owned.values())))
        ranges = [r for r in topology.ranges if r.group == source]
        chosen = self.rng.choices(ranges, weights=[r.end - r.start for r in ranges])[0]
        start = self.rng.randrange(chosen.start, max(chosen.start + 1, chosen.end - MOVE_SLOTS + 1))
        end = min(start + MOVE_SLOTS, chosen.end)
        target = self.rng.choice([g for g in owned if g != source])
        return start, end, target


def finish_moves(lab: Lab) -> list[str]:
    """Finish any move left and check that every slot has exactly one owner; the problems found."""

    async def finish(meta: MetaStore) -> Topology:
        await resume(meta)
        return await meta.get_topology()

    topology = lab.meta_call(finish)
    assert isinstance(topology, Topology)
    problems = [f"move {m.id} of slots {m.start}-{m.end - 1} was left in phase {m.phase}" for m in topology.moves]
    covered = sorted((r.start, r.end) for r in topology.ranges)
    if [a for a, _ in covered] != [0, *(b for _, b in covered[:-1])] or covered[-1][1] != SLOTS:
        problems.append(f"the slots are not owned exactly once: {covered}")
    return problems


def final_check(lab: Lab, history: History) -> list[str]:
    """Every invariant the run must keep; the problems found (empty: none)."""
    problems: list[str] = []
    lab.wait_groups(lab.replicas, SETTLE)
    attempted = sorted(history.added)
    with shoal.Client(lab.addresses[0], timeout=60) as client:
        present: dict[int, np.ndarray] = {}
        for start in range(0, len(attempted), GET_BATCH):
            found = client.get("set", ids=attempted[start : start + GET_BATCH], with_vectors=True, with_payload=False)
            present.update((int(p.id), np.asarray(p.vector, np.float32)) for p in found)
        count = client.count("set")
        for i, outcome in history.added.items():
            gone = history.deleted.get(i)
            if outcome == "acked" and gone in (None, "failed") and i not in present:
                problems.append(f"lost: id {i} was acknowledged added, never deleted, and is missing")
            if gone == "acked" and i in present:
                problems.append(f"resurrected: id {i} was acknowledged deleted and is present")
        if count != len(present):
            problems.append(f"count {count} != {len(present)} ids found: ids that were never added exist")
        for i, vector in present.items():
            if not np.array_equal(vector, vectors_of(np.array([i]))[0]):
                problems.append(f"id {i} has a vector that was never written")
                break
        if present:
            ids = np.array(sorted(present), dtype=np.uint64)
            x = vectors_of(ids.astype(np.int64))
            queries = vectors_of(np.arange(10) * 7919 + 13) + 0.01
            got = client.search("set", queries, k=10, ef=MAX_EF)  # exhaustive: LIVE_PER_CLIENT says why
            d2 = ((queries[:, None, :] - x[None, :, :]) ** 2).sum(-1)
            want = ids[np.argsort(d2, axis=1, kind="stable")[:, :10]]
            if not np.array_equal(np.asarray(got.ids), want):
                problems.append("search results differ from brute force over the final set")
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "check", "--meta", lab.endpoint(0)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        problems.append(f"shoal check: replicas differ:\n{done.stdout}{done.stderr}")
    return problems


def run(
    root: Path,
    faults: int,
    seed: int,
    clients: int = 4,
    netns: bool = True,
    overlap: float = 0.3,
    moves: bool = True,
) -> tuple[list[str], str]:
    """The whole test; the problems found and a summary."""
    rng = random.Random(seed)
    history, log = History(), []
    started = time.monotonic()
    with Lab(root, groups=2, replicas=3, etcds=3, coordinators=2, netns=netns) as lab:
        faults_kind = "kills and cuts" if lab.can_cut else "kills only: no network namespaces"
        with shoal.Client(lab.addresses[0], timeout=30) as client:
            client.create_collection("set", dim=DIM, metric="l2")
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=client_loop,
                args=(lab.addresses[c % len(lab.addresses)], 1_000_000 * (c + 1), history, stop, seed * 100 + c),
            )
            for c in range(clients)
        ]
        for t in threads:
            t.start()
        nemesis = Nemesis(lab, rng, log, overlap)
        mover = Mover(lab, random.Random(seed + 1), log)
        try:
            with mover if moves else contextlib.nullcontext():
                for _ in range(faults):
                    nemesis.fault()
        finally:
            stop.set()
            for t in threads:
                t.join()
            lab.heal()
        problems = (finish_moves(lab) if moves else []) + final_check(lab, history)
    acked = sum(1 for o in history.added.values() if o == "acked")
    logs = "".join(p.read_text(errors="replace") for p in root.glob("g*-m*.log"))
    repairs = (
        f"{logs.count(': copying its data')} members copied anew "
        f"({logs.count('with writes the primary at')} of them for writes their primary lacked)"
    )
    summary = (
        f"{faults} faults ({faults_kind}), "
        f"seed {seed}, {time.monotonic() - started:.0f} s; ops: {dict(sorted(history.ops.items()))}; "
        f"{acked} ids acknowledged added, {sum(1 for o in history.deleted.values() if o == 'acked')} "
        f"acknowledged deleted; {repairs}; "
        f"{f'{mover.moved} slot moves done, {mover.failed} cut short; ' if moves else ''}{len(problems)} problems"
    )
    return problems, summary  # the faults went to stderr as they happened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=20, help="faults the nemesis applies (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the nemesis and the clients")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--overlap", type=float, default=0.3, help="chance that a second fault overlaps one")
    parser.add_argument("--no-netns", action="store_true", help="everything on loopback, kills only")
    parser.add_argument("--no-moves", action="store_true", help="no slot moves during the run")
    parser.add_argument("--keep", help="keep the cluster's data and logs in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        problems, summary = run(
            root, args.faults, args.seed, args.clients, not args.no_netns, args.overlap, not args.no_moves
        )
    print(summary)
    for problem in problems[:50]:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
