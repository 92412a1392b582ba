"""The v1 event catalogue stays backward compatible with its recorded snapshot.

A consumer written against a v1 subject must keep working: no subject disappears and no
field a consumer relies on disappears. New subjects and new optional fields are fine; new
required fields or a changed key need a v2 subject. To add a subject, run this file with
FAENA_UPDATE_SCHEMAS=1 and commit the snapshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faena.domain.events import (
    CATALOGUE,
    Event,
    UnknownSubject,
    canonical_time,
    idempotency_key,
    iso,
    make_event,
    parse_iso,
    subject_matches,
)

SNAPSHOT = Path(__file__).with_name("event_schemas_v1.json")


def current() -> dict[str, dict[str, object]]:
    return {
        s: {"name": t.name, "required": list(t.required), "key": list(t.key_fields),
            "attempt_in_key": t.attempt_in_key}
        for s, t in sorted(CATALOGUE.items())
    }  # fmt: skip


def test_snapshot_is_current_or_compatible() -> None:
    if os.environ.get("FAENA_UPDATE_SCHEMAS"):
        SNAPSHOT.write_text(json.dumps(current(), indent=2) + "\n")
    recorded = json.loads(SNAPSHOT.read_text())
    now = current()
    for subject, old in recorded.items():
        assert subject in now, f"{subject} was removed: publish a v2 subject instead"
        new = now[subject]
        assert set(new["required"]) <= set(old["required"]), (  # type: ignore[arg-type]
            f"{subject}: new required fields break old producers; make them optional"
        )
        assert new["key"] == old["key"], f"{subject}: idempotency key changed"
        assert new["attempt_in_key"] == old["attempt_in_key"]
    missing = set(now) - set(recorded)
    assert not missing, f"new subjects {missing}: record them with FAENA_UPDATE_SCHEMAS=1"


def test_subjects_are_versioned() -> None:
    for subject in CATALOGUE:
        parts = subject.split(".")
        assert parts[0] == "ci" and parts[2] == "v1", subject


def test_seed_table_23_is_covered() -> None:
    seed = [
        "ci.job.v1.requested", "ci.job.v1.started", "ci.job.v1.completed", "ci.job.v1.failed",
        "ci.assignment.v1.created", "ci.worker.v1.created", "ci.worker.v1.terminated",
        "ci.step.v1.started", "ci.step.v1.completed", "ci.step.v1.failed",
        "ci.metric.v1.emitted", "ci.trace.v1.spans", "ci.alert.v1.raised",
        "ci.security.v1.auth.granted", "ci.security.v1.auth.revoked",
        "ci.security.v1.auth.denied", "ci.artifact.v1.uploaded", "ci.artifact.v1.promoted",
        "ci.artifact.v1.validated",
    ]  # fmt: skip
    added = [
        "ci.run.v1.requested", "ci.run.v1.started", "ci.run.v1.completed", "ci.run.v1.failed",
        "ci.run.v1.cancelled", "ci.job.v1.cancelled", "ci.job.v1.skipped",
        "ci.assignment.v1.accepted", "ci.assignment.v1.rejected", "ci.assignment.v1.revoked",
        "ci.worker.v1.failed", "ci.node.v1.registered", "ci.node.v1.capacity_updated",
        "ci.node.v1.lost", "ci.log.v1.chunk",
    ]  # fmt: skip
    assert set(seed + added) <= set(CATALOGUE)
    assert "ci.offer.v1.created" not in CATALOGUE  # dropped by DESIGN.md


def test_keys_include_the_attempt() -> None:
    a1 = idempotency_key("ci.job.v1.requested", {"job_id": "r.1", "attempt": 1})
    a2 = idempotency_key("ci.job.v1.requested", {"job_id": "r.1", "attempt": 2})
    assert a1 != a2
    assert a1 == idempotency_key("ci.job.v1.requested", {"job_id": "r.1", "attempt": 1})


def test_envelope_round_trip_and_fields() -> None:
    e = make_event(
        "ci.step.v1.started",
        {"step_id": "r.1.s0", "job_id": "r.1", "exec_id": "1.1", "attempt": 1},
        correlation_id="r",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    d = e.to_dict()
    for field in ("event_id", "subject", "occurred_at", "tenant_id", "correlation_id",
                  "traceparent", "idempotency_key", "payload"):  # fmt: skip
        assert field in d
    assert d["tenant_id"] == "default"
    assert Event.from_dict(json.loads(json.dumps(d))) == e


def test_unknown_subject_and_missing_fields_are_rejected() -> None:
    with pytest.raises(UnknownSubject):
        make_event("ci.job.requested", {}, correlation_id="r")
    with pytest.raises(ValueError, match="spec_hash"):
        make_event("ci.job.v1.requested", {"job_id": "x"}, correlation_id="r")


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("ci.>", "ci.job.v1.started", True),
        ("ci.job.v1.*", "ci.job.v1.started", True),
        ("ci.job.v1.*", "ci.security.v1.auth.denied", False),
        ("ci.security.>", "ci.security.v1.auth.denied", True),
        ("ci.*.v1.started", "ci.step.v1.started", True),
        ("ci.job.v1.started", "ci.job.v1.started", True),
        ("ci.job.v1", "ci.job.v1.started", False),
        ("ci.job.v1.started.x", "ci.job.v1.started", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_event_times_survive_the_log_round_trip(ts: float) -> None:
    c = canonical_time(ts)
    assert parse_iso(iso(c)) == c
    assert abs(c - ts) <= 1e-6
