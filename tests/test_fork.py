"""A process whose client searches over a live search stream can fork: the children work, the parent goes on."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np
import pytest

import shoal
from shoal._local import LocalCluster

FORKS = 8
VECTORS = np.eye(8, dtype=np.float32) + 0.05


def _quiet_child(address: str, name: str, conn: Connection) -> None:
    """In a forked child: no gRPC at all (a snapshot writer, a data loader), only numpy."""
    conn.send([int(np.argmax(v)) for v in VECTORS])


def _fork(child: Callable[[str, str, Connection], None], address: str, name: str) -> None:
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(address, name, writer))
    process.start()
    writer.close()
    try:
        assert reader.poll(60), "the child sent nothing"
        assert reader.recv() == list(range(8))
    finally:
        process.join(60)
        if process.exitcode is None:
            process.kill()
    assert process.exitcode == 0, f"a forked child ended with {process.exitcode}"


@pytest.fixture
def loaded(client: shoal.Client, name: str) -> str:
    client.create_collection(name, dim=8)
    client.upsert(name, ids=np.arange(8), vectors=VECTORS)
    return name


# Run in a fresh interpreter with gRPC's fork handlers on (its default), as a user's program: this test
# process turns them off (conftest.py), and without them a forked child cannot use gRPC at all.
PROGRAM = """
import multiprocessing, sys
import numpy as np
import shoal

address, name = sys.argv[1], sys.argv[2]
vectors = np.eye(8, dtype=np.float32) + 0.05

def child(conn):
    with shoal.Client(address, timeout=30) as client:
        conn.send([int(client.search(name, v, k=1).ids[0][0]) for v in vectors])

context = multiprocessing.get_context("fork")
with shoal.Client(address, timeout=30) as client:
    for _ in range(FORKS):
        assert client.search(name, vectors[3], k=1).ids[0][0] == 3
        stream = client._searches._stream
        assert stream is not None and stream._reader.is_alive()  # open, its thread waiting for answers
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=child, args=(writer,))
        process.start()
        writer.close()
        assert reader.poll(60), "the child sent nothing"
        assert reader.recv() == list(range(8))
        process.join(60)
        assert process.exitcode == 0, process.exitcode
    assert client.search(name, vectors[5], k=1).ids[0][0] == 5  # the parent goes on, on a new stream
print("ok")
"""


@pytest.mark.slow
def test_a_child_searches_while_the_parents_stream_is_open(cluster: LocalCluster, loaded: str) -> None:
    program = PROGRAM.replace("FORKS", str(FORKS))
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, "-c", program, cluster.address, loaded], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.slow
def test_children_fork_cleanly_while_the_parent_keeps_searching(
    cluster: LocalCluster, client: shoal.Client, loaded: str
) -> None:
    stop = threading.Event()
    failures: list[BaseException] = []
    searched = [0]

    def search_on() -> None:  # other threads search across every fork; one in flight at a fork goes again
        i = 0
        while not stop.is_set():
            try:
                assert client.search(loaded, VECTORS[i % 8], k=1, timeout=30).ids[0][0] == i % 8
            except BaseException as exc:
                failures.append(exc)
                return
            searched[0] += 1
            i += 1

    threads = [threading.Thread(target=search_on) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(FORKS * 2):
            _fork(_quiet_child, cluster.address, loaded)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    assert searched[0] > 0
