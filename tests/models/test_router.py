"""Routes over real loopback HTTP: retries and backoff, Retry-After, timeouts (attempt, first
token, total deadline), failover only before the first token, the context fallback, and the
circuit breaker's transitions."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from fake_llm_servers import Cut, FakeOpenAI, Hang, Repeat, Reply, Status, closed_port_url

from corral import Agent, App
from corral.errors import (
    AuthenticationFailed,
    BadRequest,
    CircuitOpen,
    ConfigError,
    ContextTooLong,
    ProviderTimeout,
    ProviderUnavailable,
    StreamBroken,
)
from corral.models import (
    BreakerPolicy,
    BreakerState,
    ChatRequest,
    ChatResponse,
    CircuitBreaker,
    Delta,
    Endpoint,
    Message,
    OpenAIModel,
    RetryPolicy,
    Router,
    SimModel,
)
from corral.store.base import RunStatus

KEY = "sk-test-ROUTER-SECRET-987654321"
CONTEXT_400 = Status(400, {"error": {"message": "maximum context length exceeded", "code": "context_length_exceeded"}})


class Sleeps:
    """Records the router's waits instead of sleeping them."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oa(url: str, name: str) -> OpenAIModel:
    return OpenAIModel("fake-model", base_url=f"{url}/v1", api_key=KEY, name=name)


def ask(text: str = "hi") -> ChatRequest:
    return ChatRequest((Message.user(text),))


async def collect(model: Router, request: ChatRequest | None = None) -> tuple[list[str], ChatResponse]:
    deltas, final = [], None
    async for item in model.stream(request or ask()):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            final = item
    assert final is not None
    return deltas, final


