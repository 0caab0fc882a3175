"""A customer-support agent: conversation, order-lookup and knowledge-base tools, and a hand-off
to a human that parks the run (`wait_for_message`) until someone answers."""

from __future__ import annotations

import re
from typing import Any

from corral import Agent, Context, Limits, agent, tool
from corral.models import Message

from .turns import SHAPES, conversation, latest_user_text

ORDERS = {
    "A-1001": {"status": "shipped", "carrier": "DHL", "eta": "2 days"},
    "A-1002": {"status": "processing", "carrier": None, "eta": "5 days"},
}
ARTICLES = {
    "returns": "Items can be returned within 30 days with the receipt.",
    "shipping": "Standard shipping takes 3-5 business days; express takes 1-2.",
}


@tool(timeout=10)
async def lookup_order(order_id: str) -> dict:
    """Look up an order by its id.

    Args:
        order_id: the order id, like A-1001
    """
    order = ORDERS.get(order_id.upper())
    if order is None:
        return {"order_id": order_id, "found": False}
    return {"order_id": order_id.upper(), "found": True, **order}


@tool(timeout=10)
async def search_kb(query: str) -> list[str]:
    """Search the help-centre articles.

    Args:
        query: words to look for
    """
    words = set(query.lower().split())
    return [text for key, text in ARTICLES.items() if key in words or words & set(text.lower().split())][:3]


# The tool-calling loop as a one-liner: the model decides which tools to call.
support_bot = Agent(
    "support_bot",
    "You are a concise customer-support agent. Use the tools to answer about orders and policies.",
    tools=[lookup_order, search_kb],
    limits=Limits(max_steps=30, run_timeout=120),
)


@agent(name="support", limits=Limits(max_steps=40, run_timeout=300))
async def support(ctx: Context, input: Any) -> dict:
    """Answers from the tools with the conversation so far; hands over to a human when asked, and
    waits for them durably."""
    text = latest_user_text(input)
    if not text:
        raise ValueError(f"support needs a user message: {SHAPES}")
    if "human" in text.lower():
        ctx.emit("handoff", {"session_id": ctx.session_id, "reason": text})
        reply = await ctx.wait_for_message(timeout=_handoff_timeout(input))
        answer = (reply.get("text") if isinstance(reply, dict) else reply) or "Nobody was available; we will email you."
        said = {"role": "assistant", "content": answer, "name": "human"}
        return {"answer": answer, "by": "human", "messages": [said]}
    past = conversation(await ctx.history(), turns=6)
    facts = [await ctx.call_tool(lookup_order, order_id=o) for o in re.findall(r"[Aa]-\d{4}", text)]
    articles = await ctx.call_tool(search_kb, query=text)
    prompt = (
        f"Facts: {_facts(facts, articles)}\nCustomer: {text}\n"
        "Reply to the customer in one or two sentences, using only the facts."
    )
    reply = await ctx.chat([Message.system(support_bot.instructions), *past, Message.user(prompt)], max_tokens=256)
    return {
        "answer": reply.text,
        "orders": facts,
        "articles": articles,
        "by": "agent",
        "messages": [{"role": "assistant", "content": reply.text}],
    }


def _facts(orders: list[dict], articles: list[str]) -> str:
    """The tools' findings as plain sentences: a small model uses them better than as JSON."""
    said = []
    for o in orders:
        if not o["found"]:
            said.append(f"there is no order {o['order_id']}")
        else:
            carrier = f" with {o['carrier']}" if o["carrier"] else ""
            said.append(f"order {o['order_id']} is {o['status']}{carrier}, arriving in {o['eta']}")
    return "; ".join(said + articles) or "none found"


def _handoff_timeout(input: Any) -> float:
    return float(input.get("handoff_timeout", 3600)) if isinstance(input, dict) else 3600.0
