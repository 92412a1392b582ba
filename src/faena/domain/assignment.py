"""What the control plane and an agent exchange about one job attempt.

In the embedded shape these travel as Python objects; in the distributed shape the same
shapes are the JSON bodies of the agent protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from faena.domain.spec import JobSpec, job_from_dict

JobOutcome = Literal["success", "failure", "cancelled"]
StepOutcome = Literal["success", "failure", "cancelled"]


@dataclass(frozen=True)
class Assignment:
    """A job attempt handed to a node: the concrete job and what its expressions see."""

    assignment_id: str
    run_id: str
    job_id: str
    attempt: int
    job: JobSpec
    context: dict[str, Any]
    pipeline_env: dict[str, str] = field(default_factory=dict)
    shell: str | None = None
    working_directory: str | None = None
    tenant_id: str = "default"
    # Seconds a failed step's worker stays alive for debugging (0: not at all).
    pause_on_failure: float = 0.0


@dataclass(frozen=True)
class StepResult:
    """How one attempt of a step ended, as the agent reports it."""

    outcome: StepOutcome
    exit_code: int | None = None
    duration_ms: float = 0.0
    error_code: str | None = None
    message: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    continue_on_error: bool = False
    will_retry: bool = False


@dataclass(frozen=True)
class JobResult:
    """How a job attempt ended on its node."""

    outcome: JobOutcome
    error_code: str | None = None
    message: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def assignment_to_dict(a: Assignment) -> dict[str, Any]:
    """The JSON body an agent receives for an accepted assignment."""
    return asdict(a)


def assignment_from_dict(data: dict[str, Any]) -> Assignment:
    names = {f.name for f in fields(Assignment)}
    known = {k: v for k, v in data.items() if k in names}
    return Assignment(**{**known, "job": job_from_dict(data["job"])})


def step_result_from_dict(data: dict[str, Any]) -> StepResult:
    names = {f.name for f in fields(StepResult)}
    return StepResult(**{k: v for k, v in data.items() if k in names})


def job_result_from_dict(data: dict[str, Any]) -> JobResult:
    names = {f.name for f in fields(JobResult)}
    return JobResult(**{k: v for k, v in data.items() if k in names})
