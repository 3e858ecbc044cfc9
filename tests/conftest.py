"""Fixtures: a real local cluster (one coordinator, two shard processes) and exact numpy references.

`pytest --secure` starts the session cluster with TLS, API keys and the cluster secret on, and hands every
client its credentials through the SHOAL_* variables, so the same tests run against a secure cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Tests open shards in this process, and a shard forks to snapshot its indexes while this process also holds
# gRPC channels. A shard process runs with gRPC's fork handlers off (shard/server.py) because the child never
# touches gRPC; so must this one, or gRPC's handlers can abort the snapshot child. gRPC reads it on import.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

import shoal  # noqa: E402
from shoal._local import LocalCluster
from shoal._tls import ENV_API_KEY, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wordnet-minilm"
_names = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--secure", action="store_true", help="run the session cluster with TLS and API keys on")


@contextlib.contextmanager
def credentials_in_env(c: LocalCluster) -> Iterator[None]:
    """Clients made meanwhile without explicit credentials use `c`'s (a no-op for a plaintext cluster)."""
    with pytest.MonkeyPatch.context() as mp:
        if c.secrets is not None:
            mp.setenv(ENV_API_KEY, c.api_key or "")
            mp.setenv(ENV_TLS_CA, str(c.secrets.ca))
            mp.setenv(ENV_TLS_CERT, str(c.secrets.client_cert))
            mp.setenv(ENV_TLS_KEY, str(c.secrets.client_key))
        yield


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    """One cluster for the whole session (secure with --secure); tests use their own collections."""
    secure = bool(pytestconfig.getoption("--secure"))
    with LocalCluster(data=tmp_path_factory.mktemp("cluster"), shards=2, secure=secure) as c, credentials_in_env(c):
        yield c


@pytest.fixture(scope="session")
def client(cluster: LocalCluster) -> Iterator[shoal.Client]:
    """A client of the session cluster."""
    with shoal.Client(cluster.address) as c:
        yield c


@pytest.fixture
def name(client: shoal.Client) -> Iterator[str]:
    """A fresh collection name, dropped after the test."""
    n = f"t{next(_names)}"
    yield n
    if n in client.list_collections():
        client.drop_collection(n)


@pytest.fixture(scope="session")
def wordnet() -> tuple[np.ndarray, np.ndarray]:
    """The real embeddings (base, queries) of ../shared/data, or a skip where that folder is absent."""
    if not (SHARED_DATA / "base.npy").exists():
        pytest.skip(f"the real dataset is not here ({SHARED_DATA} is absent: only CI and developers have it)")
    return np.load(SHARED_DATA / "base.npy").astype(np.float32), np.load(SHARED_DATA / "queries.npy")


def brute_force(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k row indices and usearch-style distances (smaller is nearer) by numpy."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        qn = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        d = 1.0 - qn @ xn.T
    elif metric == "ip":
        d = 1.0 - q64 @ x64.T
    else:
        d = (q64 * q64).sum(1)[:, None] - 2 * q64 @ x64.T + (x64 * x64).sum(1)[None, :]
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Generated float32 vectors in Gaussian clusters, like real embeddings rather than uniform noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    return centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
