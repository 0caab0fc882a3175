import os
import socket
import subprocess
import sys

from corral.engine.orphans import dead_owners, process_start, worker_identity


def test_a_worker_id_names_this_host_pid_and_start():
    host, pid, start, rand = worker_identity().split(":")
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert start == process_start(os.getpid()) and len(rand) == 8


def test_only_provably_dead_workers_on_this_host_are_dead():
    me = worker_identity()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    alive_start = process_start(child.pid)
    host = socket.gethostname()
    alive = f"{host}:{child.pid}:{alive_start}:aaaa"
    reused = f"{host}:{child.pid}:{int(alive_start) - 1}:bbbb"  # the pid now belongs to a later process
    unknown = f"{host}:{child.pid + 1}:0:cccc"  # no start time recorded: cannot be proved dead
    elsewhere = f"not-{host}:1:1:dddd"
    try:
        assert dead_owners([me, alive, reused, unknown, elsewhere], me) == [reused]
    finally:
        child.kill()
        child.wait()
    assert dead_owners([alive], me) == [alive]  # its process is gone now
