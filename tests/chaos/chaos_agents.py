"""Agents that the chaos tests run in real `corral worker` processes."""

import asyncio

from corral import App, Context, agent


async def append_line(path: str, i: int, delay: float) -> int:
    await asyncio.sleep(delay)  # the step's work
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


@agent(name="thirty")
async def thirty(ctx: Context, input: dict) -> dict:
    total = 0
    for i in range(input["steps"]):
        total += await ctx.step("append", append_line, input["log"], i, input["delay"])
        ctx.emit("progress", {"done": i + 1})
    return {"total": total}


app = App(agents=[thirty])
