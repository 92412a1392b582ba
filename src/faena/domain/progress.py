"""DAG progression: given a run's state, what happens next.

Pure functions over PipelineRun and PipelineSpec that return ``(subject, payload)``
actions. The orchestrator turns each action into an event, applies it, and asks again
until nothing is left, so every decision is recorded in the event log.
"""

from __future__ import annotations

import posixpath
from typing import Any

from faena.domain import expressions
from faena.domain.matrix import expand_job, matrix_from_value
from faena.domain.run import CANCELLED, FAILURE, JobRun, PipelineRun
from faena.domain.spec import JobSpec, PipelineSpec, with_matrix
from faena.domain.states import JobState, RunState

Action = tuple[str, dict[str, Any]]


def plan_jobs(run_id: str, spec: PipelineSpec, first_index: int = 1) -> dict[str, Any]:
    """The jobs a new run starts with: static matrices expanded, dynamic ones deferred."""
    jobs: list[dict[str, Any]] = []
    templates: dict[str, list[str]] = {}
    index = first_index
    for key, job in spec.jobs.items():
        if job.strategy is not None and job.strategy.dynamic:
            templates[key] = list(job.needs)
            continue
        concrete = expand_job(job, job.strategy) if job.strategy is not None else [job]
        for c in concrete:
            jobs.append(job_entry(f"{run_id}.{index}", c))
            index += 1
    return {"jobs": jobs, "templates": templates}


def job_entry(job_id: str, job: JobSpec) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "key": job.key,
        "name": job.name,
        "needs": list(job.needs),
        "steps": [display_name(s.name, {"matrix": job.matrix}) for s in job.steps],
        "services": [s.name for s in job.services],
        "template": job.template,
        "matrix": dict(job.matrix),
        "continue_on_error": job.continue_on_error,
    }


def display_name(text: str, context: dict[str, Any]) -> str:
    """A name with its ``${{ }}`` filled in when the context has all it reads; as written
    otherwise (a name must not show an empty string for an output not known yet)."""
    if "${{" not in text:
        return text
    try:
        for _, source in expressions.find_expressions(text):
            for ref in expressions.references(expressions.parse(source)):
                if ref and ref[0].lower() not in context:
                    return text
        return expressions.interpolate(text, context)
    except expressions.ExpressionError:
        return text


def concrete_job(spec: PipelineSpec, job: JobRun) -> JobSpec:
    """The JobSpec a run's job executes (its matrix values applied)."""
    if job.template is None:
        return spec.jobs[job.key]
    return with_matrix(spec.jobs[job.template], job.key, job.name, job.matrix)


def status(run: PipelineRun, needs: list[str]) -> dict[str, bool]:
    """``success()``/``failure()``/``cancelled()`` as seen by a job with these needs."""
    failed = any(
        any(j.result == FAILURE and not j.continue_on_error for j in run.group_jobs(k))
        for k in run.ancestors(needs)
    )
    return {
        "success": all(run.group_succeeded(k) for k in needs) and not run.cancel_requested,
        "failure": failed,
        "cancelled": run.cancel_requested,
    }


def expression_context(run: PipelineRun, spec: PipelineSpec, job: JobSpec) -> dict[str, Any]:
    """What a job's expressions can read: env, matrix, needs, run facts and status."""
    return {
        "env": {**spec.env, **job.env},
        "matrix": dict(job.matrix),
        "needs": {
            k: {"result": run.group_result(k), "outputs": run.group_outputs(k)} for k in job.needs
        },
        "faena": {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "job": job.key,
            "source_dir": posixpath.dirname(spec.source),
        },
        "__status__": status(run, job.needs),
    }


def condition(source: str | None) -> str:
    """A job or step ``if`` with GitHub's implicit ``success() &&`` when no status call."""
    if not source:
        return "success()"
    inner = expressions.strip_wrapper(source)
    if expressions.uses_status_function(expressions.parse(inner)):
        return inner
    return f"success() && ({inner})"


def _survives_cancel(source: str | None) -> bool:
    if not source:
        return False
    inner = expressions.strip_wrapper(source)
    tree = expressions.parse(inner)
    return expressions.uses_status_function(tree) and (
        "always()" in inner.replace(" ", "") or "cancelled()" in inner.replace(" ", "")
    )


