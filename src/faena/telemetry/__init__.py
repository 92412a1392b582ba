"""faena.telemetry: Prometheus metrics from domain events, and traces from a run's event log.

Names resolve lazily, so ``import faena.telemetry`` does not load prometheus_client (~0.1 s)
on paths that only want traces.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faena.telemetry.asgi import RequestMetrics
    from faena.telemetry.metrics import Metrics, MetricsRecorder
    from faena.telemetry.traces import build_trace, trace_id_for, traceparent_for

__all__ = [
    "Metrics",
    "MetricsRecorder",
    "RequestMetrics",
    "build_trace",
    "trace_id_for",
    "traceparent_for",
]

_HOME = {
    "Metrics": "faena.telemetry.metrics",
    "MetricsRecorder": "faena.telemetry.metrics",
    "RequestMetrics": "faena.telemetry.asgi",
    "build_trace": "faena.telemetry.traces",
    "trace_id_for": "faena.telemetry.traces",
    "traceparent_for": "faena.telemetry.traces",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'faena.telemetry' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
