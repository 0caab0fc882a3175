"""Shared helpers for Corral's benchmarks: statistics, machine facts, the table and the JSON file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    data = sorted(samples)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Iterable[float]) -> dict[str, float]:
    """median, min and max of one metric's values over repetitions."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (no paths, no host names)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "sqlite": _sqlite_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


@dataclass
class Metric:
    """One measured quantity, one value per repetition."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str | None = None  # e.g. "<= 0.5"
    peers: str | None = None  # peer figures to compare against, as text
    higher_is_better: bool = False

    def summary(self) -> dict[str, float]:
        return summary(self.values)

    def verdict(self) -> str:
        if not self.target or not self.values:
            return ""
        op, _, number = self.target.partition(" ")
        median = self.summary()["median"]
        goal = float(number.replace(",", ""))
        ok = {"<=": median <= goal, "<": median < goal, ">=": median >= goal, ">": median > goal}[op]
        return "meets" if ok else "MISSES"

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            **{k: _round(v) for k, v in self.summary().items()},
            "values": [_round(v) for v in self.values],
            "target": self.target,
            "verdict": self.verdict() or None,
            "peers": self.peers,
        }


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 4)


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def print_table(title: str, rows: Sequence[tuple[str, Metric | str]], file: Any = None) -> None:
    """Rows of (group, metric); a string in place of a metric prints as a note for that group."""
    out = file or sys.stdout
    header = ("backend", "metric", "unit", "median", "min", "max", "target", "", "peers")
    lines: list[tuple[str, ...]] = []
    for group, m in rows:
        if isinstance(m, str):
            lines.append((group, m, "", "", "", "", "", "", ""))
            continue
        s = m.summary()
        lines.append(
            (
                group,
                m.name,
                m.unit,
                _fmt(s["median"]),
                _fmt(s["min"]),
                _fmt(s["max"]),
                m.target or "",
                m.verdict(),
                m.peers or "",
            )
        )
    cells = [header, *(r for r in lines if r[2] or r[3])]  # notes do not set the widths
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    widths[0] = max(len(r[0]) for r in [header, *lines])
    right = {3, 4, 5}

    def fmt(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    print(f"\n{title}", file=out)
    print(fmt(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in lines:
        if row[2] == "" and row[3] == "":  # a note spans the line
            print(f"{row[0].ljust(widths[0])}  {row[1]}", file=out)
        else:
            print(fmt(row), file=out)
    out.flush()


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def pg_url_with_db(url: str, db: str) -> str:
    """`url` naming database `db` instead."""
    base, _, query = url.partition("?")
    head, _, _old = base.rpartition("/")
    return f"{head}/{db}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of `url`, dropped afterwards; yields its URL."""
    import psycopg
    from psycopg import sql

    name = f"corral_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_url_with_db(url, name)
    finally:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            print(f"  could not drop database {name}: {exc}", file=sys.stderr)
