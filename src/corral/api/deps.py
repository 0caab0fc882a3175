"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import Caller, authenticate
from .state import ApiState


def get_state(request: Request) -> ApiState:
    return request.app.state.corral


State = Annotated[ApiState, Depends(get_state)]
Auth = Annotated[Caller, Depends(authenticate)]
