"""The HTTP API: the LangGraph Server / Agent Protocol API in front of a Corral App.

`create_api(app)` gives the FastAPI application; `corral serve MODULE:APP` runs it with uvicorn.
"""

from .auth import create_key
from .server import create_api

__all__ = ["create_api", "create_key"]
