"""The Jepsen-style set test (loadtest/set_test.py), short: a few random kills and cuts, every invariant kept;
and the same while slot ranges move between the groups."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest.set_test import run
from shoal._errors import FailedPrecondition
from tests.grouplab import safe_etcd

pytestmark = pytest.mark.slow  # a 3-member etcd, two groups of three and two coordinators, killed and cut

FAULTS = 15


def _set_test(root: Path, moves: bool) -> str:
    try:
        safe_etcd()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    problems, summary = run(root, faults=FAULTS, seed=7, moves=moves)
    print(summary)
    assert problems == [], "\n".join([summary, *problems[:20]])
    assert f"{FAULTS} faults" in summary and "ids acknowledged added" in summary
    return summary


def test_no_acknowledged_write_is_lost_under_random_kills_and_cuts(tmp_path: Path) -> None:
    _set_test(tmp_path / "set", moves=False)


def test_no_acknowledged_write_is_lost_while_slots_move(tmp_path: Path) -> None:
    summary = _set_test(tmp_path / "set", moves=True)
    moved = re.search(r"(\d+) slot moves done", summary)
    assert moved is not None and int(moved.group(1)) > 0, summary  # the faults met moves under way
