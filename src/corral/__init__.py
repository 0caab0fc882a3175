"""Corral: a durable, bounded, observable runtime for LLM agents."""

from .agent import Agent, Limits, agent
from .app import App, RunResult
from .config import Settings
from .context import Context
from .errors import (
    CorralError,
    LimitExceeded,
    NonDeterminismError,
    RunCancelled,
    StepError,
    StepTimeout,
    UserError,
)
from .models import ChatModel, ChatResponse, Message, SimModel, SimReply
from .store.base import RunStatus
from .tools import Tool, tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "App",
    "ChatModel",
    "ChatResponse",
    "Context",
    "CorralError",
    "LimitExceeded",
    "Limits",
    "Message",
    "NonDeterminismError",
    "RunCancelled",
    "RunResult",
    "RunStatus",
    "Settings",
    "SimModel",
    "SimReply",
    "StepError",
    "StepTimeout",
    "Tool",
    "UserError",
    "agent",
    "tool",
]
