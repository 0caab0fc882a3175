"""Agents that the chaos tests run in real `corral worker` processes."""

import asyncio

from corral import Agent, App, Context, Limits, SimModel, SimReply, agent, tool


async def append_line(path: str, i: int, delay: float) -> int:
    await asyncio.sleep(delay)  # the step's work
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


@agent(name="thirty", limits=Limits(max_steps=100_000))  # some tests need runs longer than the default 500 steps
async def thirty(ctx: Context, input: dict) -> dict:
    total = 0
    for i in range(input["steps"]):
        total += await ctx.step("append", append_line, input["log"], i, input["delay"])
        ctx.emit("progress", {"done": i + 1})
    return {"total": total}


@tool
async def fetch_order(order_id: str, log: str) -> dict:
    """Fetch an order."""
    await asyncio.sleep(0.3)
    with open(log, "a") as f:
        f.write(f"fetch {order_id}\n")
    return {"order_id": order_id, "total": 40 if order_id == "A" else 2}


@tool
async def refund(order_id: str, amount: int, log: str) -> str:
    """Refund part of an order."""
    await asyncio.sleep(1.5)  # long enough to be killed in the middle of it
    with open(log, "a") as f:
        f.write(f"refund {order_id} {amount}\n")
    return f"refunded {amount} on {order_id}"


def script(request):
    log = request.messages[0].content.split("log=")[1].strip()  # the instructions carry the log path
    turn = sum(1 for m in request.messages if m.role.value == "assistant")
    if turn == 0:
        return SimReply(
            tool_calls=(("fetch_order", {"order_id": "A", "log": log}), ("fetch_order", {"order_id": "B", "log": log}))
        )
    if turn == 1:
        return SimReply(tool_calls=(("refund", {"order_id": "A", "amount": 40, "log": log}),))
    return "Refunded 40 on order A; order B needed nothing."


def refunds_agent(log: str) -> Agent:
    return Agent("refunds", f"Handle refunds. log={log}", tools=[fetch_order, refund], use_history=False)


@agent(name="refunds")
async def refunds(ctx: Context, input: dict) -> dict:
    return await refunds_agent(input["log"]).execute(ctx, input["message"])


app = App(agents=[thirty, refunds], models={"default": SimModel(replies=script)})
