"""Metrics derived from domain events: values read back from the private registry."""

from __future__ import annotations

import pytest
from telemetry_events import RUN, Log, job, sample_run

from faena.bus.memory import MemoryBus
from faena.domain.events import Event
from faena.telemetry.metrics import OPENMETRICS_CONTENT_TYPE, Metrics, MetricsRecorder
from faena.telemetry.traces import trace_id_for


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


@pytest.fixture
def recorded() -> tuple[Metrics, MetricsRecorder]:
    m = Metrics()
    rec = MetricsRecorder(m)
    for e in sample_run().events:
        rec.observe(e)
    return m, rec


def test_job_outcomes_and_latencies(recorded: tuple[Metrics, MetricsRecorder]) -> None:
    m, _ = recorded
    assert value(m, "orc_jobs_total", tenant="default", result="success") == 2
    assert value(m, "orc_jobs_total", tenant="default", result="retry") == 1
    assert value(m, "orc_jobs_total", tenant="default", result="skipped") == 1
    # build: requested at 0.001 s, ended at 0.711 s; started (placed) at 0.101 s.
    assert value(m, "orc_job_latency_ms_count", tenant="default", job_kind="job") == 1
    assert value(m, "orc_job_latency_ms_sum", tenant="default", job_kind="job") == pytest.approx(
        710, abs=0.01
    )
    duration = value(m, "orc_job_duration_ms_sum", tenant="default", job_kind="job",
                     result="success")  # fmt: skip
    assert duration == pytest.approx(610, abs=0.01)
    # The matrix job's two attempts are labelled as such.
    assert value(m, "orc_job_latency_ms_count", tenant="default", job_kind="matrix") == 2
    assert value(m, "orc_job_duration_ms_count", tenant="default", job_kind="matrix",
                 result="retry") == 1  # fmt: skip


def test_scheduler_worker_and_step_metrics(recorded: tuple[Metrics, MetricsRecorder]) -> None:
    m, _ = recorded
    assert value(m, "sch_assignment_ms_count", policy="fifo", pool="default") == 3
    assert value(m, "sch_assignment_ms_sum", policy="fifo", pool="default") == pytest.approx(300)
    assert value(m, "sch_queue_depth", pool="default", tenant="default") == 0
    assert value(m, "wkm_create_worker_ms_count", provider="local", namespace="") == 3
    assert value(m, "wkm_create_worker_ms_sum", provider="local", namespace="") == pytest.approx(
        150
    )
    assert value(m, "exec_step_duration_ms_count", step_type="run") == 4
    assert value(m, "exec_step_duration_ms_sum", step_type="run") == pytest.approx(1100)
    assert value(m, "exec_steps_total", step_type="run", result="success") == 3
    assert value(m, "exec_steps_total", step_type="run", result="failure") == 1
    assert value(m, "orc_runs_total", tenant="default", result="success") == 1
    assert value(m, "orc_run_duration_ms_count", tenant="default", result="success") == 1
    assert value(m, "tel_events_total", subject="ci.job.v1.requested") == 3


def test_state_is_dropped_when_things_end(recorded: tuple[Metrics, MetricsRecorder]) -> None:
    _, rec = recorded
    assert rec.open_entries == 0


def test_queue_depth_follows_requests_and_placements() -> None:
    m = Metrics()
    rec = MetricsRecorder(m)
    log = Log()
    log.requested([job("r1.1", "a", ["s"]), job("r1.2", "b", ["s"])])
    for e in log.events:
        rec.observe(e)
    log.events.clear()
    for job_id in ("r1.1", "r1.2"):
        log.add(1, "ci.job.v1.requested", job_id=job_id, spec_hash="h", attempt=1)
    log.add(2, "ci.assignment.v1.created", assignment_id="x", job_id="r1.1", node_id="n",
            policy="fifo", attempt=1)  # fmt: skip
    depths = []
    for e in log.events:
        rec.observe(e)
        depths.append(value(m, "sch_queue_depth", pool="default", tenant="default"))
    assert depths == [1, 2, 1]
    # A run that ends while one of its jobs is still queued leaves nothing behind.
    rec.observe(log.add(3, "ci.run.v1.cancelled", run_id=RUN, reason="user"))
    assert value(m, "sch_queue_depth", pool="default", tenant="default") == 0
    assert rec.open_entries == 0
    assert value(m, "orc_runs_total", tenant="default", result="cancelled") == 1


def test_open_state_is_capped() -> None:
    m = Metrics()
    rec = MetricsRecorder(m, max_open=5)
    log = Log()
    for i in range(50):
        rec.observe(log.add(i, "ci.job.v1.requested", job_id=f"r1.{i}", spec_hash="h"))
    assert rec.open_entries <= 10  # jobs and queue entries, 5 each
    assert value(m, "sch_queue_depth", pool="default", tenant="default") == 5


async def test_duplicates_are_ignored_and_bad_events_never_raise() -> None:
    m = Metrics()
    rec = MetricsRecorder(m)
    log = sample_run()
    for e in log.events + log.events:
        rec.observe(e)
    assert value(m, "orc_jobs_total", tenant="default", result="success") == 2
    broken = Event(subject="ci.job.v1.requested", payload={}, correlation_id="r",
                   idempotency_key="k")  # fmt: skip
    await rec.handle(broken)  # logged, not raised: a redelivery would not help


def test_ids_are_never_labels(recorded: tuple[Metrics, MetricsRecorder]) -> None:
    m, _ = recorded
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "orc_job_latency_ms_bucket" in text
    for family in m.registry.collect():
        for sample in family.samples:
            for label_value in sample.labels.values():
                assert not label_value.startswith("r1."), sample


def test_openmetrics_carries_exemplars_with_the_trace_id(
    recorded: tuple[Metrics, MetricsRecorder],
) -> None:
    m, _ = recorded
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type == OPENMETRICS_CONTENT_TYPE
    text = body.decode()
    assert f'trace_id="{trace_id_for(RUN)}"' in text
    assert text.rstrip().endswith("# EOF")


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()
    a.orc_runs.labels("t", "success").inc()
    assert (
        b.registry.get_sample_value("orc_runs_total", {"tenant": "t", "result": "success"}) is None
    )


def test_bus_queue_depth_sources() -> None:
    m = Metrics()
    m.add_queue_source(lambda: {"ci.job.v1.>": 3, "ci.>": 1})
    m.add_queue_source(lambda: {"ci.job.v1.>": 2})

    def broken() -> dict[str, int]:
        raise RuntimeError("bus gone")

    m.add_queue_source(broken)
    assert value(m, "tel_queue_depth", subject="ci.job.v1.>") == 5
    assert value(m, "tel_queue_depth", subject="ci.>") == 1


def test_request_labels_are_bounded() -> None:
    m = Metrics()
    m.observe_request("BREW", "/api/v1/pipelines/{run_ref}", 404, 3.0)
    assert value(m, "api_request_latency_ms_count", method="OTHER",
                 route="/api/v1/pipelines/{run_ref}", status="404") == 1  # fmt: skip


async def test_recorder_consumes_the_bus() -> None:
    bus = MemoryBus()
    await bus.start()
    m = Metrics()
    rec = MetricsRecorder(m, bus)
    await rec.start()
    try:
        await bus.publish(sample_run().events)
        await bus.drain()
    finally:
        await rec.close()
        await bus.close()
    assert value(m, "orc_runs_total", tenant="default", result="success") == 1
    assert value(m, "exec_steps_total", step_type="run", result="success") == 3
