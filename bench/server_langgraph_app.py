"""The LangGraph peer of `bench/server_app.py`, for the LangGraph API server (`langgraph dev`, its
in-memory runtime): the same agents under the same names, served by the same HTTP protocol.

`chat-R` is a one-node MessagesState graph whose chat model streams R tokens a second on the
schedule of Corral's SimModel (token i is due at the call's start + ttft + i/R) and stamps each
with that moment (server_workload.stamped); `noop` returns at once. bench/server.py writes the
langgraph.json that names these graphs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, MessagesState, StateGraph
from server_workload import RATES, TTFT, graph_attribute, stamped, tokens_at


class StampedChat(BaseChatModel):
    """A chat model that streams `tokens` stamped tokens at `rate` a second after `ttft`."""

    rate: float
    ttft: float
    tokens: int

    @property
    def _llm_type(self) -> str:
        return "stamped-sim"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        raise NotImplementedError("async only")

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        text = "".join([c.text async for c in self._astream(messages, stop, run_manager, **kw)])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: Any = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kw: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        start, gap = time.monotonic() + self.ttft, 1.0 / self.rate
        for i in range(self.tokens):
            due = start + i * gap
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            text = stamped(i, due) + (" " if i < self.tokens - 1 else "")
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager is not None:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk


def chat_graph(rate: float) -> Any:
    model = StampedChat(rate=rate, ttft=TTFT, tokens=tokens_at(rate))

    async def chat(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    return StateGraph(MessagesState).add_node("chat", chat).add_edge(START, "chat").add_edge("chat", END).compile()


async def _nothing(state: MessagesState) -> dict[str, Any]:
    return {}


noop = StateGraph(MessagesState).add_node("noop", _nothing).add_edge(START, "noop").add_edge("noop", END).compile()


for _rate in RATES:
    globals()[graph_attribute(_rate)] = chat_graph(_rate)
