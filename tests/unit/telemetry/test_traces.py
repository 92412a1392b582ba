"""Traces rebuilt from hand-built event logs: span tree, times, statuses, attributes."""

from __future__ import annotations

import json
import re
from typing import Any

from telemetry_events import RUN, T0, Log, job, sample_run

from faena.telemetry.traces import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    build_trace,
    trace_id_for,
    traceparent_for,
)


def spans_of(trace: dict[str, Any]) -> list[dict[str, Any]]:
    (resource,) = trace["resourceSpans"]
    (scope,) = resource["scopeSpans"]
    spans: list[dict[str, Any]] = scope["spans"]
    return spans


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def ns(seconds_after_t0: float) -> str:
    return str(round((T0 + seconds_after_t0) * 1_000_000) * 1_000)


def by_kind(spans: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [s for s in spans if attrs(s)["faena.span"] == kind]


def test_ids_are_deterministic_hex() -> None:
    assert re.fullmatch("[0-9a-f]{32}", trace_id_for(RUN))
    assert trace_id_for(RUN) == trace_id_for(RUN) != trace_id_for("r2")
    assert re.fullmatch(f"00-{trace_id_for(RUN)}-[0-9a-f]{{16}}-01", traceparent_for(RUN))


def test_span_tree_of_a_run() -> None:
    trace = build_trace(sample_run().events)
    json.dumps(trace)  # the OTLP/JSON body, as is
    spans = spans_of(trace)
    assert {s["traceId"] for s in spans} == {trace_id_for(RUN)}
    assert len({s["spanId"] for s in spans}) == len(spans)
    (root,) = by_kind(spans, "pipeline_run")
    assert root["parentSpanId"] == "" and root["name"] == "demo"
    jobs = by_kind(spans, "job_run")
    assert [(s["name"], attrs(s)["faena.job.attempt"]) for s in jobs] == [
        ("build", "1"),
        ("test (a)", "1"),
        ("test (a)", "2"),
        ("docs", "0"),
    ]
    assert all(s["parentSpanId"] == root["spanId"] for s in jobs)
    ids = {s["spanId"]: s for s in spans}
    for kind in ("schedule_job", "create_worker", "run_step"):
        for child in by_kind(spans, kind):
            assert ids[child["parentSpanId"]] in jobs
    steps = by_kind(spans, "run_step")
    assert [(s["name"], ids[s["parentSpanId"]]["name"]) for s in steps] == [
        ("compile", "build"),
        ("unit", "test (a)"),
        ("unit", "test (a)"),
        ("lint", "test (a)"),
    ]


def test_times_and_statuses() -> None:
    spans = spans_of(build_trace(sample_run().events))
    (root,) = by_kind(spans, "pipeline_run")
    assert root["startTimeUnixNano"] == ns(0)
    assert root["status"] == {"code": STATUS_OK}
    build, test1, test2, docs = by_kind(spans, "job_run")
    # build: requested at 0.001 s, placed 0.1 s later, worker in 0.05 s, a 0.5 s step.
    assert (build["startTimeUnixNano"], build["endTimeUnixNano"]) == (ns(0.001), ns(0.711))
    assert build["status"]["code"] == STATUS_OK
    a = attrs(build)
    assert a["faena.node.id"] == "local" and a["faena.worker.provider"] == "local"
    assert a["faena.job.result"] == "success"
    schedule = [s for s in by_kind(spans, "schedule_job") if s["parentSpanId"] == build["spanId"]]
    assert (schedule[0]["startTimeUnixNano"], schedule[0]["endTimeUnixNano"]) == (
        ns(0.001),
        ns(0.101),
    )
    worker = [s for s in by_kind(spans, "create_worker") if s["parentSpanId"] == build["spanId"]]
    assert worker[0]["endTimeUnixNano"] == ns(0.151)
    compile_step = by_kind(spans, "run_step")[0]
    assert (compile_step["startTimeUnixNano"], compile_step["endTimeUnixNano"]) == (
        ns(0.201),
        ns(0.701),
    )
    assert attrs(compile_step)["faena.step.exit_code"] == "0"
    # The failed attempt is an error with its code; the retry succeeded.
    assert test1["status"] == {"code": STATUS_ERROR, "message": "step 1 failed"}
    assert attrs(test1)["faena.error.code"] == "EXEC-FAILED"
    assert attrs(test1)["faena.job.will_retry"] is True
    failed_step = by_kind(spans, "run_step")[1]
    assert failed_step["status"]["code"] == STATUS_ERROR
    assert attrs(failed_step)["faena.step.exit_code"] == "2"
    assert test2["status"]["code"] == STATUS_OK
    assert int(test2["startTimeUnixNano"]) - int(test1["endTimeUnixNano"]) == 1_000_000_000
    # A skipped job is a zero-length span, neither ok nor error.
    assert docs["startTimeUnixNano"] == docs["endTimeUnixNano"]
    assert docs["status"]["code"] == STATUS_UNSET
    assert attrs(docs)["faena.job.result"] == "skipped"


def test_a_run_in_progress_ends_its_open_spans_now() -> None:
    events = sample_run().events
    cut = next(i for i, e in enumerate(events) if e.subject == "ci.step.v1.started")
    spans = spans_of(build_trace(events[: cut + 1], now=T0 + 5))
    open_spans = [s for s in spans if attrs(s).get("faena.in_progress")]
    assert {attrs(s)["faena.span"] for s in open_spans} == {"pipeline_run", "job_run", "run_step"}
    assert all(s["endTimeUnixNano"] == ns(5) for s in open_spans)
    assert all(s["status"]["code"] == STATUS_UNSET for s in open_spans)
    # Ids are stable as the log grows: a live trace's spans are the finished trace's spans.
    full = {s["spanId"] for s in spans_of(build_trace(events))}
    assert {s["spanId"] for s in spans} <= full


def test_cancelled_before_start_and_a_retried_run() -> None:
    log = Log()
    log.requested([job("r1.1", "a", ["s"]), job("r1.2", "b", ["s"])])
    end = log.job_attempt("r1.1", 1, 0.0, [(0.0, 0.1, False)])
    log.add(end, "ci.job.v1.skipped", job_id="r1.2", reason="needs not successful")
    log.add(end, "ci.run.v1.failed", run_id=RUN, result="failure", error_code="EXEC-FAILED",
            message="failed: a", attempt=1)  # fmt: skip
    log.add(end + 10, "ci.run.v1.retry_requested", run_id=RUN, jobs=["r1.1", "r1.2"],
            attempt=2)  # fmt: skip
    end = log.job_attempt("r1.1", 2, end + 10, [(0.0, 0.1, True)])
    log.add(end, "ci.job.v1.cancelled", job_id="r1.2", reason="cancelled by user", attempt=0)
    log.add(end, "ci.run.v1.cancelled", run_id=RUN, reason="cancelled: b", attempt=2)
    spans = spans_of(build_trace(log.events))
    (root,) = by_kind(spans, "pipeline_run")
    assert root["endTimeUnixNano"] == ns(end)
    assert root["status"] == {"code": STATUS_UNSET, "message": "cancelled: b"}
    assert attrs(root)["faena.run.attempt"] == "2"
    assert [e["name"] for e in root["events"]] == ["retry requested"]
    b_spans = [s for s in by_kind(spans, "job_run") if s["name"] == "b"]
    assert [attrs(s)["faena.job.result"] for s in b_spans] == ["skipped", "cancelled"]
    assert len({s["spanId"] for s in b_spans}) == 2


def test_resource_and_empty_logs() -> None:
    trace = build_trace(sample_run().events)
    resource = trace["resourceSpans"][0]["resource"]
    assert {"key": "service.name", "value": {"stringValue": "faena"}} in resource["attributes"]
    assert build_trace([]) == {"resourceSpans": []}
