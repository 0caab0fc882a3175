"""What a streamed token costs SQLite's thread, by how many events of one run share a commit.

    python bench/events_store.py [--runs 1000] [--events 300] [--per-commit 1,2,5,10] [--repeat 3]

The EventFlusher writes the tokens of every step in flight once per flush tick, all runs in one
transaction (engine/flush.py). With `--runs` runs streaming, each tick carries about
rate x tick events per run. This writes `--events` events for each of `--runs` runs into a
database that `SQLiteStore` created (its migrations; its own `_insert_events`, which encodes and
inserts a batch as the store does; WAL, synchronous=NORMAL), `--per-commit` events per run per
transaction, and reports the CPU time of the writing thread per event row: the figure that
decides how much of a core SQLite's thread takes at a given token rate and flush interval.
Results go to bench/results/events_store.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import BENCH_DIR, Metric, machine_info, print_table, write_results

from corral.store.base import Event
from corral.store.sqlite import SQLiteStore, _insert_events


def _database(path: Path) -> None:
    """An empty Corral database at `path`, made by the store itself."""

    async def make() -> None:
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        await store.close()

    asyncio.run(make())


def one(runs: int, events: int, per_commit: int) -> float:
    """CPU microseconds per event row, writing `per_commit` events of each run per transaction."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-events-") as tmp:
        path = Path(tmp) / "events.db"
        _database(path)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        run_ids = sorted(str(uuid.uuid4()) for _ in range(runs))
        rows, cpu = 0, 0.0
        for first in range(1, events + 1, per_commit):
            batch = [
                Event(run_id, n, "token", {"seq": "2", "text": f"tok{n} "})
                for run_id in run_ids
                for n in range(first, min(first + per_commit, events + 1))
            ]
            started = time.thread_time()
            conn.execute("BEGIN IMMEDIATE")
            _insert_events(conn, batch, time.time())
            conn.execute("COMMIT")
            cpu += time.thread_time() - started
            rows += len(batch)
        conn.close()
    return cpu / rows * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300, help="events written for each run")
    parser.add_argument("--per-commit", default="1,2,5,10", help="events of one run per transaction, a list")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    counts = [int(x) for x in args.per_commit.split(",")]
    metrics = {k: Metric(f"{args.runs} runs, {k} event(s) per run per commit: CPU per event row", "us") for k in counts}
    for _ in range(args.repeat):
        for k in counts:
            metrics[k].values.append(one(args.runs, args.events, k))
    label = f"sqlite {sqlite3.sqlite_version}"
    print_table("SQLite event writes", [(label, m) for m in metrics.values()])
    if not args.no_write:
        path = write_results(
            "events_store",
            {
                "benchmark": "events_store",
                "config": {"runs": args.runs, "events": args.events, "repeat": args.repeat},
                "metrics": {f"per_commit_{k}": m.to_json() for k, m in metrics.items()},
                "machine": machine_info(),
            },
        )
        print(f"\nwrote {path.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
