"""Traces rebuilt from a run's event log, in the OTLP/JSON shape (``resourceSpans``).

One trace per run: its id is derived from the run id, so every replica agrees on it (and a
producer can stamp events with ``traceparent_for``). The root span is the run; below it, one span
per job attempt, with ``schedule_job`` (queue wait) and ``create_worker`` children and one
span per step attempt (``run_step``: the span kinds of distributed_use_cases.md, Tabla 21).
Span names are the pipeline, job and step names people read in a waterfall; the attribute
``faena.span`` says what each span is. A pure function of the events: no clock unless
``now`` is given, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from faena import __version__
from faena.domain.events import Event

STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2
SPAN_KIND_INTERNAL = 1
SCOPE_NAME = "faena.telemetry.traces"

AttrValue = str | int | float | bool


def trace_id_for(run_id: str) -> str:
    """The run's trace id: 32 lowercase hex digits, the same wherever it is computed."""
    return _hex("run", run_id)[:32]


def span_id_for(run_id: str, *parts: object) -> str:
    """A span id (16 hex digits) for one element of a run, stable across rebuilds."""
    return _hex("span", run_id, *parts)[:16]


def traceparent_for(run_id: str, span_id: str | None = None) -> str:
    """A W3C ``traceparent`` placing a caller in the run's trace (under the root span)."""
    return f"00-{trace_id_for(run_id)}-{span_id or span_id_for(run_id, 'run')}-01"


