"""A scripted stand-in for an LLM so the examples behave plausibly with no model installed."""

from __future__ import annotations

import json
import re

from corral import SimModel, SimReply
from corral.models import ChatRequest, Role


def respond(request: ChatRequest) -> SimReply | str:
    last_user = next((m.content for m in reversed(request.messages) if m.role is Role.USER), "")
    tool_results = [m for m in request.messages if m.role is Role.TOOL]
    offered = {t.name for t in request.tools}
    if offered and not tool_results:
        calls = [
            ("lookup_order", {"order_id": o}) for o in re.findall(r"[Aa]-\d{4}", last_user) if "lookup_order" in offered
        ]
        if "search_kb" in offered and re.search(r"return|ship|refund|policy", last_user, re.I):
            calls.append(("search_kb", {"query": last_user}))
        if calls:
            return SimReply(tool_calls=tuple(calls))
    if tool_results:
        facts = []
        for m in tool_results:
            try:
                data = json.loads(m.content)
            except json.JSONDecodeError:
                data = m.content
            if isinstance(data, dict) and data.get("found"):
                facts.append(f"order {data['order_id']} is {data['status']} (ETA {data['eta']})")
            elif isinstance(data, list):
                facts.extend(data)
        return "Thanks for asking! " + ("; ".join(facts) or "I could not find that.") + "."
    if last_user.startswith("List "):
        topic = last_user.split("for:", 1)[-1].strip()
        return "\n".join(f"What is {aspect} of: {topic}" for aspect in ("the cause", "the cost", "the fix"))
    if last_user.startswith("Facts:"):
        return "Here is what I found: " + last_user.split("\n", 1)[0].removeprefix("Facts:").strip() + "."
    return f"(simulated model) {last_user[:200]}"


def example_model() -> SimModel:
    return SimModel(replies=respond, ttft=0.05, tokens_per_second=200)
