"""DAG progression as a pure state machine: random DAGs, random outcomes, invariants.

The driver plays scheduler and agent by emitting the events they would, so these tests
exercise exactly the code the orchestrator runs, without processes or a store.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from faena.domain import progress
from faena.domain.events import Event, make_event
from faena.domain.run import PipelineRun, rebuild
from faena.domain.spec import JobSpec, MatrixSpec, PipelineSpec, StepSpec
from faena.domain.states import JobState, RunState


def spec_of(needs: dict[str, list[str]], **jobs_extra: dict[str, Any]) -> PipelineSpec:
    jobs = {
        k: JobSpec(key=k, name=k, steps=[StepSpec(name="s", run="true")], needs=list(v),
                   **jobs_extra.get(k, {}))
        for k, v in needs.items()
    }  # fmt: skip
    return PipelineSpec(name="p", jobs=jobs)


class Driver:
    """Plays scheduler and agent; records when each job started and what it saw."""

    def __init__(self, spec: PipelineSpec, outcome: dict[str, str]) -> None:
        self.spec = spec
        self.outcome = outcome
        self.run = PipelineRun(run_id="r", pipeline="p", spec_hash=spec.spec_hash())
        self.events: list[Event] = []
        self.started_with: dict[str, dict[str, str | None]] = {}
        plan = progress.plan_jobs("r", spec)
        self.emit("ci.run.v1.requested", {"run_id": "r", "pipeline": "p",
                                          "spec_hash": spec.spec_hash(), **plan})  # fmt: skip

    def emit(self, subject: str, payload: dict[str, Any]) -> None:
        if payload.get("spec_hash") == "":
            payload["spec_hash"] = self.run.spec_hash
        event = make_event(subject, payload, correlation_id="r")
        self.run.apply(event)
        self.events.append(event)

    def settle(self) -> None:
        while actions := progress.advance(self.run, self.spec):
            for subject, payload in actions:
                self.emit(subject, payload)

    def step(self) -> bool:
        """Move one pending job through a whole attempt; False when nothing is pending."""
        pending = [j for j in self.run.jobs.values() if j.state is JobState.PENDING]
        if not pending:
            return False
        job = pending[0]
        jid, attempt = job.job_id, job.attempt
        self.started_with[job.key] = {
            k: self.run.group_result(k) if self.run.group_done(k) else None for k in job.needs
        }
        self.emit(
            "ci.assignment.v1.created",
            {
                "assignment_id": f"a{len(self.events)}",
                "job_id": jid,
                "node_id": "n",
                "policy": "fifo",
                "attempt": attempt,
            },
        )
        self.emit("ci.assignment.v1.accepted", {"assignment_id": job.assignment_id,
                  "job_id": jid, "node_id": "n", "attempt": attempt})  # fmt: skip
        self.emit("ci.job.v1.started", {"job_id": jid, "worker_id": "w", "attempt": attempt})
        if self.outcome.get(job.template or job.key, "success") == "success":
            self.emit("ci.job.v1.completed", {"job_id": jid, "result_ref": "success",
                                              "attempt": attempt})  # fmt: skip
        else:
            self.emit("ci.job.v1.failed", {"job_id": jid, "error_code": "EXEC-FAILED",
                                           "retryable": False, "attempt": attempt})  # fmt: skip
        self.settle()
        return True

    def drive(self) -> PipelineRun:
        self.settle()
        for _ in range(10_000):
            if not self.step():
                break
        return self.run


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, str]]:
    n = draw(st.integers(min_value=1, max_value=12))
    keys = [f"j{i}" for i in range(n)]
    needs = {
        k: sorted(draw(st.sets(st.sampled_from(keys[:i]), max_size=3)) if i else [])
        for i, k in enumerate(keys)
    }
    outcome = {k: draw(st.sampled_from(["success", "success", "failure"])) for k in keys}
    return needs, outcome


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dags_finish_with_github_semantics(case: Any) -> None:
    needs, outcome = case
    driver = Driver(spec_of(needs), outcome)
    run = driver.drive()

    assert run.state.terminal
    state = {j.key: j.state for j in run.jobs.values()}
    for key, deps in needs.items():
        ran = key in driver.started_with
        all_ok = all(state[d] is JobState.SUCCEEDED for d in deps)
        # A job starts only once every need is finished, and only if all succeeded.
        if ran:
            assert all(v is not None for v in driver.started_with[key].values())
        assert ran == all_ok, (key, deps, state)
        if not ran:
            assert state[key] is JobState.SKIPPED
        else:
            expected = JobState.SUCCEEDED if outcome[key] == "success" else JobState.FAILED
            assert state[key] is expected
    failed = any(s is JobState.FAILED for s in state.values())
    assert run.state is (RunState.FAILED if failed else RunState.SUCCEEDED)


@settings(max_examples=60, deadline=None)
@given(dags())
def test_replaying_the_log_gives_the_same_state(case: Any) -> None:
    needs, outcome = case
    driver = Driver(spec_of(needs), outcome)
    run = driver.drive()
    again = rebuild("r", driver.events)
    assert again.to_row() == run.to_row()
    assert [j.to_row() for j in again.jobs.values()] == [j.to_row() for j in run.jobs.values()]


def test_always_and_failure_conditions() -> None:
    spec = spec_of(
        {"a": [], "b": ["a"], "c": ["b"], "d": ["b"], "e": ["a"]},
        c={"if_": "always()"},
        d={"if_": "failure()"},
        e={"if_": "failure()"},
    )
    run = Driver(spec, {"a": "failure"}).drive()
    state = {j.key: j.state for j in run.jobs.values()}
    assert state == {
        "a": JobState.FAILED, "b": JobState.SKIPPED, "c": JobState.SUCCEEDED,
        "d": JobState.SUCCEEDED, "e": JobState.SUCCEEDED,
    }  # fmt: skip


def test_matrix_fail_fast_cancels_siblings_and_skips_dependents() -> None:
    spec = spec_of(
        {"t": [], "after": ["t"]},
        t={"strategy": MatrixSpec(axes={"n": [1, 2, 3]}, fail_fast=True)},
    )
    driver = Driver(spec, {"t": "failure"})
    run = driver.drive()
    states = sorted(j.state.value for j in run.jobs.values() if j.key != "after")
    assert states == ["CANCELLED", "CANCELLED", "FAILED"]
    assert next(j for j in run.jobs.values() if j.key == "after").state is JobState.SKIPPED


def test_cancel_cancels_waiting_and_pending_jobs() -> None:
    driver = Driver(spec_of({"a": [], "b": ["a"]}), {})
    driver.settle()
    driver.emit("ci.run.v1.cancel_requested", {"run_id": "r", "reason": "user"})
    driver.settle()
    assert driver.run.state is RunState.CANCELLED
    assert {j.state for j in driver.run.jobs.values()} == {JobState.CANCELLED}


def test_two_dynamic_matrices_on_one_need_both_expand() -> None:
    spec = spec_of(
        {"plan": [], "b1": ["plan"], "b2": ["plan"]},
        b1={"strategy": MatrixSpec(expression='fromJSON(\'[{"x":1},{"x":2}]\')')},
        b2={"strategy": MatrixSpec(expression="fromJSON('[{\"y\":1}]')")},
    )
    run = Driver(spec, {}).drive()
    assert run.state is RunState.SUCCEEDED
    names = sorted(j.name for j in run.jobs.values())
    assert names == ["b1 (x=1)", "b1 (x=2)", "b2 (y=1)", "plan"]
    assert len({j.job_id for j in run.jobs.values()}) == 4


def test_always_jobs_still_run_after_a_cancel() -> None:
    spec = spec_of({"a": [], "report": ["a"], "later": ["a"]}, report={"if_": "always()"})
    driver = Driver(spec, {})
    driver.settle()
    driver.emit("ci.run.v1.cancel_requested", {"run_id": "r", "reason": "user"})
    driver.settle()
    run = driver.drive()
    state = {j.key: j.state for j in run.jobs.values()}
    assert state == {"a": JobState.CANCELLED, "report": JobState.SUCCEEDED,
                     "later": JobState.CANCELLED}  # fmt: skip
    assert run.state is RunState.CANCELLED


def test_names_wait_for_what_they_read() -> None:
    assert progress.display_name("t ${{ matrix.x }}", {"matrix": {"x": 1}}) == "t 1"
    raw = "echo ${{ needs.a.outputs.v }}"
    assert progress.display_name(raw, {"matrix": {}}) == raw


def test_retry_reruns_failed_and_downstream_keeping_successes() -> None:
    spec = spec_of(
        {"a": [], "b": ["a"], "c": ["b"], "side": [], "report": ["b"]},
        report={"if_": "always()"},
    )
    driver = Driver(spec, {"b": "failure"})
    run = driver.drive()
    assert run.state is RunState.FAILED
    outputs_before = {j.key: j.attempt for j in run.jobs.values()}
    driver.outcome["b"] = "success"
    jobs = run.retry_set()
    assert sorted(run.jobs[j].key for j in jobs) == ["b", "c"]  # report succeeded: kept
    driver.emit("ci.run.v1.retry_requested", {"run_id": "r", "jobs": jobs, "attempt": 2})
    run = driver.drive()
    assert run.state is RunState.SUCCEEDED and run.attempt == 2
    attempts = {j.key: j.attempt for j in run.jobs.values()}
    assert attempts["a"] == outputs_before["a"] == 1  # not run again
    assert attempts["side"] == 1
    assert attempts["b"] == 2 and attempts["report"] == 1
    assert attempts["c"] == 1  # skipped before, so its first real attempt
    assert rebuild("r", driver.events).to_row() == run.to_row()
