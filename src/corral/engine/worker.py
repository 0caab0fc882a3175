"""The worker: claims runs under leases, executes them with bounded concurrency, renews its
leases on a heartbeat, and drains gracefully when told to stop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .._aio import woken
from ..errors import StoreError
from ..store.base import Claim
from .orphans import dead_owners, host_prefix, worker_identity
from .runner import Outcome, Runner

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("corral.worker")


def new_worker_id() -> str:
    # Unique per process start: recovery never waits for a name to come back.
    return worker_identity()


class Worker:
    """Claims and executes runs of the app's agents, `concurrency` at a time.

    `await worker.run()` works until `worker.stop()` (or the given event) and then drains: no new
    claims, in-flight steps get `drain_grace` seconds to finish, then every lease is released so
    another worker resumes the runs at once. `burst=True` returns when nothing is left to do.
    """

    def __init__(
        self, app: App, *, concurrency: int | None = None, worker_id: str | None = None, only: str | None = None
    ) -> None:
        self.app = app
        self.only = only  # drive just this run, and return when it has ended
        self.concurrency = concurrency or app.settings.concurrency
        self.id = worker_id or new_worker_id()
        self.active: dict[str, Runner] = {}
        self._tasks: dict[str, asyncio.Task[Outcome | None]] = {}
        self._signal = asyncio.Event()
        self._backlog = False  # more runs may be runnable than the last claim took
        self._stopping = asyncio.Event()
        self._check_now = asyncio.Event()
        self._cancels = 0  # cancel notifications seen: one during a claim is checked after it
        self.completed = 0

    def stop(self) -> None:
        """Stop claiming and drain (safe to call from a signal handler on the loop)."""
        self._stopping.set()
        self._signal.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _on_store(self, topic: str) -> None:
        if topic == "cancel":
            self._cancels += 1
            self._check_now.set()  # a run this worker holds may have been cancelled elsewhere
        self._signal.set()

    async def run(self, *, burst: bool = False) -> None:
        app = self.app
        await app.open()
        settings = app.settings
        agents = app.agent_names()
        store = app.store
        store.subscribe(self._on_store)
        await self._reclaim_orphans()
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"corral-heartbeat-{self.id}")
        delay = settings.poll_interval
        try:
            while not self._stopping.is_set():
                claimed = 0
                free = self.concurrency - len(self.active)
                if free <= 0:
                    self._backlog = True  # woken while full: a slot that frees up should look
                else:
                    cancels_before = self._cancels
                    requested = min(free, 64)
                    try:
                        claims = await store.claim_runs(
                            self.id, requested, agents, settings.lease_seconds, time.time(), self.only
                        )
                    except StoreError as exc:
                        log.warning("claim failed, will retry: %s", exc)
                        claims = []
                    for claim in claims:
                        self._start(claim)
                    claimed = len(claims)
                    # Fewer than asked: nothing more was runnable. Only news (a submit, a wake-up,
                    # a freed slot while work waits) or the idle poll makes the next claim.
                    self._backlog = claimed == requested
                    if claims and self._cancels != cancels_before:
                        # A cancel may have landed after the claim read the run and before its
                        # runner was registered: look at the flags now, not at the next heartbeat.
                        self._check_now.set()
                if burst and not claimed and not self.active:
                    return
                if self.only is not None and not claimed and not self.active:
                    run = await store.get_run(self.only)
                    if run.status.terminal:
                        return
                    if run.wake_at is not None:  # parked: look again when it is due
                        delay = min(max(run.wake_at - time.time(), 0.001), settings.poll_max)
                if self._backlog and len(self.active) < self.concurrency:
                    delay = settings.poll_interval
                    continue
                self._signal.clear()
                if await woken(self._signal, delay):
                    delay = settings.poll_interval
                else:
                    delay = min(delay * 2, settings.poll_max)
        finally:
            store.unsubscribe(self._on_store)
            await self._drain(settings.drain_grace)
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    def _start(self, claim: Claim) -> None:
        runner = Runner(self.app, claim)
        rid = claim.run.id
        if (old := self.active.get(rid)) is not None:
            # This worker's own earlier attempt, whose lease expired while it was too busy to renew
            # it (an overload): the claim fenced it out; the new attempt takes its slot.
            old.stop("lease_lost")
        self.active[rid] = runner
        self.app._runners[rid] = runner
        self._tasks[rid] = asyncio.create_task(self._execute(runner), name=f"corral-runner-{rid}")

    async def _execute(self, runner: Runner) -> Outcome | None:
        rid = runner.run.id
        outcome = None
        try:
            outcome = await runner.execute()
            return outcome
        except Exception:
            log.exception("run %s: the runner failed; its lease will expire and another attempt resumes it", rid)
            return None
        finally:
            # Only this attempt's own entries: a later attempt of the run may hold the slot now.
            if self.active.get(rid) is runner:
                del self.active[rid]
            if self._tasks.get(rid) is asyncio.current_task():
                del self._tasks[rid]
            if self.app._runners.get(rid) is runner:
                del self.app._runners[rid]
            if outcome is Outcome.FINISHED:
                self.completed += 1
            self.app.bus.poke(rid)
            if self._backlog or not self.active:  # runs wait for this slot, or an idle worker may stop
                self._signal.set()

    async def _heartbeat(self) -> None:
        settings = self.app.settings
        interval = settings.lease_seconds / 3
        next_prune = time.monotonic() + settings.prune_interval / 10  # soon after start, then periodically
        while True:
            await woken(self._check_now, interval)
            self._check_now.clear()
            if self.only is None:
                await self._reclaim_orphans()
            if settings.prune_interval and time.monotonic() >= next_prune and self.only is None:
                next_prune = time.monotonic() + settings.prune_interval
                await self._prune()
            if not self.active:
                continue
            runners = list(self.active.values())
            try:
                renewal = await self.app.store.renew_leases(
                    self.id,
                    [r.fence for r in runners],
                    settings.lease_seconds,
                    time.time(),
                    {r.run.id: r.time_used() for r in runners},
                )
            except StoreError as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            for rid in renewal.lost:
                if (r := self.active.get(rid)) is not None:
                    log.warning("run %s: lease lost (another worker owns it now); abandoning", rid)
                    r.stop("lease_lost")
            for rid in renewal.cancel_requested:
                if (r := self.active.get(rid)) is not None:
                    r.request_cancel()

    async def _reclaim_orphans(self) -> None:
        """End the leases of dead worker processes on this host (see engine.orphans)."""
        if not self.app.settings.reclaim_local_orphans:
            return
        try:
            owners = await self.app.store.lease_owners(host_prefix())
            dead = dead_owners(owners, self.id)
            if dead and (n := await self.app.store.expire_leases(dead, time.time())):
                log.info("took over %d run(s) from dead worker(s) on this host: %s", n, ", ".join(dead))
        except StoreError as exc:
            log.warning("looking for dead workers' runs failed: %s", exc)

    async def _prune(self) -> None:
        try:
            pruned = await self.app.store.prune(time.time() - self.app.settings.journal_retention_seconds)
        except StoreError as exc:
            log.warning("pruning failed: %s", exc)
            return
        if pruned:
            log.info("pruned the journals of %d finished run(s)", pruned)

    async def _drain(self, grace: float) -> None:
        if not self._tasks:
            return
        log.info("draining %d run(s), grace %.1fs", len(self._tasks), grace)
        for runner in list(self.active.values()):
            runner.request_drain()
        tasks = list(self._tasks.values())
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for runner in list(self.active.values()):
            runner.stop("drain")
        if pending:
            await asyncio.wait(pending, timeout=max(5.0, grace))
