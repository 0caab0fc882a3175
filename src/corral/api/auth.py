"""API keys: made once and shown once, stored as a SHA-256 hash, each mapped to a tenant, a
principal and roles. Every route but the operational ones needs `x-api-key`.

A process remembers a key it has found for `KEY_CACHE_SECONDS`, so a busy client costs no store
read per request; a key revoked in the store stops working within that time."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from fastapi import Request

from ..store.base import Store

KEY_PREFIX = "crl_"
HEADER = "x-api-key"
KEY_CACHE_SECONDS = 5.0
_KEY_CACHE_MAX = 10_000  # keys remembered at most; past it the cache starts over


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: everything they read or write is scoped to `tenant`."""

    tenant: str
    principal: str
    roles: tuple[str, ...]


class Unauthenticated(Exception):
    """No key, or a key that is unknown or revoked (401)."""


class KeyCache:
    """The callers of recently found keys, by key hash, for `KEY_CACHE_SECONDS`; bounded."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[Caller, float]] = {}

    def get(self, key_hash: str) -> Caller | None:
        hit = self._found.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key_hash: str, caller: Caller) -> None:
        if len(self._found) >= _KEY_CACHE_MAX:
            self._found.clear()
        self._found[key_hash] = (caller, time.monotonic() + KEY_CACHE_SECONDS)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(store: Store, tenant: str, principal: str, roles: tuple[str, ...] = ()) -> str:
    """Make a new key for (tenant, principal, roles), store its hash and return the key itself:
    it cannot be read back later."""
    if not tenant or not principal:
        raise ValueError("a key needs a tenant and a principal")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    await store.create_api_key(  # type: ignore[attr-defined]
        uuid.uuid4().hex[:12], hash_key(key), tenant, principal, tuple(roles), time.time()
    )
    return key


async def authenticate(request: Request) -> Caller:
    """The FastAPI dependency: the caller behind the request's key, or Unauthenticated."""
    state = request.app.state.corral
    if not state.auth:
        return Caller(state.app.settings.tenant, "anonymous", ())
    key = request.headers.get(HEADER)
    if not key:
        raise Unauthenticated(f"missing {HEADER} header")
    key_hash = hash_key(key)
    if (caller := state.keys.get(key_hash)) is not None:
        return caller
    found = await state.app.store.find_api_key(key_hash)
    if found is None:
        raise Unauthenticated("unknown or revoked API key")
    caller = Caller(found.tenant, found.principal, found.roles)
    state.keys.put(key_hash, caller)
    return caller