def _hex(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class Span:
    """A span being built; ``end`` is None while it is open."""

    span_id: str
    parent_id: str
    name: str
    start: float
    end: float | None = None
    status: int = STATUS_UNSET
    message: str = ""
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    events: list[tuple[float, str, dict[str, AttrValue]]] = field(default_factory=list)

    def close(self, ts: float, status: int | None = None, message: str = "") -> None:
        """End the span; a span already ended keeps its end and status."""
        if self.end is not None:
            return
        self.end = ts
        if status is not None:
            self.status = status
        if message:
            self.message = message

    def set(self, **attrs: AttrValue | None) -> None:
        """Set ``faena.*`` attributes (``a__b`` names ``faena.a.b``); None is skipped."""
        for key, value in attrs.items():
            if value is not None:
                self.attributes["faena." + key.replace("__", ".")] = value


@dataclass
class _JobInfo:
    name: str
    key: str
    steps: list[str]


@dataclass
class _JobAttempt:
    span: Span
    attempt: int
    schedule: Span | None = None
    worker: Span | None = None
    steps: dict[tuple[int, int], Span] = field(default_factory=dict)


class _Builder:
    def __init__(self, run_id: str, first: Event) -> None:
        self.run_id = run_id
        self.trace_id = trace_id_for(run_id)
        self.tenant = first.tenant_id
        p = first.payload
        pipeline = str(p.get("pipeline", ""))
        self.root = Span(span_id_for(run_id, "run"), "", pipeline or run_id, first.occurred_at)
        self.root.set(span="pipeline_run", run__id=run_id, pipeline=pipeline,
                      tenant=first.tenant_id, spec_hash=p.get("spec_hash"),
                      run__attempt=1)  # fmt: skip
        self.spans: list[Span] = [self.root]
        self.info: dict[str, _JobInfo] = {}
        self.current: dict[str, _JobAttempt] = {}
        self.last = first.occurred_at
        self._add_jobs(p.get("jobs", []))

    def _add_jobs(self, jobs: Iterable[Any]) -> None:
        for j in jobs:
            if isinstance(j, dict) and "job_id" in j:
                steps = [str(s) for s in j.get("steps", [])]
                key = str(j.get("key", j["job_id"]))
                self.info[j["job_id"]] = _JobInfo(str(j.get("name", key)), key, steps)

    def _span(self, parent: Span, name: str, start: float, kind: str, *ids: object) -> Span:
        span = Span(span_id_for(self.run_id, kind, *ids), parent.span_id, name, start)
        span.set(span=kind)
        self.spans.append(span)
        return span

    def _attempt(self, job_id: str, attempt: int, ts: float) -> _JobAttempt:
        """The open span of a job attempt, opened here if no event opened it yet (a job
        skipped or cancelled before it was ever requested is a zero-length span)."""
        current = self.current.get(job_id)
        if current is not None and current.attempt == attempt and current.span.end is None:
            return current
        if current is not None:
            self._end_attempt(current, ts, None, f"superseded by attempt {attempt}")
        info = self.info.get(job_id) or _JobInfo(job_id, job_id, [])
        # A job skipped or cancelled again after a run retry keeps its attempt number: the
        # count of spans so far keeps the new span's id apart, and stable as the log grows.
        again = () if current is None or current.attempt != attempt else (len(self.spans),)
        span = self._span(self.root, info.name, ts, "job_run", job_id, attempt, *again)
        span.set(job__id=job_id, job__name=info.name, job__key=info.key, job__attempt=attempt)
        current = _JobAttempt(span, attempt)
        self.current[job_id] = current
        return current

    def _latest(self, job_id: str, ts: float) -> _JobAttempt:
        current = self.current.get(job_id)
        return current if current is not None else self._attempt(job_id, 0, ts)

    def _end_attempt(self, a: _JobAttempt, ts: float, status: int | None, message: str) -> None:
        for child in (a.schedule, a.worker, *a.steps.values()):
            if child is not None and child.end is None:
                child.close(ts, message="ended with its job")
        a.span.close(ts, status, message)

    # -- events --------------------------------------------------------------------------

    def apply(self, e: Event) -> None:
        self.last = max(self.last, e.occurred_at)
        handler = _HANDLERS.get(e.subject)
        if handler is not None:
            handler(self, e, e.payload, e.occurred_at)

    def run_end(self, e: Event, p: dict[str, Any], ts: float) -> None:
        status = {"ci.run.v1.completed": STATUS_OK, "ci.run.v1.failed": STATUS_ERROR}.get(
            e.subject, STATUS_UNSET
        )
        self.root.end = None  # a retried run ends again, later
        self.root.close(ts, status, str(p.get("message") or p.get("reason") or ""))
        result = p.get("result") or e.subject.rsplit(".", 1)[1]
        self.root.set(run__result=str(result), error__code=p.get("error_code"))

    def run_retry(self, e: Event, p: dict[str, Any], ts: float) -> None:
        self.root.end = None
        self.root.status = STATUS_UNSET
        self.root.message = ""
        self.root.attributes.pop("faena.run.result", None)
        self.root.attributes.pop("faena.error.code", None)
        self.root.set(run__attempt=int(p.get("attempt", 1)))
        self.root.events.append((ts, "retry requested", {"faena.jobs": len(p.get("jobs", []))}))

    def run_cancel_requested(self, e: Event, p: dict[str, Any], ts: float) -> None:
        self.root.events.append((ts, "cancel requested", {"faena.reason": str(p.get("reason"))}))

    def job_expanded(self, e: Event, p: dict[str, Any], ts: float) -> None:
        self._add_jobs(p.get("jobs", []))

    def job_requested(self, e: Event, p: dict[str, Any], ts: float) -> None:
        job_id = p["job_id"]
        a = self._attempt(job_id, int(p.get("attempt", 1)), ts)
        a.span.set(job__reason=p.get("reason"))
        a.schedule = self._span(a.span, "schedule_job", ts, "schedule_job", job_id, a.attempt)
        if p.get("not_before"):
            a.schedule.set(not_before=float(p["not_before"]))

    def assignment_created(self, e: Event, p: dict[str, Any], ts: float) -> None:
        a = self._latest(p["job_id"], ts)
        a.span.set(node__id=p.get("node_id"), assignment__id=p.get("assignment_id"))
        if a.schedule is not None:
            a.schedule.set(node__id=p.get("node_id"), policy=p.get("policy"))
            a.schedule.close(ts, STATUS_OK)

    def assignment_note(self, e: Event, p: dict[str, Any], ts: float) -> None:
        a = self._latest(p["job_id"], ts)
        verb = e.subject.rsplit(".", 1)[1]
        a.span.events.append((ts, f"assignment {verb}", {"faena.reason": str(p.get("reason"))}))

    def assignment_accepted(self, e: Event, p: dict[str, Any], ts: float) -> None:
        a = self._latest(p["job_id"], ts)
        a.worker = self._span(a.span, "create_worker", ts, "create_worker", p["job_id"],
                              a.attempt)  # fmt: skip

    def job_started(self, e: Event, p: dict[str, Any], ts: float) -> None:
        self._latest(p["job_id"], ts).span.set(worker__id=p.get("worker_id"))

    def worker_created(self, e: Event, p: dict[str, Any], ts: float) -> None:
        a = self._latest(str(p.get("job_id", "")), ts)
        ids = {"worker__id": p.get("worker_id"), "worker__provider": p.get("provider_id")}
        a.span.set(**ids)
        if a.worker is not None:
            a.worker.set(**ids)
            a.worker.close(ts, STATUS_OK)

    def worker_failed(self, e: Event, p: dict[str, Any], ts: float) -> None:
        a = self._latest(str(p.get("job_id", "")), ts)
        code = str(p.get("error_code", ""))
        message = str(p.get("message") or "")
        a.span.events.append(
            (ts, "worker failed", {"faena.error.code": code, "faena.message": message})
        )
        if a.worker is not None and a.worker.end is None:
            a.worker.set(error__code=code)
            a.worker.close(ts, STATUS_ERROR, message)

    def worker_terminated(self, e: Event, p: dict[str, Any], ts: float) -> None:
        a = self._latest(str(p.get("job_id", "")), ts)
        code = int(p.get("exit_code", 0))
        a.span.events.append((ts, "worker terminated", {"faena.worker.exit_code": code}))

    def _step(self, p: dict[str, Any], ts: float, job_attempt: int | None = None) -> Span:
        job_id = p["job_id"]
        if job_attempt is None:
            a = self._latest(job_id, ts)
        else:
            a = self._attempt(job_id, job_attempt, ts)
        index = int(p.get("index", str(p.get("step_id", "")).rsplit(".s", 1)[-1]))
        attempt = int(p.get("attempt", 1))
        span = a.steps.get((index, attempt))
        if span is None:
            steps = (self.info.get(job_id) or _JobInfo("", "", [])).steps
            name = steps[index] if 0 <= index < len(steps) else f"step {index + 1}"
            span = self._span(a.span, name, ts, "run_step", job_id, a.attempt, index, attempt)
            span.set(step__id=p.get("step_id"), step__name=name, step__index=index,
                     step__attempt=attempt, job__id=job_id)  # fmt: skip
            a.steps[(index, attempt)] = span
        return span

    def step_started(self, e: Event, p: dict[str, Any], ts: float) -> None:
        exec_id = str(p.get("exec_id", ""))
        head = exec_id.split(".", 1)[0]
        span = self._step(p, ts, int(head) if head.isdigit() else None)
        span.set(exec_id=exec_id or None)

    def step_end(self, e: Event, p: dict[str, Any], ts: float) -> None:
        span = self._step(p, ts)
        duration = p.get("duration_ms")
        if span.end is None and span.start == ts and isinstance(duration, int | float):
            span.start = ts - float(duration) / 1000.0  # its start event is missing
        span.set(step__exit_code=p.get("exit_code"), step__duration_ms=duration,
                 error__code=p.get("error_code"))  # fmt: skip
        if e.subject == "ci.step.v1.completed":
            span.close(ts, STATUS_OK)
            span.set(step__result="success")
        elif p.get("cancelled"):
            span.close(ts, STATUS_UNSET, str(p.get("message") or "cancelled"))
            span.set(step__result="cancelled")
        else:
            span.close(ts, STATUS_ERROR, str(p.get("message") or p.get("error_code") or ""))
            span.set(step__result="failure", step__will_retry=bool(p.get("will_retry")),
                     step__continue_on_error=bool(p.get("continue_on_error")))  # fmt: skip

    def step_skipped(self, e: Event, p: dict[str, Any], ts: float) -> None:
        span = self._step(p, ts)
        span.close(ts, STATUS_UNSET, str(p.get("reason") or "skipped"))
        span.set(step__result="skipped")

    def job_end(self, e: Event, p: dict[str, Any], ts: float) -> None:
        job_id = p["job_id"]
        current = self.current.get(job_id)
        attempt = int(p.get("attempt", current.attempt if current else 0))
        a = self._attempt(job_id, attempt, ts)
        verb = e.subject.rsplit(".", 1)[1]
        if verb == "completed":
            self._end_attempt(a, ts, STATUS_OK, "")
            a.span.set(job__result="success")
        elif verb == "failed":
            self._end_attempt(a, ts, STATUS_ERROR, str(p.get("message") or ""))
            a.span.set(job__result="failure", error__code=p.get("error_code"),
                       job__will_retry=bool(p.get("will_retry")))  # fmt: skip
        else:
            self._end_attempt(a, ts, STATUS_UNSET, str(p.get("reason") or verb))
            a.span.set(job__result=verb)

    # -- output --------------------------------------------------------------------------

    def otlp(self, now: float | None) -> dict[str, Any]:
        end_of_open = self.last if now is None else max(now, self.last)
        spans = []
        for s in sorted(self.spans, key=lambda s: s.start):
            attrs = dict(s.attributes)
            end = s.end
            if end is None:
                end = end_of_open
                attrs["faena.in_progress"] = True
            status: dict[str, Any] = {"code": s.status}
            if s.message:
                status["message"] = s.message
            span: dict[str, Any] = {
                "traceId": self.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_id,
                "name": s.name,
                "kind": SPAN_KIND_INTERNAL,
                "startTimeUnixNano": _nanos(s.start),
                "endTimeUnixNano": _nanos(max(end, s.start)),
                "attributes": _attributes(attrs),
                "status": status,
            }
            if s.events:
                span["events"] = [
                    {"timeUnixNano": _nanos(ts), "name": name, "attributes": _attributes(a)}
                    for ts, name, a in s.events
                ]
            spans.append(span)
        resource = {"service.name": "faena", "service.version": __version__,
                    "faena.tenant": self.tenant}  # fmt: skip
        return {
            "resourceSpans": [
                {
                    "resource": {"attributes": _attributes(resource)},
                    "scopeSpans": [
                        {"scope": {"name": SCOPE_NAME, "version": __version__}, "spans": spans}
                    ],
                }
            ]
        }


_HANDLERS: dict[str, Callable[[_Builder, Event, dict[str, Any], float], None]] = {
    "ci.run.v1.completed": _Builder.run_end,
    "ci.run.v1.failed": _Builder.run_end,
    "ci.run.v1.cancelled": _Builder.run_end,
    "ci.run.v1.retry_requested": _Builder.run_retry,
    "ci.run.v1.cancel_requested": _Builder.run_cancel_requested,
    "ci.job.v1.expanded": _Builder.job_expanded,
    "ci.job.v1.requested": _Builder.job_requested,
    "ci.assignment.v1.created": _Builder.assignment_created,
    "ci.assignment.v1.rejected": _Builder.assignment_note,
    "ci.assignment.v1.revoked": _Builder.assignment_note,
    "ci.assignment.v1.accepted": _Builder.assignment_accepted,
    "ci.job.v1.started": _Builder.job_started,
    "ci.worker.v1.created": _Builder.worker_created,
    "ci.worker.v1.failed": _Builder.worker_failed,
    "ci.worker.v1.terminated": _Builder.worker_terminated,
    "ci.step.v1.started": _Builder.step_started,
    "ci.step.v1.completed": _Builder.step_end,
    "ci.step.v1.failed": _Builder.step_end,
    "ci.step.v1.skipped": _Builder.step_skipped,
    "ci.job.v1.completed": _Builder.job_end,
    "ci.job.v1.failed": _Builder.job_end,
    "ci.job.v1.cancelled": _Builder.job_end,
    "ci.job.v1.skipped": _Builder.job_end,
}


def build_trace(events: Iterable[Event], *, now: float | None = None) -> dict[str, Any]:
    """The OTLP/JSON trace of one run from its events in log order (empty without a
    ``ci.run.v1.requested``). Open spans end at ``now``, or at the last event, and carry
    ``faena.in_progress``."""
    builder: _Builder | None = None
    for e in events:
        if builder is None:
            if e.subject != "ci.run.v1.requested":
                continue
            builder = _Builder(str(e.payload.get("run_id") or e.correlation_id), e)
            continue
        builder.apply(e)
    if builder is None:
        return {"resourceSpans": []}
    return builder.otlp(now)


def _nanos(ts: float) -> str:
    # Via whole microseconds (the log's precision), so no float error reaches the digits.
    return str(round(ts * 1_000_000) * 1_000)


def _attributes(values: Mapping[str, AttrValue]) -> list[dict[str, Any]]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            encoded: dict[str, Any] = {"boolValue": value}
        elif isinstance(value, int):
            encoded = {"intValue": str(value)}  # int64 is a string in OTLP/JSON
        elif isinstance(value, float):
            encoded = {"doubleValue": value}
        else:
            encoded = {"stringValue": str(value)}
        out.append({"key": key, "value": encoded})
    return out