def advance(run: PipelineRun, spec: PipelineSpec) -> list[Action]:
    """The next round of actions; empty when the run waits on something outside."""
    if run.state is RunState.PENDING:
        return [("ci.run.v1.started", {"run_id": run.run_id})]
    if run.state.terminal:
        return []
    actions = _expansions(run, spec)
    if actions:
        return actions
    actions = _cancellations(run, spec)
    actions += _releases(run, spec, {j for _, p in actions if (j := p.get("job_id"))})
    if actions:
        return actions
    if run.is_finished():
        return [_completion(run)]
    return []


def _needs_done(run: PipelineRun, needs: list[str]) -> bool:
    return all(run.group_done(k) for k in needs)


def _expansions(run: PipelineRun, spec: PipelineSpec) -> list[Action]:
    actions: list[Action] = []
    for key, needs in list(run.templates.items()):
        if not _needs_done(run, needs):
            continue
        template = spec.jobs[key]
        first = len(run.jobs) + 1
        ctx = expression_context(run, spec, template)
        error: str | None = None
        concrete: list[JobSpec] = []
        try:
            if not _should_run(run, template.if_, ctx):
                concrete = [template]
            else:
                assert template.strategy is not None and template.strategy.expression
                value = expressions.evaluate(template.strategy.expression, ctx)
                matrix = matrix_from_value(value)
                base = template.strategy
                matrix = type(matrix)(
                    axes=matrix.axes,
                    include=matrix.include,
                    exclude=matrix.exclude,
                    fail_fast=base.fail_fast,
                    max_parallel=base.max_parallel,
                )
                concrete = expand_job(template, matrix)
        except (ValueError, expressions.ExpressionError) as exc:
            error = f"strategy.matrix: {exc}"
            concrete = [template]
        entries = [job_entry(f"{run.run_id}.{first + i}", c) for i, c in enumerate(concrete)]
        actions.append(("ci.job.v1.expanded", {"job_id": key, "template": key, "jobs": entries}))
        if error is not None:
            job_id = entries[0]["job_id"]
            actions.append(request_action(job_id, 1, "start"))
            actions.append(_fail(job_id, 1, "ORC-VALID", error))
        # One template per round: the next one's job ids depend on this one being applied.
        return actions
    return actions


def _should_run(run: PipelineRun, source: str | None, ctx: dict[str, Any]) -> bool:
    return bool(expressions.evaluate(condition(source), ctx))


def request_action(
    job_id: str, attempt: int, reason: str, not_before: float | None = None
) -> Action:
    """``JobRequested`` for an attempt (``reason``: start, retry, infra, rejected)."""
    payload: dict[str, Any] = {
        "job_id": job_id,
        "spec_hash": "",
        "attempt": attempt,
        "reason": reason,
    }
    if not_before is not None:
        payload["not_before"] = not_before
    return ("ci.job.v1.requested", payload)


def _fail(job_id: str, attempt: int, code: str, message: str) -> Action:
    return (
        "ci.job.v1.failed",
        {
            "job_id": job_id,
            "attempt": attempt,
            "error_code": code,
            "retryable": False,
            "message": message,
        },
    )


def _releases(run: PipelineRun, spec: PipelineSpec, touched: set[str]) -> list[Action]:
    actions: list[Action] = []
    active_by_group: dict[str, int] = {}
    limited = any(j.strategy and j.strategy.max_parallel for j in spec.jobs.values())
    if limited:
        for j in run.active_jobs():
            active_by_group[j.group] = active_by_group.get(j.group, 0) + 1
    for job in run.waiting_jobs():
        if job.job_id in touched:
            continue
        if not _needs_done(run, job.needs):
            continue
        job_spec = concrete_job(spec, job)
        if run.cancel_requested and not _survives_cancel(job_spec.if_):
            actions.append(_cancel_action(job, run.cancel_reason or "run cancelled"))
            continue
        ctx = expression_context(run, spec, job_spec)
        try:
            go = _should_run(run, job_spec.if_, ctx)
        except expressions.ExpressionError as exc:
            actions.append(request_action(job.job_id, job.attempt + 1, "start"))
            actions.append(_fail(job.job_id, job.attempt + 1, "ORC-VALID", f"if: {exc}"))
            continue
        if not go:
            actions.append(("ci.job.v1.skipped", {"job_id": job.job_id, "reason": _skip(run, job)}))
            continue
        template = spec.jobs[job.template] if job.template else None
        limit = template.strategy.max_parallel if template and template.strategy else None
        if limit is not None and active_by_group.get(job.group, 0) >= limit:
            continue
        active_by_group[job.group] = active_by_group.get(job.group, 0) + 1
        actions.append(request_action(job.job_id, job.attempt + 1, "start"))
    return actions


