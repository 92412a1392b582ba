"""The PipelineRun aggregate, rebuilt by applying its events in order.

Every state change goes through ``apply``: the orchestrator applies the events it is
about to commit, and a projection rebuild applies the stored log, so both give the same
state by construction. ``apply`` enforces the FROM/TO rules and raises IllegalTransition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from faena.domain.errors import FaenaError, NotFound
from faena.domain.events import DEFAULT_TENANT, Event
from faena.domain.states import JobState, RunState, StepState, check_job, check_run, check_step

# GitHub's names for a finished job, as dependents see them in needs.<job>.result.
SUCCESS, FAILURE, CANCELLED, SKIPPED = "success", "failure", "cancelled", "skipped"


@dataclass
class StepRun:
    index: int
    name: str
    state: StepState = StepState.PENDING
    attempt: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: float | None = None
    error_code: str | None = None
    message: str | None = None
    continue_on_error: bool = False
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class JobRun:
    job_id: str
    key: str
    name: str
    needs: list[str]
    step_names: list[str]
    # Their logs follow the steps' (log index len(step_names) + i), kept when the job ends.
    service_names: list[str] = field(default_factory=list)
    template: str | None = None
    matrix: dict[str, Any] = field(default_factory=dict)
    continue_on_error: bool = False
    state: JobState = JobState.WAITING
    attempt: int = 0
    retries_used: int = 0
    infra_retries: int = 0
    assignment_id: str | None = None
    node_id: str | None = None
    worker_id: str | None = None
    queued_at: float | None = None
    not_before: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: str | None = None
    error_code: str | None = None
    message: str | None = None
    cancel_requested: bool = False
    paused_until: float | None = None  # a failed step's worker kept for `faena exec`
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepRun] = field(default_factory=list)

    @property
    def group(self) -> str:
        """The spec key dependents name in ``needs``: the template for matrix jobs."""
        return self.template or self.key

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at
        return None if end is None else max(end - self.started_at, 0.0)

    def fresh_steps(self) -> list[StepRun]:
        return [StepRun(index=i, name=n) for i, n in enumerate(self.step_names)]

    def to_row(self) -> dict[str, Any]:
        row = _shallow(self)
        row["steps"] = [_shallow(s) for s in self.steps]
        return row


def _shallow(obj: Any) -> dict[str, Any]:
    """Like ``asdict`` for flat dataclasses, without its deep copies (hot path)."""
    row = {}
    for name in _FIELDS.setdefault(type(obj), tuple(f.name for f in fields(obj))):
        value = getattr(obj, name)
        if isinstance(value, dict):
            value = dict(value)
        elif isinstance(value, list):
            value = list(value)
        row[name] = value
    return row


_FIELDS: dict[type, tuple[str, ...]] = {}


@dataclass
class PipelineRun:
    run_id: str
    pipeline: str
    spec_hash: str
    tenant_id: str = DEFAULT_TENANT
    state: RunState = RunState.PENDING
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: str | None = None
    error_code: str | None = None
    message: str | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    attempt: int = 1
    jobs: dict[str, JobRun] = field(default_factory=dict)
    # Dynamic-matrix jobs not yet expanded: spec key -> its needs.
    templates: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Indexes kept by ``add_job`` and ``_job_to`` so progression stays O(changes), not
        # O(jobs), per event on runs of thousands of jobs. Not part of the row.
        self._groups: dict[str, list[JobRun]] = {}
        self._waiting: dict[str, None] = {}
        self._open = 0

    def add_job(self, job: JobRun) -> None:
        self.jobs[job.job_id] = job
        self._groups.setdefault(job.group, []).append(job)
        if job.state is JobState.WAITING:
            self._waiting[job.job_id] = None
        if not job.state.terminal:
            self._open += 1

    def waiting_jobs(self) -> list[JobRun]:
        """WAITING jobs in creation order."""
        return [self.jobs[j] for j in self._waiting]

    # -- queries -----------------------------------------------------------------------

    def job(self, job_id: str) -> JobRun:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"run {self.run_id} has no job {job_id}") from None

    def group_jobs(self, key: str) -> list[JobRun]:
        """The run's jobs for spec key ``key`` (one, or one per matrix combination)."""
        return self._groups.get(key, [])

    def group_done(self, key: str) -> bool:
        return key not in self.templates and all(j.state.terminal for j in self.group_jobs(key))

    def group_result(self, key: str) -> str:
        """Aggregate result for ``needs.<key>.result``: failure > cancelled > skipped."""
        results = [j.result or SKIPPED for j in self.group_jobs(key)]
        if not results:
            return SKIPPED
        for r in (FAILURE, CANCELLED):
            if r in results:
                return r
        return SKIPPED if all(r == SKIPPED for r in results) else SUCCESS

    def group_succeeded(self, key: str) -> bool:
        """Whether dependents' ``success()`` holds: continue-on-error failures count."""
        jobs = self.group_jobs(key)
        return bool(jobs) and all(
            j.result == SUCCESS or (j.result == FAILURE and j.continue_on_error) for j in jobs
        )

    def group_outputs(self, key: str) -> dict[str, str]:
        merged: dict[str, str] = {}
        for j in self.group_jobs(key):
            merged.update(j.outputs)
        return merged

    def ancestors(self, keys: list[str]) -> set[str]:
        """Every spec key ``keys`` depend on, directly or not, including themselves."""
        seen: set[str] = set()
        stack = list(keys)
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            group = self._groups.get(k)
            stack.extend(group[0].needs if group else self.templates.get(k, []))
        return seen

    def retry_set(self) -> list[str]:
        """Jobs a retry runs again: failed and cancelled ones and every job downstream of
        them, except those that succeeded, which keep their results and outputs."""
        return self.downstream_unfinished(
            {j.group for j in self.jobs.values() if j.result in (FAILURE, CANCELLED)}
        )

    def downstream_unfinished(self, roots: set[str]) -> list[str]:
        """Jobs of ``roots`` and of every group downstream of them that did not succeed."""
        dependents: dict[str, set[str]] = {}
        for j in self.jobs.values():
            for need in j.needs:
                dependents.setdefault(need, set()).add(j.group)
        groups = set(roots)
        stack = list(roots)
        while stack:
            for d in dependents.get(stack.pop(), ()):
                if d not in groups:
                    groups.add(d)
                    stack.append(d)
        return [j.job_id for j in self.jobs.values() if j.group in groups and j.result != SUCCESS]

    def is_finished(self) -> bool:
        return not self.templates and self._open == 0

    def active_jobs(self) -> Iterator[JobRun]:
        return (j for j in self.jobs.values() if j.state.active)

    def to_row(self) -> dict[str, Any]:
        row = _shallow(self)
        row.pop("jobs")
        row["templates"] = {k: list(v) for k, v in self.templates.items()}
        return row

    # -- apply -------------------------------------------------------------------------

    def apply(self, event: Event) -> list[str]:
        """Apply one event; returns the ids of the jobs it changed."""
        handler = _HANDLERS.get(event.subject)
        if handler is None:
            return []
        return handler(self, event.payload, event.occurred_at)


