"""State machines of runs, jobs and steps as FROM/TO rules (DESIGN.md, "States")."""

from __future__ import annotations

from enum import StrEnum

from faena.domain.errors import IllegalTransition


class JobState(StrEnum):
    PENDING = "PENDING"
    WAITING = "WAITING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def terminal(self) -> bool:
        return self in _JOB_TERMINAL

    @property
    def active(self) -> bool:
        """Holds or is about to hold capacity on a node."""
        return self in (JobState.PENDING, JobState.SCHEDULED, JobState.RUNNING)


_JOB_TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.SKIPPED}
)

J = JobState
# Order matters only for documentation; every allowed edge is listed once.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    J.WAITING: frozenset({J.PENDING, J.SKIPPED, J.CANCELLED}),
    J.PENDING: frozenset({J.SCHEDULED, J.CANCELLED, J.SKIPPED, J.FAILED}),
    J.SCHEDULED: frozenset({J.RUNNING, J.PENDING, J.CANCELLED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.CANCELLED, J.PENDING}),
    J.SUCCEEDED: frozenset(),
    # A run retry (issue 3) re-queues failed and cancelled jobs as a new attempt.
    J.FAILED: frozenset({J.PENDING, J.WAITING}),
    J.CANCELLED: frozenset({J.PENDING, J.WAITING}),
    J.SKIPPED: frozenset({J.PENDING, J.WAITING}),
}


class StepState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (StepState.PENDING, StepState.RUNNING)


S = StepState
STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    S.PENDING: frozenset({S.RUNNING, S.SKIPPED, S.CANCELLED}),
    # RUNNING -> RUNNING is a step retry: a new attempt of the same step.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.RUNNING}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.RUNNING}),
    S.SKIPPED: frozenset(),
    S.CANCELLED: frozenset(),
}


class RunState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


R = RunState
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    R.PENDING: frozenset({R.RUNNING, R.CANCELLED, R.FAILED}),
    R.RUNNING: frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset({R.RUNNING}),
    R.CANCELLED: frozenset({R.RUNNING}),
}


def check_job(entity: str, current: JobState, target: JobState) -> None:
    """Raise IllegalTransition (ORC-STATE) unless ``current -> target`` is allowed."""
    if target not in JOB_TRANSITIONS[current]:
        raise IllegalTransition(entity, current.value, target.value)


def check_step(entity: str, current: StepState, target: StepState) -> None:
    """Raise IllegalTransition unless the step may move from ``current`` to ``target``."""
    if target not in STEP_TRANSITIONS[current]:
        raise IllegalTransition(entity, current.value, target.value)


def check_run(entity: str, current: RunState, target: RunState) -> None:
    """Raise IllegalTransition unless the run may move from ``current`` to ``target``."""
    if target not in RUN_TRANSITIONS[current]:
        raise IllegalTransition(entity, current.value, target.value)
