"""The FROM/TO rules of DESIGN.md, exhaustively and as properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faena.domain.errors import ErrorCode, IllegalTransition
from faena.domain.states import (
    JOB_TRANSITIONS,
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    JobState,
    RunState,
    StepState,
    check_job,
    check_run,
    check_step,
)

J = JobState

# DESIGN.md, "States": the edges a job may take while a run is live.
DESIGNED = {
    (J.PENDING, J.SCHEDULED), (J.PENDING, J.CANCELLED), (J.PENDING, J.SKIPPED),
    (J.PENDING, J.FAILED),
    (J.WAITING, J.PENDING), (J.WAITING, J.SKIPPED), (J.WAITING, J.CANCELLED),
    (J.SCHEDULED, J.RUNNING), (J.SCHEDULED, J.PENDING), (J.SCHEDULED, J.CANCELLED),
    (J.RUNNING, J.SUCCEEDED), (J.RUNNING, J.FAILED), (J.RUNNING, J.CANCELLED),
    (J.RUNNING, J.PENDING),
}  # fmt: skip


@pytest.mark.parametrize("source", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_job_edges_match_design(source: JobState, target: JobState) -> None:
    allowed = target in JOB_TRANSITIONS[source]
    if (source, target) in DESIGNED:
        assert allowed
    elif not source.terminal:
        assert not allowed, f"{source} -> {target} is not in DESIGN.md"
    if allowed:
        check_job("job", source, target)
    else:
        with pytest.raises(IllegalTransition) as err:
            check_job("job", source, target)
        assert err.value.code is ErrorCode.ORC_STATE
        assert f"{source.value} -> {target.value}" in str(err.value)


def test_succeeded_is_final() -> None:
    assert JOB_TRANSITIONS[J.SUCCEEDED] == frozenset()
    assert RUN_TRANSITIONS[RunState.SUCCEEDED] == frozenset()


def test_terminal_and_active_partition() -> None:
    terminal = {s for s in JobState if s.terminal}
    assert terminal == {J.SUCCEEDED, J.FAILED, J.CANCELLED, J.SKIPPED}
    assert {s for s in JobState if s.active} == {J.PENDING, J.SCHEDULED, J.RUNNING}


@given(st.lists(st.sampled_from(list(JobState)), max_size=30))
def test_any_walk_either_follows_rules_or_raises(path: list[JobState]) -> None:
    state = J.WAITING
    for target in path:
        if target in JOB_TRANSITIONS[state]:
            check_job("j", state, target)
            state = target
        else:
            with pytest.raises(IllegalTransition):
                check_job("j", state, target)
    assert isinstance(state, JobState)


@given(st.lists(st.sampled_from(list(StepState)), max_size=20))
def test_step_walks(path: list[StepState]) -> None:
    state = StepState.PENDING
    for target in path:
        try:
            check_step("s", state, target)
        except IllegalTransition:
            assert target not in STEP_TRANSITIONS[state]
            continue
        assert target in STEP_TRANSITIONS[state]
        state = target


def test_run_cannot_skip_running() -> None:
    with pytest.raises(IllegalTransition):
        check_run("r", RunState.PENDING, RunState.SUCCEEDED)
    check_run("r", RunState.PENDING, RunState.RUNNING)
    check_run("r", RunState.RUNNING, RunState.SUCCEEDED)
