"""Fakes for testing your own agents without a network or a database server."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .agent import AnyAgent
from .app import App
from .models.base import ChatRequest
from .models.sim import SimModel, SimReply


class ScriptedModel(SimModel):
    """A model that answers from a script, turn by turn, and remembers every request it got.

    `ScriptedModel(["first answer", SimReply(tool_calls=(("lookup", {"id": 1}),)), "done"])`
    """

    def __init__(self, replies: Sequence[SimReply | str], **kwargs: Any) -> None:
        super().__init__(replies=list(replies), **kwargs)
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest):  # type: ignore[override]
        self.requests.append(request)
        async for item in super().stream(request):
            yield item


def temp_app(agents: Iterable[AnyAgent], directory: str | Path | None = None, **kwargs: Any) -> App:
    """An App on a fresh SQLite file in a temporary directory (or `directory`)."""
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="corral-"))
    return App(agents, database_url=f"sqlite:///{folder / 'corral.db'}", **kwargs)


__all__ = ["ScriptedModel", "SimReply", "temp_app"]