def _skip(run: PipelineRun, job: JobRun) -> str:
    bad = [k for k in job.needs if not run.group_succeeded(k)]
    if bad:
        return "needs not successful: " + ", ".join(f"{k} ({run.group_result(k)})" for k in bad)
    return "if condition is false"


def _cancel_action(job: JobRun, reason: str) -> Action:
    return ("ci.job.v1.cancelled", {"job_id": job.job_id, "reason": reason, "attempt": job.attempt})


def _cancellations(run: PipelineRun, spec: PipelineSpec) -> list[Action]:
    """Cancel what a run cancel or a matrix fail-fast leaves without purpose."""
    doomed: dict[str, str] = {}
    if run.cancel_requested:
        for j in run.active_jobs():
            # Jobs released by `if: always()` or `cancelled()` run to their end.
            if not _survives_cancel(concrete_job(spec, j).if_):
                doomed[j.job_id] = run.cancel_reason or "run cancelled"
    for key, job in spec.jobs.items():
        if job.strategy is None or not job.strategy.fail_fast:
            continue
        group = run.group_jobs(key)
        failed = [j for j in group if j.result == FAILURE and not j.continue_on_error]
        if not failed:
            continue
        for j in group:
            if not j.state.terminal:
                doomed.setdefault(j.job_id, f"fail-fast: {failed[0].name} failed")
    actions: list[Action] = []
    for job_id, reason in doomed.items():
        j = run.jobs[job_id]
        if j.state in (JobState.WAITING, JobState.PENDING):
            actions.append(_cancel_action(j, reason))
        elif j.state is JobState.SCHEDULED:
            actions.append(revoke_action(j, reason))
            actions.append(_cancel_action(j, reason))
        elif j.state is JobState.RUNNING and not j.cancel_requested:
            actions.append(revoke_action(j, reason))
    return actions


def revoke_action(job: JobRun, reason: str) -> Action:
    """Take a placed job back from its node (cancel, fail-fast)."""
    return (
        "ci.assignment.v1.revoked",
        {
            "assignment_id": job.assignment_id,
            "job_id": job.job_id,
            "node_id": job.node_id,
            "reason": reason,
        },
    )


def _completion(run: PipelineRun) -> Action:
    failed = [j for j in run.jobs.values() if j.result == FAILURE and not j.continue_on_error]
    if run.cancel_requested:
        return (
            "ci.run.v1.cancelled",
            {"run_id": run.run_id, "reason": run.cancel_reason or "", "attempt": run.attempt},
        )
    if failed:
        names = ", ".join(j.name for j in failed[:5])
        return (
            "ci.run.v1.failed",
            {
                "run_id": run.run_id,
                "result": "failure",
                "error_code": failed[0].error_code or "EXEC-FAILED",
                "message": f"failed: {names}",
                "attempt": run.attempt,
            },
        )
    cancelled = [j for j in run.jobs.values() if j.result == CANCELLED]
    if cancelled:
        # A job cancelled on its own (not by the run) still means the run did not finish.
        names = ", ".join(j.name for j in cancelled[:5])
        return (
            "ci.run.v1.cancelled",
            {"run_id": run.run_id, "reason": f"cancelled: {names}", "attempt": run.attempt},
        )
    return (
        "ci.run.v1.completed",
        {"run_id": run.run_id, "result": "success", "attempt": run.attempt},
    )
