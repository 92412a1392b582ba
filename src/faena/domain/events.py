"""Domain events: the envelope and the v1 catalogue.

Subjects follow ``ci.<entity>.v1.<verb>`` (communication_architecture.md, Tabla 23, plus the
additions of DESIGN.md). Each catalogue entry names the payload fields a consumer may rely
on and the fields whose values, with the attempt, make the idempotency key. New fields are
optional; a breaking change is a new ``v2`` subject (tests/unit/domain/test_event_schemas.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class EventType:
    """A catalogue entry: subject, event name, required payload, idempotency key fields."""

    subject: str
    name: str
    required: tuple[str, ...]
    key_fields: tuple[str, ...]
    attempt_in_key: bool = True


def _t(subject: str, name: str, required: str, key: str, attempt: bool = True) -> EventType:
    return EventType(subject, name, tuple(required.split()), tuple(key.split()), attempt)


CATALOGUE: dict[str, EventType] = {
    t.subject: t
    for t in (
        # Runs (a PipelineRun; correlation_id is the run id).
        _t("ci.run.v1.requested", "RunRequested", "run_id pipeline spec_hash jobs", "run_id"),
        _t("ci.run.v1.started", "RunStarted", "run_id", "run_id"),
        _t("ci.run.v1.completed", "RunCompleted", "run_id result", "run_id"),
        _t("ci.run.v1.failed", "RunFailed", "run_id result error_code", "run_id"),
        _t("ci.run.v1.cancelled", "RunCancelled", "run_id reason", "run_id"),
        _t("ci.run.v1.cancel_requested", "RunCancelRequested", "run_id reason", "run_id"),
        _t("ci.run.v1.retry_requested", "RunRetryRequested", "run_id jobs", "run_id"),
        # Jobs.
        _t("ci.job.v1.requested", "JobRequested", "job_id spec_hash", "job_id"),
        _t("ci.job.v1.started", "JobStarted", "job_id worker_id", "job_id worker_id"),
        _t("ci.job.v1.completed", "JobCompleted", "job_id result_ref", "job_id"),
        _t("ci.job.v1.failed", "JobFailed", "job_id error_code retryable", "job_id"),
        _t("ci.job.v1.cancelled", "JobCancelled", "job_id reason", "job_id"),
        _t("ci.job.v1.skipped", "JobSkipped", "job_id reason", "job_id"),
        _t("ci.job.v1.expanded", "JobExpanded", "job_id jobs", "job_id", False),
        # Debugging a failed job: the worker kept alive, and commands run in it (audit).
        _t("ci.job.v1.paused", "JobPaused", "job_id attempt until", "job_id attempt", False),
        _t("ci.job.v1.resumed", "JobResumed", "job_id attempt reason", "job_id attempt", False),
        _t("ci.exec.v1.started", "ExecStarted", "exec_id job_id command by", "exec_id", False),
        _t("ci.exec.v1.finished", "ExecFinished", "exec_id job_id exit_code", "exec_id", False),
        # Scheduling.
        _t(
            "ci.assignment.v1.created",
            "AssignmentCreated",
            "assignment_id job_id node_id policy",
            "assignment_id",
            False,
        ),
        _t(
            "ci.assignment.v1.accepted",
            "AssignmentAccepted",
            "assignment_id job_id node_id",
            "assignment_id",
            False,
        ),
        _t(
            "ci.assignment.v1.rejected",
            "AssignmentRejected",
            "assignment_id job_id reason",
            "assignment_id",
            False,
        ),
        _t(
            "ci.assignment.v1.revoked",
            "AssignmentRevoked",
            "assignment_id job_id reason",
            "assignment_id",
            False,
        ),
        # Workers and steps.
        _t(
            "ci.worker.v1.created",
            "WorkerCreated",
            "worker_id provider_id runtime_spec",
            "worker_id",
            False,
        ),
        _t(
            "ci.worker.v1.terminated", "WorkerTerminated", "worker_id exit_code", "worker_id", False
        ),
        _t("ci.worker.v1.failed", "WorkerFailed", "worker_id error_code", "worker_id", False),
        _t("ci.step.v1.started", "StepStarted", "step_id job_id exec_id", "step_id exec_id"),
        _t(
            "ci.step.v1.completed",
            "StepCompleted",
            "step_id result_ref duration_ms",
            "step_id result_ref",
        ),
        _t("ci.step.v1.failed", "StepFailed", "step_id error_code retryable", "step_id"),
        _t("ci.step.v1.skipped", "StepSkipped", "step_id job_id reason", "step_id"),
        # Nodes.
        _t("ci.node.v1.registered", "NodeRegistered", "node_id capacity labels", "node_id", False),
        _t(
            "ci.node.v1.capacity_updated",
            "NodeCapacityUpdated",
            "node_id capacity",
            "node_id seq",
            False,
        ),
        _t("ci.node.v1.lost", "NodeLost", "node_id", "node_id seq", False),
        # Logs: published on the bus, stored in the log table, not in the event log.
        _t("ci.log.v1.chunk", "LogChunk", "job_id step_id lines", "job_id step_id seq"),
        # Telemetry, security and artifacts (seed catalogue; producers arrive later).
        _t(
            "ci.metric.v1.emitted",
            "MetricEmitted",
            "metric_name value tags",
            "metric_name tags ts",
            False,
        ),
        _t("ci.trace.v1.spans", "TraceSpans", "trace_context spans", "batch_id", False),
        _t("ci.alert.v1.raised", "AlertRaised", "alert_id severity message", "alert_id", False),
        _t(
            "ci.security.v1.auth.granted",
            "AuthGranted",
            "principal scope decision_id",
            "decision_id",
            False,
        ),
        _t(
            "ci.security.v1.auth.revoked",
            "AuthRevoked",
            "principal scope decision_id",
            "decision_id",
            False,
        ),
        _t(
            "ci.security.v1.auth.denied",
            "AuthorizationDenied",
            "resource action reason",
            "decision_id",
            False,
        ),
        _t(
            "ci.artifact.v1.uploaded",
            "ArtifactUploaded",
            "artifact_ref checksum",
            "artifact_ref",
            False,
        ),
        _t(
            "ci.artifact.v1.promoted",
            "ArtifactPromoted",
            "artifact_ref env",
            "artifact_ref env",
            False,
        ),
        _t(
            "ci.artifact.v1.validated",
            "ArtifactValidated",
            "artifact_ref status",
            "artifact_ref",
            False,
        ),
    )
}


class UnknownSubject(ValueError):
    """An event was built for a subject that is not in the catalogue."""


def new_id() -> str:
    """A time-sortable, unique, URL-safe id (48-bit ms timestamp + 80 random bits, base32)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    out = []
    for _ in range(26):
        out.append(alphabet[value & 31])
        value >>= 5
    return "".join(reversed(out))


