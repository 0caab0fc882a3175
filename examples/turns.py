"""What the examples take from a run's input: the latest user text, in any of the shapes clients send."""

from __future__ import annotations

from typing import Any

from corral.models import Message, Role

SHAPES = "a string, {'message': ...} or {'messages': [...]} (LangGraph clients send the latter)"


def latest_user_text(input: Any) -> str:
    """The text of the newest user message in `input`; '' when it holds none."""
    if isinstance(input, str):
        return input
    if not isinstance(input, dict):
        return ""
    if input.get("message") is not None:
        candidates = [input["message"]]
    else:
        candidates = input.get("messages") or []
        if not isinstance(candidates, list):
            candidates = [candidates]
    for raw in reversed(candidates):
        message = Message.from_any(raw)
        if message.role is Role.USER and message.content.strip():
            return message.content
    return ""


def conversation(history: list[dict[str, Any]], turns: int) -> list[Message]:
    """The last `turns` user and assistant messages of a session's history, tool traffic left out."""
    kept = [m for m in map(Message.from_any, history) if m.role in (Role.USER, Role.ASSISTANT) and m.content]
    return kept[-turns:] if turns > 0 else []
