"""Prometheus metrics with the seed names and labels (communication_architecture.md, Tabla 24).

``Metrics`` owns its own registry, so several systems (tests, replicas in one process) never
share series. ``MetricsRecorder`` derives most of them from domain events on the bus. Ids
(run, job, step) are never labels: they ride in exemplars, shown by the OpenMetrics format.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from faena.bus.port import DLQ_PREFIX, EventBus, Subscription
from faena.domain.events import CATALOGUE, Event
from faena.telemetry.traces import trace_id_for

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
DEFAULT_POOL = "default"
UNMATCHED_ROUTE = "unmatched"

# Millisecond buckets. Jobs, steps and queue waits go from milliseconds to hours; worker
# creation from a fork (local) to an image pull (pods); API calls should stay well under 1 s.
LONG_MS = (
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
    30_000.0, 60_000.0, 120_000.0, 300_000.0, 600_000.0, 1_800_000.0, 3_600_000.0,
)  # fmt: skip
WORKER_MS = (
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
    30_000.0, 60_000.0, 120_000.0,
)  # fmt: skip
API_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 400.0, 1_000.0, 2_500.0, 10_000.0)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_EXEMPLAR_MAX = 128  # OpenMetrics: label names and values of one exemplar, in characters


class _QueueDepth(Collector):
    """``tel_queue_depth{subject}``, read at scrape time from the bus adapter's sources."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Mapping[str, int]]] = []

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tel_queue_depth",
            "Events waiting in the bus to be delivered, by subject (or subscription pattern).",
            labels=["subject"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        totals: dict[str, int] = {}
        for source in self.sources:
            try:
                depths = source()
            except Exception:  # a scrape must not fail because one source did
                log.warning("queue depth source failed", exc_info=True)
                continue
            for subject, depth in depths.items():
                totals[subject] = totals.get(subject, 0) + int(depth)
        for subject, depth in sorted(totals.items()):
            family.add_metric([subject], depth)
        return [family]


class _BreakerState(Collector):
    """``wkm_breaker_state{provider}``, read at scrape time from the providers' breakers."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Mapping[str, int]]] = []

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "wkm_breaker_state",
            "Circuit breaker of each worker provider: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        states: dict[str, int] = {}
        for source in self.sources:
            try:
                states.update(source())
            except Exception:  # a scrape must not fail because one source did
                log.warning("breaker state source failed", exc_info=True)
        for provider, state in sorted(states.items()):
            family.add_metric([provider], int(state))
        return [family]


class Metrics:
    """faena's metric families on a private registry; ``render`` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Orchestrator.
        self.orc_job_latency_ms = Histogram(
            "orc_job_latency_ms",
            "Job attempt latency as orchestrated: JobRequested to the attempt's end, queue "
            "wait included (ms).",
            ["tenant", "job_kind"],
            buckets=LONG_MS,
            registry=r,
        )
        self.orc_job_duration_ms = Histogram(
            "orc_job_duration_ms",
            "Job attempt run time: JobStarted to the attempt's end (ms).",
            ["tenant", "job_kind", "result"],
            buckets=LONG_MS,
            registry=r,
        )
        self.orc_jobs = Counter(
            "orc_jobs",
            "Job attempts ended, by result (success, failure, retry, cancelled, skipped).",
            ["tenant", "result"],
            registry=r,
        )
        self.orc_run_duration_ms = Histogram(
            "orc_run_duration_ms",
            "Pipeline run attempt duration: requested (or retry requested) to its end (ms).",
            ["tenant", "result"],
            buckets=LONG_MS,
            registry=r,
        )
        self.orc_runs = Counter(
            "orc_runs", "Pipeline runs ended, by result.", ["tenant", "result"], registry=r
        )
        # Scheduler.
        self.sch_assignment_ms = Histogram(
            "sch_assignment_ms",
            "Time a job attempt waits for a placement: JobRequested (or its not_before) to "
            "AssignmentCreated (ms).",
            ["policy", "pool"],
            buckets=LONG_MS,
            registry=r,
        )
        self.sch_queue_depth = Gauge(
            "sch_queue_depth",
            "Job attempts requested and not yet placed.",
            ["pool", "tenant"],
            registry=r,
        )
        # Worker manager.
        self.wkm_create_worker_ms = Histogram(
            "wkm_create_worker_ms",
            "Time to get an ephemeral worker: JobStarted to WorkerCreated (ms).",
            ["provider", "namespace"],
            buckets=WORKER_MS,
            registry=r,
        )
        self.wkm_worker_failures = Counter(
            "wkm_worker_failures",
            "Workers a provider could not create or that were lost, by error code.",
            ["error_code"],
            registry=r,
        )
        self.wkm_provider_call_failures = Counter(
            "wkm_provider_call_failures",
            "Provider calls (each attempt) that failed or timed out, by provider and "
            "operation (create, exec, cancel, destroy).",
            ["provider", "operation"],
            registry=r,
        )
        self._breaker_state = _BreakerState()
        r.register(self._breaker_state)
        # Execution.
        self.exec_step_duration_ms = Histogram(
            "exec_step_duration_ms",
            "Step attempt duration as measured by the agent (ms).",
            ["step_type"],
            buckets=LONG_MS,
            registry=r,
        )
        self.exec_steps = Counter(
            "exec_steps",
            "Step attempts ended, by result (success, failure, cancelled, skipped).",
            ["step_type", "result"],
            registry=r,
        )
        # Telemetry (the bus) and the API.
        self.tel_events = Counter(
            "tel_events",
            "Domain events seen on the bus by the metrics consumer, by subject.",
            ["subject"],
            registry=r,
        )
        self._queue_depth = _QueueDepth()
        r.register(self._queue_depth)
        self.api_request_latency_ms = Histogram(
            "api_request_latency_ms",
            "HTTP API latency to the response headers, by route template and status (ms).",
            ["method", "route", "status"],
            buckets=API_MS,
            registry=r,
        )
        self.ui_latency_ms = Histogram(
            "ui_latency_ms",
            "Console (/api/v1/ui/*) latency to the response headers (ms).",
            ["endpoint", "tenant"],
            buckets=API_MS,
            registry=r,
        )

    def add_queue_source(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Report ``tel_queue_depth``: ``source()`` maps subject to pending events at scrape."""
        self._queue_depth.sources.append(source)

    def add_breaker_source(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Report ``wkm_breaker_state``: ``source()`` maps provider name to its breaker's
        state (0 closed, 1 half-open, 2 open) at scrape time."""
        self._breaker_state.sources.append(source)

    def provider_call_failed(self, provider: str, operation: str) -> None:
        """One failed provider call attempt (a ``resilient.CallObserver``)."""
        self.wkm_provider_call_failures.labels(provider, operation).inc()

    def observe_request(self, method: str, route: str, status: int, ms: float) -> None:
        """One HTTP request; ``route`` must be a template, never a raw path."""
        method = method.upper() if method.upper() in _METHODS else "OTHER"
        self.api_request_latency_ms.labels(method, route, str(status)).observe(max(ms, 0.0))

    def observe_ui(self, endpoint: str, tenant: str, ms: float) -> None:
        self.ui_latency_ms.labels(endpoint, tenant).observe(max(ms, 0.0))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type: Prometheus text, or OpenMetrics (with
        exemplars) when ``accept`` asks for it."""
        if accept and "application/openmetrics-text" in accept:
            from prometheus_client.openmetrics.exposition import generate_latest as om_latest

            body: bytes = om_latest(self.registry)  # type: ignore[no-untyped-call]
            return body, OPENMETRICS_CONTENT_TYPE
        from prometheus_client import generate_latest

        return generate_latest(self.registry), TEXT_CONTENT_TYPE


def exemplar(run_id: str, job_id: str | None = None) -> dict[str, str] | None:
    """Exemplar labels linking a sample to its trace; None when they would be too long."""
    labels = {"trace_id": trace_id_for(run_id)}
    if job_id:
        labels["job_id"] = job_id
    size = sum(len(k) + len(v) for k, v in labels.items())
    return labels if size <= _EXEMPLAR_MAX else None


@dataclass
class _Queued:
    since: float
    pool: str
    tenant: str


@dataclass
class _Attempt:
    attempt: int
    requested_at: float
    tenant: str
    started_at: float | None = None
    worker_asked_at: float | None = None


_JOB_END = {
    "ci.job.v1.completed": "success",
    "ci.job.v1.failed": "failure",
    "ci.job.v1.cancelled": "cancelled",
    "ci.job.v1.skipped": "skipped",
}
_RUN_END = {
    "ci.run.v1.completed": "success",
    "ci.run.v1.failed": "failure",
    "ci.run.v1.cancelled": "cancelled",
}


class MetricsRecorder:
    """Updates ``Metrics`` from domain events (durable consumer ``metrics`` on ``ci.>``).

    Durations pair a start event with an end event of the same job or run, so it keeps the
    open ones only, dropped when they end (and capped, in case an end never arrives).
    """

    def __init__(
        self,
        metrics: Metrics,
        bus: EventBus | None = None,
        *,
        durable: str = "metrics",
        max_open: int = 100_000,
        inbox_size: int = 20_000,
        matrix_runs: int = 4_096,
    ) -> None:
        self.metrics = metrics
        self._bus = bus
        self._durable = durable
        self._max_open = max_open
        self._inbox_size = inbox_size
        self._matrix_runs = matrix_runs
        self._sub: Subscription | None = None
        self._inbox: OrderedDict[str, None] = OrderedDict()
        self._queued: dict[str, _Queued] = {}
        self._depth: dict[tuple[str, str], int] = {}
        self._jobs: dict[str, _Attempt] = {}
        self._runs: dict[str, float] = {}
        # Matrix job ids of recent runs, for ``job_kind``; kept past a run's end because a
        # retry re-requests its jobs.
        self._matrix: OrderedDict[str, set[str]] = OrderedDict()

    async def start(self) -> None:
        """Subscribe; start before the outbox relay so no event is missed."""
        if self._bus is None:
            raise RuntimeError("MetricsRecorder was built without a bus")
        # Counters and gauges do not care in which order a batch of events arrives.
        self._sub = await self._bus.subscribe(
            "ci.>", self.handle, durable=self._durable, ordered=False
        )

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def handle(self, event: Event) -> None:
        """The bus handler: never raises, since a redelivery would not fix a metric."""
        try:
            self.observe(event)
        except Exception:
            log.warning("metrics: could not record %s", event.subject, exc_info=True)

    @property
    def open_entries(self) -> int:
        """How much pairing state is held (for tests and the curious)."""
        return len(self._queued) + len(self._jobs) + len(self._runs)

    def observe(self, event: Event) -> None:
        """Record one event; a duplicate delivery (same event id) is ignored."""
        if event.event_id in self._inbox:
            return
        self._inbox[event.event_id] = None
        if len(self._inbox) > self._inbox_size:
            self._inbox.popitem(last=False)
        self.metrics.tel_events.labels(_subject_label(event.subject)).inc()
        handler = _HANDLERS.get(event.subject)
        if handler is not None:
            handler(self, event)

    # -- runs ----------------------------------------------------------------------------

    def _run_requested(self, e: Event) -> None:
        self._open(self._runs, e.correlation_id, e.occurred_at)
        self._note_matrix(e.correlation_id, e.payload.get("jobs", []))

    def _run_retry(self, e: Event) -> None:
        self._open(self._runs, e.correlation_id, e.occurred_at)

    def _run_end(self, e: Event) -> None:
        result = _RUN_END[e.subject]
        m = self.metrics
        m.orc_runs.labels(e.tenant_id, result).inc()
        started = self._runs.pop(e.correlation_id, None)
        if started is not None:
            ms = _ms(started, e.occurred_at)
            m.orc_run_duration_ms.labels(e.tenant_id, result).observe(
                ms, exemplar(e.correlation_id)
            )
        # Whatever of this run is still open missed its end event: forget it.
        prefix = e.correlation_id + "."
        for job_id in [j for j in self._jobs if j.startswith(prefix)]:
            del self._jobs[job_id]
        for job_id in [j for j in self._queued if j.startswith(prefix)]:
            self._dequeue(job_id)

    def _job_expanded(self, e: Event) -> None:
        self._note_matrix(e.correlation_id, e.payload.get("jobs", []))

    def _note_matrix(self, run_id: str, jobs: list[dict[str, Any]]) -> None:
        ids = {j["job_id"] for j in jobs if isinstance(j, dict) and j.get("template")}
        if not ids:
            return
        self._matrix.setdefault(run_id, set()).update(ids)
        self._matrix.move_to_end(run_id)
        while len(self._matrix) > self._matrix_runs:
            self._matrix.popitem(last=False)

    def _kind(self, run_id: str, job_id: str) -> str:
        return "matrix" if job_id in self._matrix.get(run_id, ()) else "job"

    # -- jobs and the scheduler ----------------------------------------------------------

    def _job_requested(self, e: Event) -> None:
        p = e.payload
        job_id = p["job_id"]
        attempt = _Attempt(int(p.get("attempt", 1)), e.occurred_at, e.tenant_id)
        self._open(self._jobs, job_id, attempt)
        self._dequeue(job_id)
        since = max(e.occurred_at, float(p.get("not_before") or 0.0))
        queued = _Queued(since, str(p.get("pool") or DEFAULT_POOL), e.tenant_id)
        self._open(self._queued, job_id, queued)
        self._count(queued, +1)

    def _assignment_created(self, e: Event) -> None:
        p = e.payload
        queued = self._dequeue(p["job_id"])
        if queued is None:
            return
        pool = str(p.get("pool") or queued.pool)
        ms = _ms(queued.since, e.occurred_at)
        self.metrics.sch_assignment_ms.labels(str(p.get("policy", "")), pool).observe(
            ms, exemplar(e.correlation_id, p["job_id"])
        )

    def _job_started(self, e: Event) -> None:
        job = self._jobs.get(e.payload["job_id"])
        if job is not None:
            job.started_at = job.worker_asked_at = e.occurred_at

    def _worker_created(self, e: Event) -> None:
        p = e.payload
        job = self._jobs.get(str(p.get("job_id", "")))
        if job is None or job.worker_asked_at is None:
            return
        spec = p.get("runtime_spec")
        namespace = str(spec.get("namespace", "")) if isinstance(spec, dict) else ""
        ms = _ms(job.worker_asked_at, e.occurred_at)
        job.worker_asked_at = None
        self.metrics.wkm_create_worker_ms.labels(str(p["provider_id"]), namespace).observe(
            ms, exemplar(e.correlation_id, p.get("job_id"))
        )

    def _worker_failed(self, e: Event) -> None:
        self.metrics.wkm_worker_failures.labels(str(e.payload.get("error_code", ""))).inc()
        job = self._jobs.get(str(e.payload.get("job_id", "")))
        if job is not None:
            job.worker_asked_at = None

    def _job_end(self, e: Event) -> None:
        p = e.payload
        job_id = p["job_id"]
        result = "retry" if p.get("will_retry") else _JOB_END[e.subject]
        m = self.metrics
        m.orc_jobs.labels(e.tenant_id, result).inc()
        self._dequeue(job_id)
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        kind = self._kind(e.correlation_id, job_id)
        ex = exemplar(e.correlation_id, job_id)
        m.orc_job_latency_ms.labels(job.tenant, kind).observe(
            _ms(job.requested_at, e.occurred_at), ex
        )
        if job.started_at is not None:
            m.orc_job_duration_ms.labels(job.tenant, kind, result).observe(
                _ms(job.started_at, e.occurred_at), ex
            )

    # -- steps ---------------------------------------------------------------------------

    def _step_end(self, e: Event) -> None:
        p = e.payload
        step_type = str(p.get("step_type") or "run")
        if e.subject == "ci.step.v1.completed":
            result = "success"
        elif e.subject == "ci.step.v1.skipped":
            result = "skipped"
        else:
            result = "cancelled" if p.get("cancelled") else "failure"
        self.metrics.exec_steps.labels(step_type, result).inc()
        duration = p.get("duration_ms")
        if result != "skipped" and isinstance(duration, int | float):
            self.metrics.exec_step_duration_ms.labels(step_type).observe(
                max(float(duration), 0.0), exemplar(e.correlation_id, p.get("job_id"))
            )

    # -- bounded state -------------------------------------------------------------------

    def _open(self, table: dict[str, Any], key: str, value: Any) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > self._max_open:
            oldest = next(iter(table))
            if table is self._queued:
                self._dequeue(oldest)
            else:
                del table[oldest]

    def _dequeue(self, job_id: str) -> _Queued | None:
        queued = self._queued.pop(job_id, None)
        if queued is not None:
            self._count(queued, -1)
        return queued

    def _count(self, queued: _Queued, delta: int) -> None:
        key = (queued.pool, queued.tenant)
        depth = max(self._depth.get(key, 0) + delta, 0)
        self._depth[key] = depth
        self.metrics.sch_queue_depth.labels(*key).set(depth)


_HANDLERS: dict[str, Callable[[MetricsRecorder, Event], None]] = {
    "ci.run.v1.requested": MetricsRecorder._run_requested,
    "ci.run.v1.retry_requested": MetricsRecorder._run_retry,
    **{subject: MetricsRecorder._run_end for subject in _RUN_END},
    "ci.job.v1.expanded": MetricsRecorder._job_expanded,
    "ci.job.v1.requested": MetricsRecorder._job_requested,
    "ci.assignment.v1.created": MetricsRecorder._assignment_created,
    "ci.job.v1.started": MetricsRecorder._job_started,
    "ci.worker.v1.created": MetricsRecorder._worker_created,
    "ci.worker.v1.failed": MetricsRecorder._worker_failed,
    **{subject: MetricsRecorder._job_end for subject in _JOB_END},
    "ci.step.v1.completed": MetricsRecorder._step_end,
    "ci.step.v1.failed": MetricsRecorder._step_end,
    "ci.step.v1.skipped": MetricsRecorder._step_end,
}


def _ms(start: float, end: float) -> float:
    return max((end - start) * 1000.0, 0.0)


def _subject_label(subject: str) -> str:
    """The subject itself when the catalogue knows it (bounded), ``other`` otherwise."""
    bare = subject.removeprefix(DLQ_PREFIX)
    return subject if bare in CATALOGUE else "other"
