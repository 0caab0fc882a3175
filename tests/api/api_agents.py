"""Agents the API tests run: a chat Agent, a slow stepper, a human-in-the-loop wait, a failure."""

from __future__ import annotations

import asyncio
from typing import Any

from corral import Agent, App, Context, Limits, SimModel, agent, tool


@tool(required_roles=("support",))
async def whoami(note: str) -> str:
    """Say who may call this.

    Args:
        note: anything
    """
    return f"support tool says {note}"


chat = Agent("chat", "You are terse.", limits=Limits(max_steps=10))


@agent(name="slow", limits=Limits(max_steps=500, run_timeout=120))
async def slow(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Takes `steps` steps of `delay` seconds, emitting a custom event at each."""
    steps, delay = int(input.get("steps", 5)), float(input.get("delay", 0.05))

    async def tick(i: int) -> int:
        await asyncio.sleep(delay)
        return i

    for i in range(steps):
        await ctx.step("tick", tick, i)
        ctx.emit("tick", {"i": i})
    return {"messages": [{"role": "assistant", "content": f"took {steps} steps"}], "steps": steps}


@agent(name="hitl")
async def hitl(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Asks a human and waits durably for the answer."""
    ctx.emit("question", {"ask": "approve?"})
    answer = await ctx.wait_for_message()
    return {"messages": [{"role": "assistant", "content": f"the human said {answer}"}], "answer": answer}


@agent(name="fails")
async def fails(ctx: Context, input: Any) -> Any:
    await ctx.step("prepare", _noop)
    raise ValueError("boom")


@agent(name="who")
async def who(ctx: Context, input: Any) -> dict[str, Any]:
    """Reports who runs it and whether a tool that needs the role `support` may be called."""
    try:
        said = await ctx.call_tool(whoami, note="hi")
    except Exception as exc:  # ToolNotAllowed without the role
        said = type(exc).__name__
    return {"tenant": ctx.tenant, "principal": ctx.principal, "roles": sorted(ctx.roles), "tool": said}


async def _noop() -> None:
    return None


def build_app(
    database_url: str, agents: list[Any] | None = None, models: dict[str, Any] | None = None, **overrides: Any
) -> App:
    """The test agents (or `agents`) on the simulator (or `models`), tuned for quick tests."""
    overrides.setdefault("lease_seconds", 5.0)
    overrides.setdefault("poll_interval", 0.01)
    overrides.setdefault("poll_max", 0.2)
    overrides.setdefault("park_threshold", 0.2)
    overrides.setdefault("sse_heartbeat_seconds", 0.5)
    return App(
        agents if agents is not None else [chat, slow, hitl, fails, who],
        models=models if models is not None else {"default": SimModel(tokens_per_second=500)},
        database_url=database_url,
        **overrides,
    )


# `corral serve tests.api.api_agents:app` in the subprocess tests reads the URL from the environment.
app = App(
    [chat, slow, hitl, fails, who],
    models={"default": SimModel(tokens_per_second=500)},
    lease_seconds=2.0,
    poll_interval=0.01,
    poll_max=0.2,
    sse_heartbeat_seconds=0.5,
)
