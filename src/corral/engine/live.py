"""Run events through Redis, for watchers in other processes (optional: `redis_url`).

A runner hands every event to `LiveEvents.publish`, which only queues it: one writer task sends
what a loop tick queued in one pipeline, XADD to the run's stream (what a watcher arriving
mid-step reads to catch up; MAXLEN ~ max_events_per_run, and expiring once idle) and then
PUBLISH on the run's channel (live). A process whose watchers follow runs executed elsewhere
holds one pub/sub connection (`_Relay`): it SUBSCRIBEs per watched run while watchers come and
go, and puts what arrives into their queues.

Redis only ever holds a copy; the store is the source of truth. When Redis is away, the copy is
dropped (logged once, counted in `dropped`) and watchers read the store as they would without it.
A stream entry's id is `attempt-event_id`, so an attempt that lost its lease cannot add to the
stream once the next attempt has, and the relay drops what an older attempt still publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from .._json import dumps, loads
from ..errors import ConfigError, UserError
from ..store.base import Event

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from .events import Subscription

log = logging.getLogger("corral.live")

PREFIX = "corral:"
_TIMEOUT = 2.0  # connecting, and any one command: an unreachable Redis must not stall the runners
_QUEUED_MAX = 50_000  # events waiting for the writer; past it they are dropped (the store has them)
_IDLE_TTL = 600  # seconds a run's stream lives after its last event (the store has them all by then)
_ENDED_TTL = 60  # ... after its `end`
_PAGE = 256  # stream entries read at a time when catching up
_PING_SECONDS = 30.0  # a silent pub/sub connection is checked this often
_MAX_ID = (1 << 64) - 1


def stream_key(run_id: str) -> str:
    return f"{PREFIX}events:{run_id}"


def channel(run_id: str) -> str:
    return f"{PREFIX}live:{run_id}"


def _redact(url: str) -> str:
    from ..cli import redact_url

    return redact_url(url)


class _Outage:
    """Logs once when Redis goes away and once when it is back."""

    def __init__(self, url: str, what: str) -> None:
        self.url = _redact(url)
        self.what = what
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning("Redis at %s: %s; %s until it is back", self.url, str(exc) or type(exc).__name__, self.what)

    def recovered(self) -> None:
        if self.down:
            self.down = False
            log.info("Redis at %s is back", self.url)


class LiveEvents:
    """This process's link to Redis: the event writer, and the relay for remote runs."""

    def __init__(self, url: str, *, max_events: int) -> None:
        self.url = url
        self.max_events = max_events
        self.dropped = 0  # events not copied to Redis (it was away or the queue was full)
        self._client: Redis | None = None
        self._queued: list[tuple[int, Event]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._relay: _Relay | None = None
        self._outage = _Outage(url, "live events reach other processes through the store only")
        self._retry_at = 0.0

    async def open(self) -> None:
        """Connect and check that Redis answers, or raise ConfigError naming the URL."""
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError as exc:
            raise ConfigError(f"redis_url needs the redis package (pip install 'corral[redis]'): {exc}") from exc
        client = Redis.from_url(
            self.url,
            socket_connect_timeout=_TIMEOUT,
            socket_timeout=_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),  # a failure is handled here (dropped or reconnected), not retried
        )
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise ConfigError(f"cannot reach Redis at {_redact(self.url)} (redis_url): {exc}") from exc
        self._client = client
        self._writer = asyncio.create_task(self._write_loop(), name="corral-live-writer")

    async def close(self) -> None:
        tasks = [t for t in (self._writer, self._relay.reader if self._relay else None) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._queued and self._client is not None:  # what the last runs said, e.g. their `end`
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TIMEOUT):
                    await self._send(self._take())
        if self._relay is not None:
            await self._relay.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise UserError("the Redis link is not open")
        return self._client

    # writing -------------------------------------------------------------------------------
    def publish(self, event: Event, attempt: int) -> None:
        """Queue `event` for Redis; never waits (the runner calls it for every event)."""
        if len(self._queued) >= _QUEUED_MAX:
            self.dropped += 1
            return
        self._queued.append((attempt, event))
        self._wake.set()

    def _take(self) -> list[tuple[int, Event]]:
        batch, self._queued = self._queued, []
        return batch

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            try:
                await self._send(batch)
            except Exception:  # the writer outlives any one batch; the store has the events
                self.dropped += len(batch)
                log.exception("copying %d event(s) to Redis failed", len(batch))

    async def _send(self, batch: list[tuple[int, Event]]) -> None:
        from redis.exceptions import RedisError

        if not batch:
            return
        if self._outage.down and time.monotonic() < self._retry_at:
            self.dropped += len(batch)  # do not knock on every tick while Redis is away
            return
        pipe = self.client.pipeline(transaction=False)
        runs: dict[tuple[str, int], list[str]] = {}
        ended: set[str] = set()
        for attempt, e in batch:
            data = dumps(e.data)
            fields = {"t": e.type, "d": data}
            pipe.xadd(stream_key(e.run_id), fields, id=f"{attempt}-{e.id}", maxlen=self.max_events, approximate=True)
            runs.setdefault((e.run_id, attempt), []).append(f"[{e.id},{dumps(e.type)},{data}]")
            if e.type == "end":
                ended.add(e.run_id)
        # Published after the XADDs: a watcher that subscribed and then read the stream misses nothing.
        for (run_id, attempt), items in runs.items():
            pipe.publish(channel(run_id), f'{{"a":{attempt},"e":[{",".join(items)}]}}')
            pipe.expire(stream_key(run_id), _ENDED_TTL if run_id in ended else _IDLE_TTL)
        try:
            await pipe.execute(raise_on_error=False)  # an XADD under an older attempt's id fails alone
        except (RedisError, OSError) as exc:
            self.dropped += len(batch)
            self._retry_at = time.monotonic() + 1.0
            self._outage.failed(exc)
            return
        self._outage.recovered()

    # reading -------------------------------------------------------------------------------
    async def attach(self, sub: Subscription) -> None:
        """Put the run's live events into `sub`, from its subscription on; returns once Redis
        confirmed it (or failed: then the watcher reads the store)."""
        if self._relay is None:
            self._relay = _Relay(self.client, self.url)
        await self._relay.attach(sub)

    def detach(self, sub: Subscription) -> None:
        if self._relay is not None:
            self._relay.detach(sub)

    @property
    def relaying(self) -> bool:
        """Whether live events arrive from Redis now (if not, watchers look in the store more often)."""
        return self._relay is not None and not self._relay.outage.down

    async def missed(self, run_id: str, after: int) -> list[Event]:
        """The run's events after `after` still in its stream, from its latest attempt."""
        from redis.exceptions import RedisError

        if self._relay is not None and self._relay.outage.down:
            return []
        found: list[Event] = []
        top, end = None, "+"
        try:
            while True:
                entries = await self.client.xrevrange(stream_key(run_id), end, "-", count=_PAGE)
                for entry_id, fields in entries:
                    attempt, _, event_id = entry_id.partition(b"-")
                    top = top or attempt
                    if attempt != top or int(event_id) <= after:
                        return found[::-1]
                    found.append(Event(run_id, int(event_id), fields[b"t"].decode(), loads(fields[b"d"])))
                if len(entries) < _PAGE:
                    return found[::-1]
                end = f"({entries[-1][0].decode()}"
        except (RedisError, OSError) as exc:
            log.debug("reading the Redis stream of run %s: %s", run_id, exc)
            return []