@dataclass(frozen=True)
class Event:
    """The envelope every event travels in."""

    subject: str
    payload: dict[str, Any]
    correlation_id: str
    idempotency_key: str
    tenant_id: str = DEFAULT_TENANT
    traceparent: str = ""
    event_id: str = field(default_factory=new_id)
    occurred_at: float = field(default_factory=lambda: canonical_time(time.time()))

    @property
    def name(self) -> str:
        return CATALOGUE[self.subject].name if self.subject in CATALOGUE else self.subject

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "subject": self.subject,
            "occurred_at": iso(self.occurred_at),
            "tenant_id": self.tenant_id,
            "correlation_id": self.correlation_id,
            "traceparent": self.traceparent,
            "idempotency_key": self.idempotency_key,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            subject=data["subject"],
            payload=dict(data["payload"]),
            correlation_id=data["correlation_id"],
            idempotency_key=data["idempotency_key"],
            tenant_id=data.get("tenant_id", DEFAULT_TENANT),
            traceparent=data.get("traceparent", ""),
            event_id=data["event_id"],
            occurred_at=parse_iso(data["occurred_at"]),
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def iso(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_time(ts: float) -> float:
    """``ts`` at the microsecond precision the log keeps, so it survives a round trip."""
    return round(ts * 1_000_000) / 1_000_000


def parse_iso(value: str | float) -> float:
    """The inverse of ``iso``, exact for canonical times."""
    if isinstance(value, int | float):
        return canonical_time(float(value))
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return ((dt - _EPOCH) // _US) / 1_000_000


def idempotency_key(subject: str, payload: Mapping[str, Any]) -> str:
    """The seed key (its fields' values joined by ':') plus the attempt where it applies."""
    kind = CATALOGUE.get(subject)
    if kind is None:
        raise UnknownSubject(subject)
    parts = [str(payload.get(f, "")) for f in kind.key_fields]
    if kind.attempt_in_key:
        parts.append(str(payload.get("attempt", 1)))
    return f"{subject}:{':'.join(parts)}"


def make_event(
    subject: str,
    payload: dict[str, Any],
    *,
    correlation_id: str,
    tenant_id: str = DEFAULT_TENANT,
    traceparent: str = "",
    now: float | None = None,
) -> Event:
    """Build a catalogue event; raises UnknownSubject or ValueError for a missing field."""
    kind = CATALOGUE.get(subject)
    if kind is None:
        raise UnknownSubject(subject)
    missing = [f for f in kind.required if f not in payload]
    if missing:
        raise ValueError(f"{subject}: missing payload fields {missing}")
    return Event(
        subject=subject,
        payload=payload,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key(subject, payload),
        tenant_id=tenant_id,
        traceparent=traceparent,
        occurred_at=canonical_time(time.time() if now is None else now),
    )


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, a final ``>`` is one or more."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
