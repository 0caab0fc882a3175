"""The `sim` model: deterministic scripted replies, simulated latency and injected faults."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProviderError
from .base import ChatModel, ChatRequest, ChatResponse, Delta, Message, Role, ToolCall, Usage, approx_tokens


@dataclass(frozen=True, slots=True)
class SimReply:
    """One scripted reply: text, tool calls (name, arguments), or both."""

    text: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()


ReplySource = Sequence["SimReply | str"] | Callable[[ChatRequest], "SimReply | str"]


@dataclass
class SimModel(ChatModel):
    """A simulated model for tests and benchmarks.

    `replies` picks the reply by turn: reply *i* answers a request holding *i* assistant messages
    (the last reply repeats past the end), so concurrent conversations each get the same script.
    A callable gets the request and returns the reply. With no script the model echoes the last
    user message. Latency: `ttft` seconds before the first chunk, then `tokens_per_second`, on a
    fixed schedule from the call's start (chunk *i* is ready at start + ttft + i/tps), as a real
    provider's stream is: a slow consumer finds chunks waiting instead of slowing the provider.
    Faults, drawn from a seeded generator: `error_rate` (a retryable ProviderError, status 503)
    and `hang_rate` (never answers). `repeat_chunk` > 0 streams one chunk that many times.
    """

    replies: ReplySource | None = None
    ttft: float = 0.0
    tokens_per_second: float | None = None
    error_rate: float = 0.0
    hang_rate: float = 0.0
    repeat_chunk: int = 0
    seed: int = 0
    name: str = "sim"
    calls: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _reply(self, request: ChatRequest) -> SimReply:
        if callable(self.replies):
            reply = self.replies(request)
        elif self.replies:
            turn = sum(1 for m in request.messages if m.role is Role.ASSISTANT)
            reply = self.replies[min(turn, len(self.replies) - 1)]
        else:
            last = next((m.content for m in reversed(request.messages) if m.role is Role.USER), "")
            reply = f"You said: {last}"
        return SimReply(text=reply) if isinstance(reply, str) else reply

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        self.calls += 1
        call = self.calls
        if self.hang_rate and self._rng.random() < self.hang_rate:
            await asyncio.Event().wait()
        if self.error_rate and self._rng.random() < self.error_rate:
            raise ProviderError("simulated provider error", provider=self.name, status=503)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.ttft:
            await asyncio.sleep(self.ttft)
        reply = self._reply(request)
        if self.repeat_chunk:
            for _ in range(self.repeat_chunk):
                yield Delta("again ")
        chunks = _chunks(reply.text)
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second else 0.0
        for i, chunk in enumerate(chunks):
            if delay and i and (due := start + self.ttft + i * delay) > loop.time():
                await _sleep_until(loop, due)
            yield Delta(chunk)
        calls = tuple(ToolCall(f"call_{call}_{i}", name, dict(args)) for i, (name, args) in enumerate(reply.tool_calls))
        prompt = sum(approx_tokens(m.content) for m in request.messages)
        yield ChatResponse(
            message=Message(Role.ASSISTANT, reply.text, calls),
            usage=Usage(prompt, approx_tokens(reply.text) + 8 * len(calls)),
            finish_reason="tool_calls" if calls else "stop",
            model=self.name,
        )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """asyncio.sleep to a point in loop time, without its timer cancellation on every wake-up
    (the simulator sleeps once per streamed chunk)."""
    waiter = loop.create_future()
    timer = loop.call_at(when, _wake, waiter)
    try:
        await waiter
    except BaseException:
        timer.cancel()
        raise


def _chunks(text: str) -> list[str]:
    """Split text into word-sized chunks that join back to the text."""
    if not text:
        return []
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if words[-1] else [w + " " for w in words[:-1]]
