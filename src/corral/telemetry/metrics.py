"""Corral's Prometheus metrics: one registry per API process, filled from three sources.

- the store, read when scraped: runs by status, queue depth and the age of the oldest queued run
  (the same numbers the autoscaler reads from /corral/scaling);
- the events published in this process (a tap on the App's event bus): finished runs by status and
  step durations by kind, for the runs this process's workers execute;
- the API itself: event-stream clients, events streamed, admission rejections.

Names follow Prometheus conventions: the `corral_` prefix, base units, `_total` on counters and no
run or user ids as labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..store.base import Event

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metrics of one process; `render()` gives the exposition text."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.runs = Gauge("corral_runs", "Runs in the store by active status.", ["status"], registry=registry)
        self.queue_depth = Gauge("corral_queue_depth", "Runs queued for a worker.", registry=registry)
        self.queue_oldest_age = Gauge(
            "corral_queue_oldest_age_seconds", "Age of the oldest queued run.", registry=registry
        )
        self.active_runs = Gauge(
            "corral_worker_active_runs", "Runs this process's worker is executing now.", registry=registry
        )
        self.worker_slots = Gauge(
            "corral_worker_slots", "Runs this process's worker may execute at once.", registry=registry
        )
        self.runs_finished = Counter(
            "corral_runs_finished_total",
            "Runs ended by this process's workers, by status.",
            ["status"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "corral_step_duration_seconds",
            "Duration of executed (not replayed) steps, by kind.",
            ["kind"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.sse_clients = Gauge("corral_sse_clients", "Open event streams.", registry=registry)
        self.sse_events = Counter("corral_sse_events_total", "Server-sent events written.", registry=registry)
        self.admission_rejected = Counter(
            "corral_admission_rejected_total",
            "Runs refused with 429, by the cap that refused them.",
            ["cap"],
            registry=registry,
        )
        self._active: Callable[[], tuple[int, int]] | None = None

    def observe_event(self, event: Event) -> None:
        """The event-bus tap: cheap, never raises into the runner."""
        if event.type == "step":
            duration = event.data.get("duration")
            if isinstance(duration, int | float) and event.data.get("status") in ("completed", "failed"):
                self.step_duration.labels(str(event.data.get("kind"))).observe(float(duration))
        elif event.type == "end":
            self.runs_finished.labels(str(event.data.get("status"))).inc()

    def watch_worker(self, active: Callable[[], tuple[int, int]]) -> None:
        """Report the in-process worker's (active runs, slots) when scraped."""
        self._active = active

    def render(self, stats: Mapping[str, float]) -> bytes:
        for status in ("queued", "running", "waiting"):
            self.runs.labels(status).set(stats.get(status, 0.0))
        self.queue_depth.set(stats.get("queued", 0.0))
        self.queue_oldest_age.set(stats.get("oldest_queued_age_seconds", 0.0))
        active, slots = self._active() if self._active is not None else (0, 0)
        self.active_runs.set(active)
        self.worker_slots.set(slots)
        return generate_latest(self.registry)
