"""The ChatModel interface and the messages, requests and responses that cross it."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # on a tool result: the call it answers
    name: str | None = None

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(Role.SYSTEM, text)

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(Role.USER, text)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        return cls(Role.ASSISTANT, text, tool_calls)

    @classmethod
    def tool(cls, call_id: str, content: str, name: str | None = None) -> Message:
        return cls(Role.TOOL, content, tool_call_id=call_id, name=name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role.value, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    @classmethod
    def from_any(cls, value: Message | Mapping[str, Any] | str) -> Message:
        """A Message from itself, a plain string (a user turn) or an OpenAI-style dict."""
        if isinstance(value, Message):
            return value
        if isinstance(value, str):
            return cls.user(value)
        role = value.get("role") or value.get("type")
        role = {"human": "user", "ai": "assistant", "developer": "system"}.get(role, role)
        calls = tuple(
            ToolCall(
                c.get("id", ""),
                c.get("name") or c.get("function", {}).get("name", ""),
                c.get("arguments") if isinstance(c.get("arguments"), dict) else c.get("args", {}),
            )
            for c in value.get("tool_calls") or ()
        )
        content = value.get("content", "")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        return cls(Role(role), content or "", calls, value.get("tool_call_id"), value.get("name"))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it: a name, a description and a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    response_format: dict[str, Any] | None = None  # a JSON schema for structured output
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": [m.to_dict() for m in self.messages],
            "tools": [t.to_dict() for t in self.tools],
            "response_format": self.response_format,
            "params": self.params,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    message: Message
    usage: Usage = Usage()
    finish_reason: str = "stop"
    model: str = ""

    @property
    def text(self) -> str:
        return self.message.content

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.message.tool_calls

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message.to_dict(),
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens},
            "finish_reason": self.finish_reason,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatResponse:
        usage = data.get("usage") or {}
        return cls(
            message=Message.from_any(data["message"]),
            usage=Usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0)),
            finish_reason=data.get("finish_reason", "stop"),
            model=data.get("model", ""),
        )


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of streamed text."""

    text: str


class ChatModel(abc.ABC):
    """An LLM endpoint. One method: stream deltas, then exactly one final ChatResponse."""

    name: str = "model"

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        """Yield `Delta`s as text arrives, then the complete `ChatResponse` last."""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        async for item in self.stream(request):
            if isinstance(item, ChatResponse):
                return item
        raise RuntimeError(f"model {self.name} ended its stream without a response")

    async def load(self) -> None:  # noqa: B027 - optional hook
        """Get ready to answer: local weights into memory (the embedded model). Remote providers
        have nothing to load; whether they answer is the router's business, not readiness's."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""


def approx_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for models that do not report usage."""
    return max(1, (len(text) + 3) // 4) if text else 0
