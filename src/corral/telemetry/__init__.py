"""Telemetry: Prometheus metrics (tracing and logging helpers join them here)."""

from .metrics import Metrics

__all__ = ["Metrics"]
