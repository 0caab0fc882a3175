"""A customer-support agent: conversation, order-lookup and knowledge-base tools, and a hand-off
to a human that parks the run (`wait_for_message`) until someone answers."""

from __future__ import annotations

import re

from corral import Agent, Context, Limits, agent, tool

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
async def support(ctx: Context, input: dict) -> dict:
    """Answers from the tools; hands over to a human when asked, and waits for them durably."""
    text = input.get("message", "")
    if "human" in text.lower():
        ctx.emit("handoff", {"session_id": ctx.session_id, "reason": text})
        reply = await ctx.wait_for_message(timeout=input.get("handoff_timeout", 3600))
        answer = reply.get("text") if isinstance(reply, dict) else reply
        return {"answer": answer or "Nobody was available; we will email you.", "by": "human"}
    facts = []
    for order_id in re.findall(r"[Aa]-\d{4}", text):
        facts.append(await ctx.call_tool(lookup_order, order_id=order_id))
    articles = await ctx.call_tool(search_kb, query=text)
    prompt = f"Customer: {text}\nOrders: {facts}\nArticles: {articles}\nWrite the reply."
    reply = await ctx.chat(
        [{"role": "system", "content": support_bot.instructions}, {"role": "user", "content": prompt}]
    )
    return {"answer": reply.text, "orders": facts, "articles": articles, "by": "agent"}
