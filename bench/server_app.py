"""The app `bench/server.py` serves: one chat Agent on a SimModel with a fixed token schedule.

The reply is `BENCH_TOKENS` words (default 50), streamed `BENCH_TTFT` seconds after the model call
starts and then one every 1/`BENCH_TOKENS_PER_SECOND` seconds. Each word carries the moment the
model produced it (`tok7@12345.678901`, `time.monotonic()`, one clock for every process on the
host), so a client measures exactly what the server added to each token: arrival - production.
`noop` returns at once. Served as `corral serve server_app:app` with `bench/` on PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from corral import Agent, App, Context, Limits, SimModel, agent
from corral.models.base import ChatRequest, ChatResponse, Delta

TOKENS = int(os.environ.get("BENCH_TOKENS", "50"))
TTFT = float(os.environ.get("BENCH_TTFT", "0.1"))
TOKENS_PER_SECOND = float(os.environ.get("BENCH_TOKENS_PER_SECOND", "20"))
REPLY = " ".join(f"tok{i}" for i in range(TOKENS))


class StampedSim(SimModel):
    """The SimModel's stream with each chunk's production time appended to its word."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        async for item in super().stream(request):
            if isinstance(item, Delta):
                word, space = item.text.rstrip(" "), item.text[len(item.text.rstrip(" ")) :]
                item = Delta(f"{word}@{time.monotonic():.6f}{space}")
            yield item


@agent(name="noop")
async def noop(ctx: Context, input: Any) -> dict[str, Any]:
    """Does nothing: what `runs created per second` starts, so the worker's share stays small."""
    return {"messages": []}


chat = Agent("chat", "You are a benchmark.", limits=Limits(max_steps=4))
app = App(
    [chat, noop],
    models={"default": StampedSim(replies=[REPLY], ttft=TTFT, tokens_per_second=TOKENS_PER_SECOND)},
)
