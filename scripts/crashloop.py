"""The long crash loop (minutes, many kills): the suite's tests/test_crashloop.py run for as long as you like.

Run from the repository root (it imports the loop from the tests package):

    python -m scripts.crashloop --seconds 600 --shards 3 --writers 4

It prints what the nemesis did, how every call ended, how the indexes came back, and every broken
invariant; the exit code is 1 when any invariant broke.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.test_crashloop import LoopConfig, run_crash_loop


def main() -> int:
    """Parse the options, run the loop, print the report."""
    default = LoopConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="seconds of chaos (default 600)")
    p.add_argument("--shards", type=int, default=3, help="shard processes (default 3)")
    p.add_argument("--writers", type=int, default=4, help="writer threads (default 4)")
    p.add_argument(
        "--interval",
        type=float,
        default=default.interval,
        help=f"mean seconds between kills (default {default.interval})",
    )
    p.add_argument("--seed", type=int, default=default.seed, help="random seed")
    p.add_argument("--data", help="data folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    args = p.parse_args()
    config = LoopConfig(
        seconds=args.seconds, shards=args.shards, writers=args.writers, interval=args.interval, seed=args.seed
    )
    with tempfile.TemporaryDirectory(prefix="shoal-crashloop-") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        report = run_crash_loop(data, config)
    print(report.summary())
    if args.json:
        print(
            json.dumps(
                {
                    "seconds": report.seconds,
                    "actions": report.actions,
                    "outcomes": report.outcomes,
                    "restart_seconds": report.restart_seconds,
                    "present": report.present,
                    "recoveries": report.recoveries,
                    "violations": report.violations,
                }
            )
        )
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
