import pytest

from corral.errors import ProviderError
from corral.models import ChatRequest, ChatResponse, Delta, Message, SimModel, SimReply


def request(*turns: Message) -> ChatRequest:
    return ChatRequest(messages=turns)


async def collect(model: SimModel, req: ChatRequest) -> tuple[list[str], ChatResponse]:
    chunks, final = [], None
    async for item in model.stream(req):
        if isinstance(item, Delta):
            chunks.append(item.text)
        else:
            final = item
    assert final is not None
    return chunks, final


async def test_replies_are_picked_by_turn_so_conversations_are_deterministic():
    model = SimModel(replies=[SimReply(tool_calls=(("lookup", {"id": 1}),)), "done"])
    _, first = await collect(model, request(Message.user("hi")))
    assert first.tool_calls[0].name == "lookup" and first.finish_reason == "tool_calls"
    _, second = await collect(model, request(Message.user("hi"), first.message, Message.tool("c", "{}")))
    assert second.text == "done" and second.finish_reason == "stop"
    _, again = await collect(model, request(Message.user("other conversation")))
    assert again.tool_calls  # turn 0 again, whatever other conversations did


async def test_echo_and_chunks_join_to_the_text():
    chunks, final = await collect(SimModel(), request(Message.user("hello there world")))
    assert "".join(chunks) == final.text == "You said: hello there world"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_faults_are_seeded_and_retryable():
    model = SimModel(error_rate=0.5, seed=7)
    outcomes = []
    for _ in range(20):
        try:
            await model.complete(request(Message.user("x")))
            outcomes.append(True)
        except ProviderError as exc:
            assert exc.retryable and exc.status == 503
            outcomes.append(False)
    replay = SimModel(error_rate=0.5, seed=7)
    again = []
    for _ in range(20):
        try:
            await replay.complete(request(Message.user("x")))
            again.append(True)
        except ProviderError:
            again.append(False)
    assert outcomes == again and True in outcomes and False in outcomes


def test_message_from_openai_and_langchain_shapes():
    assert Message.from_any({"type": "human", "content": "hi"}).role.value == "user"
    msg = Message.from_any(
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert msg.content == "ab"
    with pytest.raises(ValueError):
        Message.from_any({"role": "wizard", "content": "x"})


async def test_tokens_keep_the_providers_schedule_when_the_reader_is_slow():
    """Chunk i is ready at start + ttft + i/tps, as a real provider's are: a consumer that falls
    behind finds the next chunks waiting rather than slowing the stream down."""
    import asyncio
    import time

    model = SimModel(replies=["a b c d e f"], ttft=0.05, tokens_per_second=20)
    start = time.monotonic()
    arrivals = []
    async for item in model.stream(request(Message.user("go"))):
        if isinstance(item, Delta):
            arrivals.append(time.monotonic() - start)
            if len(arrivals) == 1:
                await asyncio.sleep(0.2)  # the reader stalls for four tokens' worth of time
    assert len(arrivals) == 6
    assert arrivals[0] >= 0.05
    # chunks 1-4 were due during the stall: they come at once after it, not 50 ms apart
    assert arrivals[4] - arrivals[1] < 0.03
    assert 0.29 <= arrivals[5] < 0.29 + 0.1  # the last one still at ttft + 5/tps
