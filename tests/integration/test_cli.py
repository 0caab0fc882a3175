"""The `corral` command, run as a real process against a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def corral(*args: str, db: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_POLL_MAX"] = "0.1"
    proc = subprocess.run(
        [sys.executable, "-m", "corral", *args, "--database-url", db],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_run_prints_events_then_output_and_exits_zero(db):
    proc = corral(
        "run", "examples.app:scripted", "support_bot", "--input", '{"message": "Where is A-1001?"}', db=db, check=True
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["event"] == "metadata"
    assert [x["id"] for x in lines[:-1]] == list(range(1, len(lines)))
    assert lines[-2]["event"] == "end"
    assert lines[-1]["status"] == "succeeded" and "A-1001 is shipped" in lines[-1]["output"]["answer"]


def test_failed_run_exits_non_zero_with_its_status(db):
    proc = corral("run", "examples.app:scripted", "research", "--input", '{"no_question": 1}', db=db)
    assert proc.returncode == 1
    assert "ended failed" in proc.stderr and "research needs a question" in proc.stdout


def test_bad_input_gets_a_clear_error(db):
    proc = corral("run", "examples.app:scripted", "support", "--input", "{not json", db=db)
    assert proc.returncode != 0 and "--input is not valid JSON" in proc.stderr
    proc = corral("run", "examples.app:scripted", "nobody", "--input", "{}", db=db)
    assert proc.returncode == 2 and "no agent named 'nobody'" in proc.stderr
    proc = corral("run", "examples.nope:app", "support", db=db)
    assert proc.returncode != 0 and "cannot import" in proc.stderr
    proc = corral("message", "no-such-session", '"hi"', db=db)
    assert proc.returncode == 2 and "no session" in proc.stderr


def test_submit_worker_message_and_runs_show(db, tmp_path):
    session = "cli-session"
    run_id = corral(
        "submit",
        "examples.app:scripted",
        "support",
        "--input",
        '{"message": "I want a human"}',
        "--session",
        session,
        db=db,
        check=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_POLL_MAX"] = "0.1"
    worker = subprocess.Popen(
        [sys.executable, "-m", "corral", "worker", "examples.app:scripted", "--database-url", db, "--concurrency", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        startup = [worker.stdout.readline() for _ in range(3)]
        assert any("ready" in line for line in startup), startup
        assert any("model route 'default'" in line for line in startup), startup
        deadline = time.monotonic() + 30
        while json.loads(corral("runs", "show", run_id, "--json", db=db, check=True).stdout)["status"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        corral("message", session, '{"text": "A human here: refund approved."}', db=db, check=True)
        while (shown := json.loads(corral("runs", "show", run_id, "--json", db=db, check=True).stdout))["status"] in (
            "waiting",
            "running",
            "queued",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert shown["status"] == "succeeded"
        said = "A human here: refund approved."
        assert shown["output"] == {
            "answer": said,
            "by": "human",
            "messages": [{"role": "assistant", "content": said, "name": "human"}],
        }
        assert shown["attempts"] == 2  # parked, then resumed by replay
        assert [s["kind"] for s in shown["steps"]] == ["message"]
        table = corral("runs", "show", run_id, db=db, check=True).stdout
        assert "succeeded" in table and "message" in table
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out


def test_runs_show_unknown_run(db):
    corral("submit", "examples.app:scripted", "support", "--input", "{}", db=db, check=True)
    proc = corral("runs", "show", "nope", db=db)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr


def test_worker_serves_its_metrics(db):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_POLL_MAX"] = "0.1"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral",
            "worker",
            "examples.app:scripted",
            "--database-url",
            db,
            "--concurrency",
            "3",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        startup = [worker.stdout.readline() for _ in range(4)]
        assert any("ready" in line for line in startup), startup
        run_id = corral(
            "submit",
            "examples.app:scripted",
            "support_bot",
            "--input",
            '{"message": "Where is A-1001?"}',
            db=db,
            check=True,
        ).stdout.strip()
        deadline = time.monotonic() + 30
        while json.loads(corral("runs", "show", run_id, "--json", db=db, check=True).stdout)["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/ok").json() == {"ok": True}
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "corral_worker_slots 3.0" in text
        assert 'corral_runs_finished_total{status="succeeded"} 1.0' in text
        assert 'corral_step_duration_seconds_count{kind="tool"} 1.0' in text
        assert httpx.get(f"http://127.0.0.1:{port}/nope").status_code == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
