"""The workload `bench/server.py` serves, in terms every system shares (no system imported here):
the agents' names, their token schedules and the environment that sets them."""

from __future__ import annotations

import os

RATES = [float(r) for r in os.environ.get("BENCH_RATES", "20").split(",")]
STREAM_SECONDS = float(os.environ.get("BENCH_STREAM_SECONDS", "2.5"))
TTFT = float(os.environ.get("BENCH_TTFT", "0.1"))


def rate_name(rate: float) -> str:
    """The agent (graph) that streams `rate` tokens a second."""
    return f"chat-{rate:g}"


def graph_attribute(rate: float) -> str:
    """The attribute of server_langgraph_app holding `chat-R`'s graph (langgraph.json names it)."""
    return "chat_" + f"{rate:g}".replace(".", "_")


def tokens_at(rate: float, seconds: float = STREAM_SECONDS) -> int:
    """Tokens in one reply at `rate` tokens a second (the first at ttft, the last `seconds` later)."""
    return max(1, round(rate * seconds) + 1)


def stamped(i: int, due: float) -> str:
    """Token `i` with the moment a provider would have had it ready (`time.monotonic()`, one clock
    for every process on the host), so a client measures everything the server added: arrival - due."""
    return f"tok{i}@{due:.6f}"
