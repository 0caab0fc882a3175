"""The app that tests/integration/test_live_events.py runs in `corral worker` and `corral serve`
processes: a chat agent whose model streams one word every 1/TOKENS_PER_SECOND seconds."""

from __future__ import annotations

from corral import Agent, App, Limits, SimModel

WORDS = 30
TOKENS_PER_SECOND = 10.0
REPLY = " ".join(f"w{i:02d}" for i in range(WORDS))
STREAM_SECONDS = (WORDS - 1) / TOKENS_PER_SECOND  # from the first word to the last

chat = Agent("chat", "You are terse.", limits=Limits(max_steps=5))

# Settings not set here (database_url, redis_url, poll_max...) come from the environment; the
# default poll_max (1 s) is kept on purpose: live tokens must not wait for the idle poll.
app = App(
    [chat],
    models={"default": SimModel(replies=[REPLY], tokens_per_second=TOKENS_PER_SECOND)},
    lease_seconds=2.0,
    poll_interval=0.01,
    sse_heartbeat_seconds=0.5,
)
