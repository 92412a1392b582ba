"""The pipeline specification: what a user wrote, validated and normalised.

Readers in ``faena.spec`` build these from files; the orchestrator expands matrices and
runs them. Durations are seconds (float), memory is bytes, cpu is cores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Backoff = Literal["fixed", "linear", "exponential"]
BACKOFFS: tuple[str, ...] = ("fixed", "linear", "exponential")
MAX_BACKOFF_DELAY = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step or job runs and how long to wait between attempts."""

    max_attempts: int = 1
    backoff: Backoff = "fixed"
    delay: float = 0.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry)."""
        n = max(attempt - 1, 1)
        if self.backoff == "linear":
            value = self.delay * n
        elif self.backoff == "exponential":
            value = self.delay * (2 ** (n - 1))
        else:
            value = self.delay
        return min(value, MAX_BACKOFF_DELAY)


@dataclass(frozen=True)
class Resources:
    """What a job asks of a node; zero means no particular demand."""

    cpu: float = 0.0
    memory: int = 0
    gpu: int = 0
    pids: int = 0


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a service is ready: ``cmd`` (a shell command in its container) exits 0."""

    cmd: str
    interval: float = 1.0
    timeout: float = 5.0
    retries: int = 60


@dataclass(frozen=True)
class ServiceSpec:
    """A sidecar container next to a job (a database, a cache), reached at localhost."""

    name: str
    image: str
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    health: HealthCheck | None = None


@dataclass(frozen=True)
class StepSpec:
    """One command in a job. ``if_`` holds the expression source without ``${{ }}``."""

    name: str
    run: str
    id: str | None = None
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    if_: str | None = None
    continue_on_error: bool = False
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class MatrixSpec:
    """A job's ``strategy``: static axes, or an expression expanded when its needs finish."""

    axes: dict[str, list[Any]] = field(default_factory=dict)
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    expression: str | None = None
    fail_fast: bool = True
    max_parallel: int | None = None

    @property
    def dynamic(self) -> bool:
        return self.expression is not None


@dataclass(frozen=True)
class JobSpec:
    """One job of the DAG, before (template) or after matrix expansion."""

    key: str
    name: str
    steps: list[StepSpec]
    needs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    if_: str | None = None
    strategy: MatrixSpec | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    resources: Resources = field(default_factory=Resources)
    runs_on: list[str] = field(default_factory=list)
    image: str | None = None
    services: list[ServiceSpec] = field(default_factory=list)
    # Seconds to keep a failed job's stopped worker for inspection before it is reaped.
    keep_failed: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    shell: str | None = None
    working_directory: str | None = None
    continue_on_error: bool = False
    # Seconds to keep a failed step's worker alive for `faena exec` (debug: pause-on-failure).
    pause_on_failure: float | None = None
    # Set on jobs produced by matrix expansion.
    matrix: dict[str, Any] = field(default_factory=dict)
    template: str | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """A whole pipeline: jobs in file order, keyed by their id."""

    name: str
    jobs: dict[str, JobSpec]
    env: dict[str, str] = field(default_factory=dict)
    shell: str | None = None
    working_directory: str | None = None
    source: str = ""
    pause_on_failure: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` gives the same spec back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        jobs = {k: job_from_dict(v) for k, v in data["jobs"].items()}
        return cls(**{**_known(cls, data), "jobs": jobs})

    def spec_hash(self, data: dict[str, Any] | None = None) -> str:
        """sha256 of the canonical JSON form; events carry it instead of the spec.
        ``data``: this spec's ``to_dict()``, when the caller has it already."""
        form = self.to_dict() if data is None else data
        canonical = json.dumps(form, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def job_from_dict(data: dict[str, Any]) -> JobSpec:
    """A JobSpec from its ``asdict`` form (as it travels to a remote agent)."""
    steps = [
        StepSpec(**{**_known(StepSpec, s), "retry": RetryPolicy(**s.get("retry") or {})})
        for s in data["steps"]
    ]
    strategy = MatrixSpec(**data["strategy"]) if data.get("strategy") else None
    return JobSpec(
        **{
            **_known(JobSpec, data),
            "steps": steps,
            "strategy": strategy,
            "retry": RetryPolicy(**data.get("retry") or {}),
            "resources": Resources(**data.get("resources") or {}),
            "services": [service_from_dict(s) for s in data.get("services") or ()],
        }
    )


def service_from_dict(data: dict[str, Any]) -> ServiceSpec:
    """A ServiceSpec from its ``asdict`` form."""
    health = data.get("health")
    return ServiceSpec(
        **{**_known(ServiceSpec, data), "health": HealthCheck(**health) if health else None}
    )


def with_matrix(job: JobSpec, key: str, name: str, values: dict[str, Any]) -> JobSpec:
    """A concrete job produced from a matrix template."""
    return replace(job, key=key, name=name, matrix=dict(values), strategy=None, template=job.key)
