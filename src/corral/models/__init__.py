"""Models: the ChatModel interface and its implementations."""

from .anthropic import AnthropicModel
from .base import ChatModel, ChatRequest, ChatResponse, Delta, Message, Role, ToolCall, ToolSpec, Usage
from .breaker import BreakerPolicy, BreakerState, CircuitBreaker
from .config import build_model, default_models, load_models, models_from_config
from .llamacpp import LlamaCppModel
from .openai import OpenAIModel
from .router import Endpoint, RetryPolicy, Router
from .sim import SimModel, SimReply

__all__ = [
    "AnthropicModel",
    "BreakerPolicy",
    "BreakerState",
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "CircuitBreaker",
    "Delta",
    "Endpoint",
    "LlamaCppModel",
    "Message",
    "OpenAIModel",
    "RetryPolicy",
    "Role",
    "Router",
    "SimModel",
    "SimReply",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "build_model",
    "default_models",
    "load_models",
    "models_from_config",
]
