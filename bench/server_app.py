"""The app `bench/server.py` serves: chat Agents on SimModels with fixed token schedules.

`chat-R` streams R tokens a second for `BENCH_STREAM_SECONDS` (one agent per rate in
`BENCH_RATES`), the first token `BENCH_TTFT` seconds after the model call starts. Each word carries
the moment a provider would have had it ready (`tok7@12345.678901`: the call's start + ttft + i/R
on `time.monotonic()`, one clock for every process on the host), so a client measures everything
the server added to each token: arrival - due. A server too busy to take a token when it is due
(a real provider's would wait in the socket) adds that wait too; a stamp taken when the server
finally takes it would hide it. `noop` returns at once. Served as `corral serve server_app:app`
(or `corral worker server_app:app`) with `bench/` on PYTHONPATH.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from server_workload import RATES, TTFT, rate_name, stamped, tokens_at

from corral import Agent, App, Context, Limits, SimModel, agent
from corral.models.base import ChatRequest, ChatResponse, Delta


class StampedSim(SimModel):
    """The SimModel's stream with each chunk's due time appended to its word."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        start, i, gap = time.monotonic() + self.ttft, 0, 1.0 / self.tokens_per_second
        async for item in super().stream(request):
            if isinstance(item, Delta):
                word = item.text.rstrip(" ")
                item = Delta(f"{stamped(i, start + i * gap)}{item.text[len(word) :]}")
                i += 1
            yield item


@agent(name="noop")
async def noop(ctx: Context, input: Any) -> dict[str, Any]:
    """Does nothing: what `runs created per second` starts, so the worker's share stays small."""
    return {"messages": []}


agents: list[Any] = [noop]
# No agent here uses the `default` route; set, it keeps the CLI from filling it with the embedded
# model, which every process would load at start (and carry: ~175 MB).
models: dict[str, Any] = {"default": SimModel()}
for rate in RATES:
    reply = " ".join(f"tok{i}" for i in range(tokens_at(rate)))
    models[rate_name(rate)] = StampedSim(replies=[reply], ttft=TTFT, tokens_per_second=rate)
    agents.append(Agent(rate_name(rate), "You are a benchmark.", model=rate_name(rate), limits=Limits(max_steps=4)))
app = App(agents, models=models)