class _Relay:
    """One pub/sub connection per process, subscribed to the runs its watchers follow."""

    def __init__(self, client: Redis, url: str) -> None:
        self.client = client
        self.outage = _Outage(url, "watchers of runs in other processes read the store")
        self.reader: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None
        self._subs: dict[str, set[Subscription]] = {}
        self._subscribed: dict[str, asyncio.Future[None]] = {}  # done once Redis confirmed
        self._attempts: dict[str, int] = {}
        self._lock = asyncio.Lock()  # orders the SUBSCRIBEs and UNSUBSCRIBEs of a run
        self._unsubscribing: set[asyncio.Task[None]] = set()

    async def attach(self, sub: Subscription) -> None:
        from redis.exceptions import RedisError

        run_id = sub.run_id
        self._subs.setdefault(run_id, set()).add(sub)
        if self.outage.down:
            self._start_reader()  # it subscribes the run once Redis is back, and pokes the watcher
            return
        try:
            async with self._lock:
                confirmed = self._subscribed.get(run_id)
                if confirmed is None:
                    confirmed = self._subscribed[run_id] = asyncio.get_running_loop().create_future()
                    if self._pubsub is None:
                        self._pubsub = self.client.pubsub()
                    await self._pubsub.subscribe(channel(run_id))
                    self._start_reader()  # it reads the confirmation
            async with asyncio.timeout(_TIMEOUT):
                await asyncio.shield(confirmed)
        except (RedisError, OSError, TimeoutError) as exc:
            self.outage.failed(exc)
            self._start_reader()  # it reconnects

    def detach(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.run_id]
            try:
                task = asyncio.get_running_loop().create_task(self._unsubscribe(sub.run_id))
            except RuntimeError:  # no loop any more (shutting down): the connection goes with it
                return
            self._unsubscribing.add(task)
            task.add_done_callback(self._unsubscribing.discard)

    async def _unsubscribe(self, run_id: str) -> None:
        from redis.exceptions import RedisError

        async with self._lock:
            if run_id in self._subs or self._subscribed.pop(run_id, None) is None:
                return  # watched again meanwhile, or never subscribed
            self._attempts.pop(run_id, None)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):  # the reader finds the connection broken
                    await self._pubsub.unsubscribe(channel(run_id))

    async def close(self) -> None:
        for task in list(self._unsubscribing):
            task.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):  # closing: nobody is left to tell
                await self._pubsub.aclose()

    def _start_reader(self) -> None:
        if self.reader is None:
            self.reader = asyncio.create_task(self._read(), name="corral-live-relay")

    async def _read(self) -> None:
        from redis.exceptions import RedisError

        delay, pinged, broken = 0.1, False, self.outage.down or self._pubsub is None
        while True:
            if broken:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if not await self._reconnect():
                    return  # nobody to relay to; the next watcher starts a reader again
                broken = False
            try:
                assert self._pubsub is not None
                message = await self._pubsub.get_message(timeout=_PING_SECONDS)
                if message is None:
                    if pinged:
                        raise TimeoutError(f"no answer to a ping within {_PING_SECONDS}s")
                    await self._pubsub.ping()
                    pinged = True
                    continue
            # RuntimeError: redis-py has no connection to read from (the SUBSCRIBE never got through).
            except (RedisError, OSError, TimeoutError, RuntimeError) as exc:
                self.outage.failed(exc)
                self._poke_all()  # what is published meanwhile is lost: read the store now
                broken = True
                continue
            pinged = False
            if self._dispatch(message):
                delay = 0.1

    async def _reconnect(self) -> bool:
        """A new connection subscribed to every watched run; False when none is watched."""
        from redis.exceptions import RedisError

        async with self._lock:
            old, self._pubsub = self._pubsub, None
            if old is not None:
                with contextlib.suppress(Exception):  # it is broken already
                    await old.aclose()
            loop = asyncio.get_running_loop()
            self._subscribed = {run_id: loop.create_future() for run_id in self._subs}
            if not self._subs:
                self.reader = None
                return False
            self._pubsub = self.client.pubsub()
            try:
                await self._pubsub.subscribe(*(channel(run_id) for run_id in self._subs))
            except (RedisError, OSError) as exc:
                self.outage.failed(exc)  # the next read fails too, and the reader tries again
            return True

    def _poke_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.put(None)

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Hand a message to the watchers; True when it came from a run's channel."""
        kind = message["type"]
        if kind not in ("message", "subscribe"):
            return False
        run_id = message["channel"].decode()[len(channel("")) :]
        if kind == "subscribe":
            confirmed = self._subscribed.get(run_id)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            if self.outage.down:  # subscribed again after an outage: catch up from the store
                self.outage.recovered()
                self._poke_all()
            return True
        payload = loads(message["data"])
        attempt = int(payload["a"])
        if attempt < self._attempts.get(run_id, 0):
            return True  # an attempt that lost its lease, still talking
        self._attempts[run_id] = attempt
        events = [Event(run_id, int(i), str(t), d) for i, t, d in payload["e"]]
        for sub in self._subs.get(run_id, ()):
            for event in events:
                sub.put(event)
        return True


__all__ = ["PREFIX", "LiveEvents", "channel", "stream_key"]
