"""Where a shard may write a backup (`--backup-root`), and `shoal restore`: data folders made from a backup
(written by `shoal backup`, see `shoal._backup`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shoal._backup import FORMAT, MANIFEST
from shoal._config import SLOTS
from shoal._errors import FailedPrecondition, InvalidArgument


def backup_folder(root: Path | None, target: Path) -> Path:
    """The folder to back up into: `target` itself, if it lies inside `root`, else InvalidArgument.

    `..` is refused outright, and a symlink anywhere in the path is followed before the check, so neither
    leads out of the root (into another shard's data, say).
    """
    if root is None:
        raise FailedPrecondition("this shard takes no backups: it was started without --backup-root")
    if not target.is_absolute():
        raise InvalidArgument(f"a backup folder must be an absolute path, got {str(target)!r}")
    if ".." in target.parts:
        raise InvalidArgument(f"a backup folder must not contain '..', got {str(target)!r}")
    real_root, real = root.resolve(), target.resolve()
    if real == real_root or not real.is_relative_to(real_root):
        raise InvalidArgument(f"a backup folder must be inside this shard's backup root {root}, got {str(target)!r}")
    return real


def read_backup(backup: Path) -> dict[str, Any]:
    """A finished backup's manifest."""
    try:
        manifest: dict[str, Any] = json.loads((backup / MANIFEST).read_text())
    except FileNotFoundError:
        raise FailedPrecondition(f"{backup} is not a finished backup: it has no {MANIFEST}") from None
    if manifest.get("format") != FORMAT:
        raise FailedPrecondition(f"{backup / MANIFEST} has an unknown format {manifest.get('format')}")
    return manifest


def _empty(data: Path) -> None:
    if data.exists() and any(data.iterdir()):
        raise FailedPrecondition(f"{data} is not empty: restore into a new folder")


def restore_shard(backup: Path, index: int, data: Path) -> None:
    """Make `data` the data folder of shard `index` of the backup (for `shoal shard --data DATA`)."""
    shards = read_backup(backup)["shards"]
    if not 0 <= index < len(shards):
        raise InvalidArgument(f"the backup has shards 0 to {len(shards) - 1}, not {index}")
    _empty(data)
    shutil.copytree(backup / shards[index]["folder"], data, dirs_exist_ok=True)


def restore_local(backup: Path, data: Path) -> int:
    """Make `data` the data folder of a `shoal up` cluster from the backup; the number of shards."""
    shards = read_backup(backup)["shards"]
    n = len(shards)
    for i, shard in enumerate(shards):
        # `shoal up` splits the slots evenly in shard order; another split would send ids to the wrong shard.
        if shard["slots"] != [[i * SLOTS // n, (i + 1) * SLOTS // n]]:
            raise FailedPrecondition(
                f"shard {i} of the backup served slots {shard['slots']}, not the even split `shoal up` uses; "
                "restore each shard with --shard and start the cluster with its topology file"
            )
    _empty(data)
    for i in range(n):
        restore_shard(backup, i, data / f"shard-{i}")
    (data / "cluster.json").write_text(json.dumps({"shards": n}) + "\n")
    return n