def router(*endpoints: Endpoint | OpenAIModel, sleeps: Sleeps | None = None, **kwargs: object) -> Router:
    kwargs.setdefault("retry", RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05))
    return Router("default", endpoints, sleep=sleeps or Sleeps(), rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


async def test_retries_with_backoff_then_fails_over(openai_server: FakeOpenAI, openai_backup: FakeOpenAI) -> None:
    openai_server.queue(Status(500), Status(502), Status(503))
    openai_backup.queue(Reply("from the backup"))
    sleeps = Sleeps()
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"), sleeps=sleeps)
    _, final = await collect(r)
    await r.aclose()
    assert final.text == "from the backup"
    assert len(openai_server.requests) == 3 and len(openai_backup.requests) == 1
    assert len(sleeps.calls) == 2  # full jitter: uniform in [0, min(max, base * 2^n)]
    assert 0 <= sleeps.calls[0] <= 0.01 and 0 <= sleeps.calls[1] <= 0.02
    stats = r.stats()
    assert (stats["calls"], stats["successes"], stats["failures"]) == (1, 1, 0)
    assert (stats["attempts"], stats["retries"], stats["failovers"]) == (4, 2, 1)
    primary, backup = stats["endpoints"]
    assert (primary["name"], primary["calls"], primary["failures"]) == ("primary", 3, 3)
    assert (backup["calls"], backup["successes"]) == (1, 1)


async def test_429_waits_retry_after_or_fails_over_when_too_long(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI
) -> None:
    sleeps = Sleeps()
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"), sleeps=sleeps)
    openai_server.queue(Status(429, headers={"retry-after": "0.75"}), Reply("after waiting"))
    _, final = await collect(r)
    assert final.text == "after waiting" and sleeps.calls == [0.75]
    assert len(openai_backup.requests) == 0

    openai_server.queue(Status(429, headers={"retry-after": "120"}))  # over max_retry_after: go elsewhere now
    _, final = await collect(r)
    await r.aclose()
    assert final.text == "hello from the fake" and sleeps.calls == [0.75]
    assert len(openai_server.requests) == 3 and len(openai_backup.requests) == 1


async def test_no_retry_and_no_failover_on_a_bad_request(openai_server: FakeOpenAI, openai_backup: FakeOpenAI) -> None:
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"))
    openai_server.queue(Status(400, {"error": {"message": "unknown field"}}))
    with pytest.raises(BadRequest) as info:
        await collect(r)
    await r.aclose()
    assert len(openai_server.requests) == 1 and len(openai_backup.requests) == 0
    assert "route default tried: primary: BadRequest" in info.value.__notes__
    assert r.stats()["endpoints"][0]["failures"] == 0  # a bad request says nothing of the endpoint's health


async def test_authentication_failure_fails_over_without_retrying(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI
) -> None:
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"))
    openai_server.queue(Status(401), Status(403))
    _, final = await collect(r)
    assert final.text == "hello from the fake"
    assert len(openai_server.requests) == 1 and len(openai_backup.requests) == 1
    single = router(oa(openai_server.url, "primary"))
    with pytest.raises(AuthenticationFailed):
        await collect(single)
    await r.aclose()
    await single.aclose()


async def test_a_hung_endpoint_times_out_and_fails_over(openai_server: FakeOpenAI, openai_backup: FakeOpenAI) -> None:
    r = router(
        Endpoint(oa(openai_server.url, "primary"), timeout=0.3),
        oa(openai_backup.url, "backup"),
        retry=RetryPolicy(attempts=1),
    )
    openai_server.queue(Hang())
    started = time.monotonic()
    _, final = await collect(r)
    elapsed = time.monotonic() - started
    await r.aclose()
    assert final.text == "hello from the fake"
    assert 0.25 <= elapsed < 2.0
    assert r.stats()["endpoints"][0]["failures"] == 1


async def test_time_to_first_token(openai_server: FakeOpenAI, openai_backup: FakeOpenAI) -> None:
    r = router(
        Endpoint(oa(openai_server.url, "primary"), ttft_timeout=0.3),
        oa(openai_backup.url, "backup"),
        retry=RetryPolicy(attempts=1),
    )
    openai_server.queue(Hang(after_headers=True))  # headers at once, then silence
    _, final = await collect(r)
    assert final.text == "hello from the fake" and len(openai_backup.requests) == 1
    # A stream whose first token is quick may take longer than ttft_timeout in all.
    openai_server.queue(Reply("a b c d e f", chunk_delay=0.1))
    _, final = await collect(r)
    await r.aclose()
    assert final.text == "a b c d e f" and len(openai_backup.requests) == 1


async def test_total_deadline(openai_server: FakeOpenAI, openai_backup: FakeOpenAI) -> None:
    openai_server.default = Hang()
    openai_backup.default = Hang()
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await collect(r)
    elapsed = time.monotonic() - started
    await r.aclose()
    assert info.value.phase == "deadline"
    assert 0.45 <= elapsed < 2.0
    assert len(openai_backup.requests) == 0  # the first endpoint used the whole deadline


async def test_a_stream_broken_after_the_first_token_does_not_fail_over(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI
) -> None:
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"))
    openai_server.queue(Cut(after=2))
    seen = []
    with pytest.raises(StreamBroken) as info:
        async for item in r.stream(ask()):
            seen.append(item)
    await r.aclose()
    assert [d.text for d in seen] == ["one ", "two "]
    assert info.value.chunks == 2
    assert len(openai_server.requests) == 1 and len(openai_backup.requests) == 0
    stats = r.stats()
    assert stats["stream_broken"] == 1 and stats["failures"] == 1 and stats["endpoints"][0]["failures"] == 1


async def test_a_stream_cut_before_the_first_token_fails_over(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI
) -> None:
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"), retry=RetryPolicy(attempts=1))
    openai_server.queue(Cut(after=0))
    deltas, final = await collect(r)
    await r.aclose()
    assert final.text == "hello from the fake" and deltas == ["hello ", "from ", "the ", "fake"]
    assert len(openai_backup.requests) == 1


async def test_context_too_long_goes_to_the_context_fallback(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI
) -> None:
    async with FakeOpenAI(Reply("the long-context model")) as big:
        r = router(
            oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"), context_fallback=oa(big.url, "big")
        )
        openai_server.queue(CONTEXT_400)
        _, final = await collect(r)
        await r.aclose()
        assert final.text == "the long-context model"
        assert (len(openai_server.requests), len(openai_backup.requests), len(big.requests)) == (1, 0, 1)
        stats = r.stats()
        assert stats["context_fallbacks"] == 1 and stats["endpoints"][-1]["role"] == "context_fallback"

    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"))
    openai_server.queue(CONTEXT_400)
    with pytest.raises(ContextTooLong):
        await collect(r)
    await r.aclose()
    assert len(openai_backup.requests) == 0


async def test_a_dead_provider_opens_its_breaker_and_costs_one_fast_refusal(openai_backup: FakeOpenAI) -> None:
    clock = Clock()
    r = router(
        oa(closed_port_url(), "dead"),
        oa(openai_backup.url, "backup"),
        retry=RetryPolicy(attempts=1),
        breaker=BreakerPolicy(min_calls=3, window=10, failure_rate=0.5, cooldown=30),
        clock=clock,
    )
    for _ in range(3):
        await collect(r)
    dead = r.breaker("dead")
    assert dead.state is BreakerState.OPEN and dead.opened_total == 1
    assert r.stats()["endpoints"][0]["calls"] == 3

    started = time.monotonic()
    _, final = await collect(r)
    assert time.monotonic() - started < 0.5
    assert final.text == "hello from the fake"
    snap = r.stats()["endpoints"][0]
    assert snap["calls"] == 3 and snap["short_circuited"] == 1 and snap["state"] == "open"
    assert snap["retry_after"] == pytest.approx(30, abs=0.01)

    clock.now += 31  # cooldown over: one probe goes through, fails, and the breaker reopens
    assert dead.state is BreakerState.HALF_OPEN
    await collect(r)
    assert dead.state is BreakerState.OPEN and dead.opened_total == 2
    assert r.stats()["endpoints"][0]["calls"] == 4
    await r.aclose()
    states = [(a.value, b.value) for _, a, b in dead.transitions]
    assert states == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


async def test_a_recovered_provider_closes_its_breaker_after_a_probe(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI
) -> None:
    clock = Clock()
    r = router(
        oa(openai_server.url, "flaky"),
        oa(openai_backup.url, "backup"),
        retry=RetryPolicy(attempts=1),
        breaker=BreakerPolicy(min_calls=2, failure_rate=0.5, cooldown=10),
        clock=clock,
    )
    openai_server.queue(Status(503), Status(503))
    await collect(r)
    await collect(r)
    assert r.breaker(0).state is BreakerState.OPEN
    await collect(r)
    assert len(openai_server.requests) == 2  # refused without a request
    clock.now += 10
    openai_server.queue(Reply("i am back"))
    _, final = await collect(r)
    assert final.text == "i am back"
    assert r.breaker(0).state is BreakerState.CLOSED
    await r.aclose()


async def test_every_endpoint_open_raises_circuit_open_with_retry_after(openai_server: FakeOpenAI) -> None:
    clock = Clock()
    r = router(
        oa(openai_server.url, "only"),
        retry=RetryPolicy(attempts=1),
        breaker=BreakerPolicy(min_calls=1, cooldown=20),
        clock=clock,
    )
    openai_server.queue(Status(500))
    with pytest.raises(ProviderUnavailable):
        await collect(r)
    clock.now += 5
    with pytest.raises(CircuitOpen) as info:
        await collect(r)
    await r.aclose()
    assert info.value.retry_after == pytest.approx(15)
    assert len(openai_server.requests) == 1


async def test_the_repeat_guard_is_off_by_default_and_stops_a_stuck_stream(openai_server: FakeOpenAI) -> None:
    r = router(oa(openai_server.url, "primary"))
    openai_server.queue(Repeat("again ", times=60))
    deltas, _ = await collect(r)
    assert len(deltas) == 60
    guarded = router(oa(openai_server.url, "primary"), max_repeated_chunks=20)
    openai_server.queue(Repeat("again ", times=60))
    with pytest.raises(StreamBroken, match="repeated 20 times"):
        await collect(guarded)
    await r.aclose()
    await guarded.aclose()


async def test_a_cancelled_probe_gives_its_slot_back(openai_server: FakeOpenAI) -> None:
    clock = Clock()
    r = router(
        oa(openai_server.url, "only"),
        retry=RetryPolicy(attempts=1),
        breaker=BreakerPolicy(min_calls=1, cooldown=5),
        clock=clock,
    )
    openai_server.queue(Status(500), Hang())
    with pytest.raises(ProviderUnavailable):
        await collect(r)
    clock.now += 5
    task = asyncio.create_task(collect(r))
    while len(openai_server.requests) < 2:
        await asyncio.sleep(0.01)
    assert r.breaker(0).acquire() is None  # the one probe is in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.breaker(0).state is BreakerState.HALF_OPEN
    assert r.breaker(0).acquire() is True  # the cancelled call was no verdict
    await r.aclose()


async def test_in_process_models_fail_over_too() -> None:
    r = Router(
        "default",
        [SimModel(error_rate=1.0, name="broken"), SimModel(replies=["ok"], name="fine")],
        retry=RetryPolicy(attempts=2, base_delay=0),
    )
    _, final = await collect(r)
    assert final.text == "ok" and r.stats()["retries"] == 1


def test_breaker_window_min_calls_and_probes() -> None:
    clock = Clock()
    b = CircuitBreaker(
        BreakerPolicy(failure_rate=0.5, window=4, window_seconds=10, min_calls=4, cooldown=5, half_open_probes=2),
        clock=clock,
    )
    for ok in (False, False, False):
        b.record(ok, b.acquire() or False)
    assert b.state is BreakerState.CLOSED  # under min_calls
    clock.now += 11  # those three are now outside the window
    for ok in (True, True, False):
        b.record(ok, False)
    assert b.failure_rate() == 0.0  # 3 recent calls < min_calls
    b.record(False, False)
    assert b.failure_rate() == 0.5 and b.state is BreakerState.OPEN
    assert b.acquire() is None and b.short_circuited == 1
    clock.now += 5
    first, second, third = b.acquire(), b.acquire(), b.acquire()
    assert (first, second, third) == (True, True, None)
    b.record(True, True)
    assert b.state is BreakerState.HALF_OPEN  # needs both probes to succeed
    b.release(True)
    assert b.acquire() is True
    b.record(True, True)
    assert b.state is BreakerState.CLOSED and b.failure_rate() == 0.0


def test_policies_validate() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        BreakerPolicy(failure_rate=0)
    with pytest.raises(ConfigError):
        Router("x", [])
    rng = random.Random(1)
    policy = RetryPolicy(base_delay=1, max_delay=3)
    assert all(0 <= policy.backoff(5, rng) <= 3 for _ in range(100))


# through the runner ------------------------------------------------------------------------
async def test_a_run_survives_a_provider_outage_and_the_key_stays_out_of_the_journal(
    openai_server: FakeOpenAI, openai_backup: FakeOpenAI, sqlite_url: str
) -> None:
    openai_server.default = Status(503, {"error": {"message": f"down, key {KEY}"}})
    openai_backup.queue(Reply("all good"))
    r = router(oa(openai_server.url, "primary"), oa(openai_backup.url, "backup"))
    app = App([Agent("helper", "be helpful")], models={"default": r}, database_url=sqlite_url)
    async with app:
        result = await app.run("helper", "hello")
        assert result.ok, result.error
        assert result.output["answer"] == "all good"
        recorded = repr(await app.steps(result.run_id)) + repr(await app.events(result.run_id))
    assert KEY not in recorded and "all good" in recorded


async def test_a_stream_broken_mid_way_fails_the_step_cleanly(openai_server: FakeOpenAI, sqlite_url: str) -> None:
    openai_server.queue(Cut(after=2))
    r = router(oa(openai_server.url, "primary"))
    app = App([Agent("helper", "be helpful")], models={"default": r}, database_url=sqlite_url)
    async with app:
        result = await app.run("helper", "hello")
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error["error_type"] == "StreamBroken"
    assert result.error["step"].endswith(" chat:default")  # the failed step is named


async def test_loading_a_route_loads_every_endpoint_and_the_context_fallback(tmp_path) -> None:
    """What readiness waits for: a failover to an embedded model must not find its weights missing."""
    from corral.errors import ConfigError
    from corral.models.llamacpp import LlamaCppModel

    missing = tmp_path / "missing.gguf"
    for r in (
        Router("r", [SimModel(), LlamaCppModel(missing)]),
        Router("r", [SimModel()], context_fallback=LlamaCppModel(missing)),
    ):
        with pytest.raises(ConfigError, match="no model file"):
            await r.load()
    await Router("r", [SimModel(), SimModel()]).load()  # nothing local: nothing to do
    app = App([Agent("a")], models={"default": Router("default", [LlamaCppModel(missing)])})
    with pytest.raises(ConfigError, match="no model file"):
        await app.load_models()
