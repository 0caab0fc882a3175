"""Models: the ChatModel interface and its implementations."""

from .base import ChatModel, ChatRequest, ChatResponse, Delta, Message, Role, ToolCall, ToolSpec, Usage
from .sim import SimModel, SimReply

__all__ = [
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "Delta",
    "Message",
    "Role",
    "SimModel",
    "SimReply",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
