"""Hand-built event logs, shaped like the orchestrator's, for the telemetry unit tests."""

from __future__ import annotations

from typing import Any

from faena.domain.events import Event, make_event

T0 = 1_700_000_000.0
RUN = "r1"


class Log:
    """Appends catalogue events for one run at explicit times (seconds after T0)."""

    def __init__(self, run_id: str = RUN, tenant: str = "default") -> None:
        self.run_id = run_id
        self.tenant = tenant
        self.events: list[Event] = []

    def add(self, at: float, subject: str, **payload: Any) -> Event:
        event = make_event(
            subject, payload, correlation_id=self.run_id, tenant_id=self.tenant, now=T0 + at
        )
        self.events.append(event)
        return event

    def requested(self, jobs: list[dict[str, Any]], at: float = 0.0) -> None:
        self.add(at, "ci.run.v1.requested", run_id=self.run_id, pipeline="demo",
                 spec_hash="h", jobs=jobs, templates={})  # fmt: skip
        self.add(at, "ci.run.v1.started", run_id=self.run_id)

    def job_attempt(
        self,
        job_id: str,
        attempt: int,
        at: float,
        steps: list[tuple[float, float, bool]],
        *,
        queue: float = 0.1,
        worker: float = 0.05,
        will_retry: bool = False,
    ) -> float:
        """One attempt: queued ``queue`` s, a worker in ``worker`` s, then ``steps`` as
        (offset, seconds, ok); returns when the attempt ended."""
        reason = "start" if attempt == 1 else "retry"
        self.add(at, "ci.job.v1.requested", job_id=job_id, spec_hash="h", attempt=attempt,
                 reason=reason)  # fmt: skip
        t = at + queue
        self.add(t, "ci.assignment.v1.created", assignment_id=f"a{job_id}{attempt}",
                 job_id=job_id, node_id="local", policy="fifo", attempt=attempt)  # fmt: skip
        self.add(t, "ci.assignment.v1.accepted", assignment_id=f"a{job_id}{attempt}",
                 job_id=job_id, node_id="local", attempt=attempt)  # fmt: skip
        self.add(t, "ci.job.v1.started", job_id=job_id, worker_id=f"w{attempt}",
                 attempt=attempt)  # fmt: skip
        t += worker
        self.add(t, "ci.worker.v1.created", worker_id=f"w{attempt}", provider_id="local",
                 runtime_spec={"root": "/tmp/x"}, job_id=job_id)  # fmt: skip
        failed = False
        for index, (offset, seconds, ok) in enumerate(steps):
            start = t + offset
            common = {"step_id": f"{job_id}.s{index}", "job_id": job_id, "index": index}
            self.add(start, "ci.step.v1.started", **common, exec_id=f"{attempt}.1", attempt=1)
            end = start + seconds
            result = {"attempt": 1, "exit_code": 0 if ok else 2, "duration_ms": seconds * 1000}
            if ok:
                self.add(end, "ci.step.v1.completed", **common, **result, result_ref="success")
            else:
                failed = True
                self.add(end, "ci.step.v1.failed", **common, **result, error_code="EXEC-FAILED",
                         retryable=False, message="exit code 2")  # fmt: skip
            t = end
        self.add(t, "ci.worker.v1.terminated", worker_id=f"w{attempt}",
                 exit_code=1 if failed else 0, job_id=job_id)  # fmt: skip
        t += 0.01
        if failed:
            self.add(t, "ci.job.v1.failed", job_id=job_id, attempt=attempt,
                     error_code="EXEC-FAILED", retryable=will_retry, will_retry=will_retry,
                     message="step 1 failed")  # fmt: skip
        else:
            self.add(t, "ci.job.v1.completed", job_id=job_id, result_ref="success",
                     attempt=attempt)  # fmt: skip
        return t


def job(job_id: str, name: str, steps: list[str], template: str | None = None) -> dict[str, Any]:
    return {"job_id": job_id, "key": name, "name": name, "needs": [], "steps": steps,
            "template": template, "matrix": {}}  # fmt: skip


def sample_run() -> Log:
    """build (one step) succeeds; test (a matrix job, two steps) fails once, then passes;
    docs is skipped; the run succeeds."""
    log = Log()
    log.requested([
        job("r1.1", "build", ["compile"]),
        job("r1.2", "test (a)", ["unit", "lint"], template="test"),
        job("r1.3", "docs", ["mkdocs"]),
    ])  # fmt: skip
    end = log.job_attempt("r1.1", 1, 0.001, [(0.05, 0.5, True)])
    end = log.job_attempt("r1.2", 1, end, [(0.0, 0.2, False)], will_retry=True)
    end = log.job_attempt("r1.2", 2, end + 1.0, [(0.0, 0.3, True), (0.0, 0.1, True)])
    log.add(end, "ci.job.v1.skipped", job_id="r1.3", reason="if condition is false")
    log.add(end + 0.01, "ci.run.v1.completed", run_id=RUN, result="success", attempt=1)
    return log
