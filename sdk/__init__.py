"""Shoal: a sharded vector database for CPU clusters, served over gRPC.

import numpy as np, shoal
c = shoal.Client("127.0.0.1:7070")  # api_key=..., tls=shoal.TLS(ca=...) for a secure cluster
c.create_collection("docs", dim=384, metric="cosine")
c.upsert("docs", ids=np.arange(n), vectors=X)
res = c.search("docs", Q, k=10)
"""

from importlib.metadata import version as _version

from shoal._aio import AsyncClient
from shoal._client import Client
from shoal._config import CollectionConfig
from shoal._errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ShoalError,
    Unauthenticated,
    Unavailable,
)
from shoal._tls import TLS
from shoal._types import CollectionInfo, Hit, Point, ScrollPage, SearchResult, ShardStats

__version__ = _version("shoal")  # the one version number is pyproject.toml's

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "CollectionConfig",
    "CollectionInfo",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Hit",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Point",
    "ResourceExhausted",
    "ScrollPage",
    "SearchResult",
    "ShardStats",
    "ShoalError",
    "TLS",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
