"""Leases held by dead processes on this host: proven dead, they need not run out.

A worker's id is `host:pid:start:random`, where `start` is the process's start time as the kernel
records it. On the same host a worker can prove that another id's process is gone: its pid no
longer exists, or belongs to a process that started at another time (pids are reused, and every
container restarted in a pod is pid 1). The runs of such a worker are claimable at once instead of
after their lease, which is what a restarted container or a crashed process on a laptop needs.
Nothing here is trusted for correctness: a claim still increments the attempt, so a worker that
was wrongly declared dead would only be fenced out of its run.
"""

from __future__ import annotations

import os
import socket
import uuid


def process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of process `pid`, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    return fields[19] if len(fields) > 19 else None


def worker_identity() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or 0}:{uuid.uuid4().hex[:8]}"


def host_prefix() -> str:
    return f"{socket.gethostname()}:"


def dead_owners(owners: list[str], me: str) -> list[str]:
    """Those of `owners` on this host whose process provably no longer runs."""
    host = socket.gethostname()
    dead = []
    for owner in owners:
        parts = owner.split(":")
        if owner == me or len(parts) != 4 or parts[0] != host or parts[2] == "0" or not parts[1].isdigit():
            continue  # another host's, or an id that cannot be checked: its lease decides
        if process_start(int(parts[1])) != parts[2]:
            dead.append(owner)
    return dead
