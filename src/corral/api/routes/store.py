"""The store: long-term memory items under (namespace, key), per tenant."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Response

from ..convert import InvalidInput, item_json
from ..deps import Auth, State
from ..errors import NotFound
from ..schemas import StoreDelete, StoreNamespaces, StorePut, StoreSearch

router = APIRouter(tags=["store"])


@router.put("/store/items", status_code=204)
async def put_item(body: StorePut, state: State, caller: Auth) -> Response:
    if body.ttl is not None:
        raise InvalidInput("ttl", "item TTLs are not supported; delete items explicitly")
    if body.index not in (None, False):
        raise InvalidInput("index", "semantic indexing is not supported; search filters on values")
    await state.store.put_item(caller.tenant, tuple(body.namespace), body.key, body.value, time.time())
    return Response(status_code=204)


@router.get("/store/items")
async def get_item(
    state: State,
    caller: Auth,
    key: str = Query(min_length=1, max_length=500),
    namespace: str = Query("", max_length=4000, description="the namespace's labels joined by '.'"),
    refresh_ttl: bool | None = None,
) -> dict[str, Any]:
    parts = tuple(namespace.split(".")) if namespace else ()
    item = await state.store.get_item(caller.tenant, parts, key)
    if item is None:
        raise NotFound(f"no item {key!r} in namespace {list(parts)}")
    return item_json(item)


@router.delete("/store/items", status_code=204)
async def delete_item(body: StoreDelete, state: State, caller: Auth) -> Response:
    await state.store.delete_item(caller.tenant, tuple(body.namespace), body.key)
    return Response(status_code=204)


@router.post("/store/items/search")
async def search_items(body: StoreSearch, state: State, caller: Auth) -> dict[str, Any]:
    items = await state.store.search_items(
        caller.tenant,
        tuple(body.namespace_prefix),
        filter=body.filter,
        query=body.query,
        limit=body.limit,
        offset=body.offset,
    )
    return {"items": [item_json(i) for i in items]}


@router.post("/store/namespaces")
async def list_namespaces(body: StoreNamespaces, state: State, caller: Auth) -> dict[str, Any]:
    namespaces = await state.store.list_namespaces(
        caller.tenant,
        prefix=tuple(body.prefix or ()),
        suffix=tuple(body.suffix or ()),
        max_depth=body.max_depth,
        limit=body.limit,
        offset=body.offset,
    )
    return {"namespaces": [list(ns) for ns in namespaces]}
