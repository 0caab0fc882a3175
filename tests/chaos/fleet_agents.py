"""The agent that the fleet tests run by the hundred in real `corral worker` processes."""

import asyncio
import os
import random

from corral import App, Context, agent


def append(path: str, line: str) -> None:
    # One write(2) on an O_APPEND descriptor: lines from concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@agent(name="fleet")
async def fleet(ctx: Context, input: dict) -> dict:
    """`steps` steps of 5-50 ms each (drawn from the run's seed); each appends
    `"{run}:{i}:{attempt}"` to the shared log once its work is done, so a test can count how
    often every step's body ran, and in which attempt."""
    rng = random.Random(input["seed"])
    delays = [rng.uniform(0.005, 0.05) for _ in range(input["steps"])]
    attempt = ctx.attempt  # not a step argument: the replayed steps' inputs must not change

    async def work(i: int) -> int:
        await asyncio.sleep(delays[i])
        append(input["log"], f"{ctx.run_id}:{i}:{attempt}\n")
        return i

    total = 0
    for i in range(input["steps"]):
        total += await ctx.step("work", work, i)
    return {"seed": input["seed"], "total": total}


app = App(agents=[fleet])
