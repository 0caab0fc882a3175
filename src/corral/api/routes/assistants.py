"""Assistants: Corral's agents, each with a deterministic UUID; the name works as an id too."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..convert import assistant_json, assistant_schemas
from ..deps import Auth, State
from ..schemas import AssistantSearch

router = APIRouter(tags=["assistants"])


def _matches(body: AssistantSearch, item: dict[str, Any]) -> bool:
    if body.graph_id is not None and item["graph_id"] != body.graph_id:
        return False
    if body.name is not None and body.name.lower() not in item["name"].lower():
        return False
    if body.metadata:
        return all(item["metadata"].get(k) == v for k, v in body.metadata.items())
    return True


def _all(state: State) -> list[dict[str, Any]]:
    return [assistant_json(a, state.started_at) for a in state.app.agents.values()]


@router.post("/assistants/search")
async def search_assistants(
    body: AssistantSearch, state: State, caller: Auth, response: Response
) -> list[dict[str, Any]]:
    items = [a for a in _all(state) if _matches(body, a)]
    key = body.sort_by or "name"
    items.sort(key=lambda a: str(a.get(key)), reverse=body.sort_order == "desc")
    page = items[body.offset : body.offset + body.limit]
    if body.offset + body.limit < len(items):
        response.headers["X-Pagination-Next"] = str(body.offset + body.limit)
    if body.select:
        page = [{k: v for k, v in a.items() if k in body.select} for a in page]
    return page


@router.post("/assistants/count")
async def count_assistants(body: AssistantSearch, state: State, caller: Auth) -> int:
    return sum(_matches(body, a) for a in _all(state))


@router.get("/assistants/{assistant_id}")
async def get_assistant(assistant_id: str, state: State, caller: Auth) -> dict[str, Any]:
    return assistant_json(state.agent(assistant_id), state.started_at)


@router.get("/assistants/{assistant_id}/schemas")
async def get_assistant_schemas(assistant_id: str, state: State, caller: Auth) -> dict[str, Any]:
    return assistant_schemas(state.agent(assistant_id))


@router.get("/assistants/{assistant_id}/graph")
async def get_assistant_graph(assistant_id: str, state: State, caller: Auth) -> dict[str, Any]:
    """One node: a Corral agent's steps are decided by its code as it runs, not drawn in advance."""
    name = state.agent(assistant_id).name
    nodes = [
        {"id": "__start__", "type": "schema"},
        {"id": name, "type": "runnable"},
        {"id": "__end__", "type": "schema"},
    ]
    edges = [{"source": "__start__", "target": name}, {"source": name, "target": "__end__"}]
    return {"nodes": nodes, "edges": edges}
