"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import Caller, authenticate
from .state import ApiState


async def get_state(request: Request) -> ApiState:  # async: sync dependencies run in a thread pool
    return request.app.state.corral


State = Annotated[ApiState, Depends(get_state)]
Auth = Annotated[Caller, Depends(authenticate)]
