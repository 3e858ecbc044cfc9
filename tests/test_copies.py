"""Catch-up copies on disk: chunked reading, staged download, and a swap that every crash point leaves openable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from shoal._config import CollectionConfig
from shoal._errors import FailedPrecondition
from shoal.shard import copies
from shoal.shard.catchup import needs_copy
from shoal.shard.core import Shard
from shoal.v1 import shard_pb2
from tests.conftest import clustered


def make_data(folder: Path, marker: str) -> None:
    """A data folder whose two parts say which copy they are."""
    for part in copies.PARTS:
        (folder / part).mkdir(parents=True)
        (folder / part / "which").write_text(marker)


def stage(data: Path, source: Path, complete: bool = True) -> copies.Download:
    download = copies.Download(data)
    files = size = 0
    for name, chunk in copies.read_chunks(source):
        download.write(name, chunk)
    for path in source.rglob("*"):
        if path.is_file():
            files, size = files + 1, size + path.stat().st_size
    if complete:
        download.complete(files, size)
    else:
        download.close()  # as a crash leaves it: the files written so far, no marker
    return download


def test_read_chunks_splits_large_files_and_keeps_empty_ones(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    big = os.urandom(copies.CHUNK + 10)
    (tmp_path / "index" / "big").write_bytes(big)
    (tmp_path / "rocksdb").mkdir()
    (tmp_path / "rocksdb" / "empty").write_bytes(b"")
    chunks = list(copies.read_chunks(tmp_path))
    assert [(name, len(data)) for name, data in chunks] == [
        ("index/big", copies.CHUNK),
        ("index/big", 10),
        ("rocksdb/empty", 0),
    ]
    assert b"".join(data for name, data in chunks if name == "index/big") == big


def test_a_complete_copy_replaces_both_parts(tmp_path: Path) -> None:
    data, source = tmp_path / "data", tmp_path / "source"
    make_data(data, "old")
    make_data(source, "new")
    stage(data, source)
    assert copies.finish(data)
    assert [(data / part / "which").read_text() for part in copies.PARTS] == ["new", "new"]
    assert not (data / copies.CATCHUP).exists()
    assert not copies.finish(data)  # nothing left to do


def test_an_unfinished_copy_is_removed_and_the_old_data_stays(tmp_path: Path) -> None:
    data, source = tmp_path / "data", tmp_path / "source"
    make_data(data, "old")
    make_data(source, "new")
    stage(data, source, complete=False)
    assert not copies.finish(data)
    assert [(data / part / "which").read_text() for part in copies.PARTS] == ["old", "old"]
    assert not (data / copies.CATCHUP).exists()


def test_a_swap_cut_off_between_the_parts_is_rolled_forward(tmp_path: Path) -> None:
    data, source = tmp_path / "data", tmp_path / "source"
    make_data(data, "old")
    make_data(source, "new")
    stage(data, source)
    staged = data / copies.CATCHUP
    # As a crash leaves it after the first part was swapped: rocksdb/ new, index/ old, the rest staged.
    shutil.rmtree(data / "rocksdb")
    os.replace(staged / "rocksdb", data / "rocksdb")
    assert copies.finish(data)
    assert [(data / part / "which").read_text() for part in copies.PARTS] == ["new", "new"]


def test_a_copy_is_checked_whole_and_cannot_write_outside_its_parts(tmp_path: Path) -> None:
    download = copies.Download(tmp_path)
    download.write("rocksdb/CURRENT", b"x")
    with pytest.raises(FailedPrecondition, match="incomplete"):
        download.complete(2, 1)
    for bad in ("../evil", "rocksdb/../../evil", "other/file", "/etc/passwd", "rocksdb"):
        with pytest.raises(FailedPrecondition, match="unexpected path"):
            copies.Download(tmp_path).write(bad, b"x")


def test_the_primary_scratch_folders_are_removed_on_start(tmp_path: Path) -> None:
    scratch = copies.scratch(tmp_path)
    (scratch / "rocksdb").mkdir(parents=True)
    copies.finish(tmp_path)
    assert not scratch.exists()


def test_a_member_needs_a_copy_only_when_the_primary_log_no_longer_reaches_it() -> None:
    primary = shard_pb2.ReplicaStateResponse(role="primary", seq=500, log_start=451)
    assert not needs_copy(450, primary)  # its next write, 451, is the log's first
    assert needs_copy(449, primary)
    assert not needs_copy(0, shard_pb2.ReplicaStateResponse(role="primary", seq=9, log_start=1))
    assert not needs_copy(0, shard_pb2.ReplicaStateResponse(role="replica", seq=9, log_start=5))


def test_a_shard_reloads_onto_a_copy_of_another(tmp_path: Path) -> None:
    x = clustered(300, 8)
    config = CollectionConfig("c", 8, metric="l2")
    with Shard(tmp_path / "a") as a, Shard(tmp_path / "b") as b:
        a.create_collection(config)
        a.upsert("c", np.arange(300, dtype=np.uint64), x)
        b.create_collection(config)
        b.upsert("c", np.arange(5, dtype=np.uint64), x[:5])
        a.copy_to(tmp_path / "copy")
        stage(b.data, tmp_path / "copy")
        b.reload()
        assert b.count("c") == 300 and b.sequence == a.sequence
        found = b.search("c", x[:3], k=1)
        assert found.ids[:, 0].tolist() == [0, 1, 2]
        b.upsert("c", np.arange(300, 301, dtype=np.uint64), x[:1])  # it writes on as usual
        assert b.count("c") == 301
