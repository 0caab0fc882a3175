"""How a session's values change: the one reducer shared by every backend.

`messages` accumulate (a message whose `id` is already present replaces it); every other key is
replaced. A run's input is merged when it ends, then its output if it succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def input_update(value: Any) -> dict[str, Any]:
    """What a run's input adds to its session's values."""
    if isinstance(value, str):
        return {"messages": [{"role": "user", "content": value}]}
    if isinstance(value, Mapping):
        update = {k: v for k, v in value.items() if k != "message"}
        if "message" in value:
            msg = value["message"]
            update["messages"] = [{"role": "user", "content": msg} if isinstance(msg, str) else msg]
        return update
    return {}


def output_update(value: Any) -> dict[str, Any]:
    """What a succeeded run's output adds: a dict merges key by key; anything else is `output`."""
    if isinstance(value, Mapping):
        return dict(value)
    return {} if value is None else {"output": value}


def merge(values: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for key, value in update.items():
        if key == "messages":
            out["messages"] = _add_messages(out.get("messages") or [], value)
        else:
            out[key] = value
    return out


def _add_messages(existing: list[Any], new: Any) -> list[Any]:
    items = new if isinstance(new, list) else [new]
    merged = list(existing)
    index = {m.get("id"): i for i, m in enumerate(merged) if isinstance(m, Mapping) and m.get("id")}
    for message in items:
        msg_id = message.get("id") if isinstance(message, Mapping) else None
        if msg_id and msg_id in index:
            merged[index[msg_id]] = message
        else:
            if msg_id:
                index[msg_id] = len(merged)
            merged.append(message)
    return merged


def run_update(input: Any, status_succeeded: bool, output: Any) -> dict[str, Any]:
    """The whole change a finished run makes to its session's values."""
    update = merge({}, input_update(input))
    return merge(update, output_update(output)) if status_succeeded else update