def new_job(spec: dict[str, Any]) -> JobRun:
    job = JobRun(
        job_id=spec["job_id"],
        key=spec["key"],
        name=spec.get("name", spec["key"]),
        needs=list(spec.get("needs", [])),
        step_names=list(spec.get("steps", [])),
        service_names=list(spec.get("services", [])),
        template=spec.get("template"),
        matrix=dict(spec.get("matrix", {})),
        continue_on_error=bool(spec.get("continue_on_error", False)),
    )
    job.steps = job.fresh_steps()
    return job


Handler = Callable[[PipelineRun, dict[str, Any], float], list[str]]
_HANDLERS: dict[str, Handler] = {}


def _on(subject: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[subject] = fn
        return fn

    return register


def _job_to(run: PipelineRun, job: JobRun, target: JobState) -> None:
    check_job(f"job {job.job_id} ({job.name})", job.state, target)
    if job.state is JobState.WAITING:
        run._waiting.pop(job.job_id, None)
    if target is JobState.WAITING:
        run._waiting[job.job_id] = None
    if job.state.terminal != target.terminal:
        run._open += -1 if target.terminal else 1
    if target is not JobState.RUNNING:
        job.paused_until = None
    job.state = target


def _step(job: JobRun, p: dict[str, Any]) -> StepRun:
    index = int(p["index"])
    if not 0 <= index < len(job.steps):
        raise NotFound(f"job {job.job_id} has no step {index}")
    return job.steps[index]


@_on("ci.run.v1.requested")
def _run_requested(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    run.created_at = ts
    run.options = dict(p.get("options", {}))
    run.templates = {k: list(v) for k, v in p.get("templates", {}).items()}
    for spec in p["jobs"]:
        run.add_job(new_job(spec))
    return list(run.jobs)


@_on("ci.run.v1.started")
def _run_started(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    check_run(f"run {run.run_id}", run.state, RunState.RUNNING)
    run.state = RunState.RUNNING
    run.started_at = run.started_at or ts
    return []


def _run_end(target: RunState) -> Handler:
    def handler(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
        check_run(f"run {run.run_id}", run.state, target)
        run.state = target
        run.finished_at = ts
        run.result = p.get("result", target.value.lower())
        run.error_code = p.get("error_code")
        run.message = p.get("message") or p.get("reason")
        return []

    return handler


_HANDLERS["ci.run.v1.completed"] = _run_end(RunState.SUCCEEDED)
_HANDLERS["ci.run.v1.failed"] = _run_end(RunState.FAILED)
_HANDLERS["ci.run.v1.cancelled"] = _run_end(RunState.CANCELLED)


@_on("ci.run.v1.cancel_requested")
def _run_cancel_requested(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    run.cancel_requested = True
    run.cancel_reason = p.get("reason")
    return []


@_on("ci.run.v1.retry_requested")
def _run_retry_requested(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    """A finished run goes again: the listed jobs wait anew, the others keep their results."""
    if run.state is not RunState.RUNNING:  # a job retry may come while the run still runs
        check_run(f"run {run.run_id}", run.state, RunState.RUNNING)
        run.state = RunState.RUNNING
        run.finished_at = None
        run.result = run.error_code = run.message = None
        run.cancel_requested = False
        run.cancel_reason = None
    run.attempt = int(p.get("attempt", run.attempt + 1))
    for job_id in p["jobs"]:
        job = run.job(job_id)
        _job_to(run, job, JobState.WAITING)
        job.result = job.error_code = job.message = None
        job.started_at = job.finished_at = None
        job.assignment_id = job.node_id = job.worker_id = None
        job.cancel_requested = False
        job.outputs = {}
        job.steps = job.fresh_steps()
    return list(p["jobs"])


@_on("ci.job.v1.expanded")
def _job_expanded(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    template = p["template"]
    if template not in run.templates:
        raise FaenaError(f"job {template} is not awaiting expansion")
    del run.templates[template]
    changed = []
    for spec in p["jobs"]:
        run.add_job(new_job(spec))
        changed.append(spec["job_id"])
    return changed


@_on("ci.job.v1.requested")
def _job_requested(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    attempt = int(p.get("attempt", 1))
    if attempt <= job.attempt:
        raise FaenaError(f"job {job.job_id}: attempt {attempt} already requested")
    _job_to(run, job, JobState.PENDING)
    if p.get("reason") == "retry":
        job.retries_used += 1
    elif p.get("reason") in ("infra", "rejected"):
        job.infra_retries += 1
    job.attempt = attempt
    job.queued_at = ts
    job.not_before = p.get("not_before")
    job.assignment_id = job.node_id = job.worker_id = None
    job.started_at = job.finished_at = None
    job.result = job.error_code = job.message = None
    job.cancel_requested = False
    job.outputs = {}
    job.steps = job.fresh_steps()
    return [job.job_id]


@_on("ci.job.v1.paused")
def _job_paused(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    if job.state is JobState.RUNNING and int(p["attempt"]) == job.attempt:
        job.paused_until = float(p["until"])
    return [job.job_id]


@_on("ci.job.v1.resumed")
def _job_resumed(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    if int(p["attempt"]) == job.attempt:
        job.paused_until = None
    return [job.job_id]


@_on("ci.job.v1.skipped")
def _job_skipped(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    _job_to(run, job, JobState.SKIPPED)
    job.result = SKIPPED
    job.message = p.get("reason")
    job.finished_at = ts
    for step in job.steps:
        step.state = StepState.SKIPPED
    return [job.job_id]


@_on("ci.job.v1.cancelled")
def _job_cancelled(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    _job_to(run, job, JobState.CANCELLED)
    job.result = CANCELLED
    job.message = p.get("reason")
    job.finished_at = ts
    for step in job.steps:
        if not step.state.terminal:
            step.state = StepState.CANCELLED
    return [job.job_id]


@_on("ci.assignment.v1.created")
def _assignment_created(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    _job_to(run, job, JobState.SCHEDULED)
    job.assignment_id = p["assignment_id"]
    job.node_id = p["node_id"]
    return [job.job_id]


@_on("ci.assignment.v1.accepted")
def _assignment_accepted(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    _job_to(run, job, JobState.RUNNING)
    job.started_at = ts
    return [job.job_id]


@_on("ci.assignment.v1.revoked")
def _assignment_revoked(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    job.cancel_requested = True
    return [job.job_id]


@_on("ci.job.v1.started")
def _job_started(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    job.worker_id = p["worker_id"]
    return [job.job_id]


@_on("ci.worker.v1.created")
def _worker_created(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    job.worker_id = p["worker_id"]
    return [job.job_id]


@_on("ci.worker.v1.failed")
def _worker_failed(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    job.message = p.get("message")
    return [job.job_id]


@_on("ci.step.v1.started")
def _step_started(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    step = _step(job, p)
    check_step(f"step {p['step_id']}", step.state, StepState.RUNNING)
    step.state = StepState.RUNNING
    step.attempt = int(p.get("attempt", 1))
    step.started_at = ts
    step.finished_at = step.exit_code = step.duration_ms = None
    step.error_code = step.message = None
    return [job.job_id]


def _step_end(run: PipelineRun, p: dict[str, Any], ts: float, target: StepState) -> list[str]:
    job = run.job(p["job_id"])
    step = _step(job, p)
    check_step(f"step {p['step_id']}", step.state, target)
    step.state = target
    step.finished_at = ts
    step.exit_code = p.get("exit_code")
    step.duration_ms = p.get("duration_ms")
    step.error_code = p.get("error_code")
    step.message = p.get("message")
    step.continue_on_error = bool(p.get("continue_on_error", False))
    step.outputs = dict(p.get("outputs", {}))
    return [job.job_id]


@_on("ci.step.v1.completed")
def _step_completed(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    return _step_end(run, p, ts, StepState.SUCCEEDED)


@_on("ci.step.v1.failed")
def _step_failed(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    target = StepState.CANCELLED if p.get("cancelled") else StepState.FAILED
    return _step_end(run, p, ts, target)


@_on("ci.step.v1.skipped")
def _step_skipped(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    step = _step(job, p)
    check_step(f"step {p['step_id']}", step.state, StepState.SKIPPED)
    step.state = StepState.SKIPPED
    step.message = p.get("reason")
    return [job.job_id]


@_on("ci.job.v1.completed")
def _job_completed(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    _job_to(run, job, JobState.SUCCEEDED)
    job.result = SUCCESS
    job.finished_at = ts
    job.outputs = dict(p.get("outputs", {}))
    return [job.job_id]


@_on("ci.job.v1.failed")
def _job_failed(run: PipelineRun, p: dict[str, Any], ts: float) -> list[str]:
    job = run.job(p["job_id"])
    job.error_code = p.get("error_code")
    job.message = p.get("message")
    if p.get("will_retry"):
        # The attempt ended; the job goes back to PENDING with the JobRequested that follows.
        job.finished_at = ts
        return [job.job_id]
    _job_to(run, job, JobState.FAILED)
    job.result = FAILURE
    job.finished_at = ts
    job.outputs = dict(p.get("outputs", {}))
    return [job.job_id]


def rebuild(run_id: str, events: list[Event]) -> PipelineRun:
    """Fold a run's event log into its state."""
    if not events or events[0].subject != "ci.run.v1.requested":
        raise NotFound(f"no events for run {run_id}")
    first = events[0].payload
    run = PipelineRun(
        run_id=run_id,
        pipeline=first["pipeline"],
        spec_hash=first["spec_hash"],
        tenant_id=events[0].tenant_id,
    )
    for event in events:
        run.apply(event)
    return run
