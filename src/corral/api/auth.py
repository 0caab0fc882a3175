"""API keys: made once and shown once, stored as a SHA-256 hash, each mapped to a tenant, a
principal and roles. Every route but the operational ones needs `x-api-key`."""

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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: everything they read or write is scoped to `tenant`."""

    tenant: str
    principal: str
    roles: tuple[str, ...]


class Unauthenticated(Exception):
    """No key, or a key that is unknown or revoked (401)."""


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
    found = await state.app.store.find_api_key(hash_key(key))
    if found is None:
        raise Unauthenticated("unknown or revoked API key")
    return Caller(found.tenant, found.principal, found.roles)
