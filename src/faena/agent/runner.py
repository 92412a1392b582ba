"""Runs one job attempt: worker up, steps in order, outputs, worker down, report.

Step semantics follow GitHub Actions: a step runs when its ``if`` holds (default
``success()``), a failure skips later steps unless they ask for ``failure()`` or
``always()``, ``continue-on-error`` keeps the job going, ``retry`` re-runs the step in the
same worker, and the worker is destroyed whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from faena.agent.hashfiles import hash_files
from faena.agent.port import ControlPlane
from faena.domain import expressions
from faena.domain.assignment import Assignment, JobResult, StepResult
from faena.domain.errors import ErrorCode, FaenaError
from faena.domain.events import new_id
from faena.domain.progress import condition, display_name
from faena.domain.spec import StepSpec
from faena.periodic import PeriodicFlush
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputLine,
    OutputSink,
    PathEscapeError,
    ProviderError,
    Worker,
    WorkerProvider,
    WorkerRequest,
)

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """The state of a running job attempt that a revocation needs to reach."""

    worker: Worker | None = None
    exec_id: str | None = None
    revoked: bool = False
    # Set on revocation: wakes a step waiting out its retry back-off.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Debugging a failed step: its last exec (env, shell, directory) and the pause.
    last: ExecRequest | None = None
    paused_until: float | None = None
    paused_once: bool = False
    resume: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _JobState:
    failed: bool = False
    timed_out: bool = False
    error_code: str | None = None
    message: str | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


class LogBuffer:
    """Batches a step's output lines for the control plane."""

    def __init__(
        self, control: ControlPlane, a: Assignment, index: int, limit: int, interval: float
    ) -> None:
        self._control = control
        self._a = a
        self._index = index
        self._limit = limit
        self._interval = interval
        self._lines: list[OutputLine] = []
        self._last = time.monotonic()
        # Output followed by silence must not wait for the next line to be sent.
        self._periodic = PeriodicFlush(self.flush, interval, "step-output")

    def __enter__(self) -> LogBuffer:
        self._periodic.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._periodic.cancel()

    async def add(self, line: OutputLine) -> None:
        self._lines.append(line)
        if len(self._lines) >= self._limit or time.monotonic() - self._last >= self._interval:
            await self.flush()

    async def note(self, text: str) -> None:
        """A line from faena itself, shown with the step's output."""
        await self.add(OutputLine("stderr", f"[faena] {text}", time.time()))

    async def flush(self) -> None:
        self._last = time.monotonic()
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        await self._control.logs(
            self._a.run_id, self._a.job_id, self._a.attempt, self._index, lines
        )


class JobRunner:
    def __init__(
        self,
        provider: WorkerProvider,
        control: ControlPlane,
        *,
        labels: tuple[str, ...] = (),
        log_batch: int = 500,
        log_interval: float = 0.1,
    ) -> None:
        self._provider = provider
        self._control = control
        self._labels = labels
        self._log_batch = log_batch
        self._log_interval = log_interval
        self._live: dict[str, _Live] = {}

    @property
    def running(self) -> list[str]:
        """Assignment ids of the job attempts running here."""
        return list(self._live)

    async def revoke(self, assignment_id: str) -> None:
        """Stop the job attempt of this assignment, if it runs here."""
        live = self._live.get(assignment_id)
        if live is None:
            return
        live.revoked = True
        live.wakeup.set()
        if live.worker is not None and live.exec_id is not None:
            await self._provider.cancel(live.worker, live.exec_id)

    async def resume(self, assignment_id: str) -> None:
        """End the debugging pause of this assignment's job, if it is paused here."""
        live = self._live.get(assignment_id)
        if live is not None:
            live.resume.set()

    async def debug_exec(
        self, assignment_id: str, exec_id: str, command: str, sink: OutputSink
    ) -> int:
        """Run ``command`` in the kept worker of a paused job, with the failed step's env
        and directory; returns its exit code (124 if the pause ended first)."""
        live = self._live.get(assignment_id)
        if live is None or live.paused_until is None or live.worker is None:
            raise FaenaError("the job is not paused here", code=ErrorCode.ORC_STATE)
        last = live.last
        request = ExecRequest(
            exec_id=f"debug-{exec_id}",
            script=command,
            shell=last.shell if last else None,
            env=dict(last.env) if last else {},
            working_directory=last.working_directory if last else None,
            timeout=max(live.paused_until - time.time(), 0.001),
        )
        result = await self._provider.exec(live.worker, request, sink)
        return 124 if result.timed_out else result.exit_code

    async def _pause(self, a: Assignment, live: _Live, buf: LogBuffer) -> None:
        live.paused_once = True
        until = time.time() + a.pause_on_failure
        live.paused_until = until
        await self._control.job_paused(a.assignment_id, a.job_id, until)
        ref = f"{a.run_id} {a.job_id}"
        workspace = live.worker.workspace if live.worker else "?"
        await buf.note(
            f"paused for debugging for {a.pause_on_failure:g}s, workspace kept at {workspace}; "
            f"on a server: faena exec {ref} -- CMD, and faena exec --resume {ref} to end it"
        )
        await buf.flush()
        waits = [asyncio.create_task(live.resume.wait()), asyncio.create_task(live.wakeup.wait())]
        try:
            await asyncio.wait(waits, timeout=a.pause_on_failure,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for t in waits:
                t.cancel()
        reason = "cancelled" if live.revoked else "resumed" if live.resume.is_set() else "timeout"
        live.paused_until = None
        await buf.note(f"pause ended ({reason}); the job finishes as failed")
        await buf.flush()
        await self._control.job_resumed(a.assignment_id, a.job_id, reason)

    async def run(self, assignment_id: str, job_id: str) -> None:
        """Run the assignment to the end and report it; never raises for job failures."""
        live = self._live.setdefault(assignment_id, _Live())
        worker_id = new_id()
        accepted = False
        try:
            a = await self._control.accept(assignment_id, job_id, worker_id)
            if a is None:
                return
            accepted = True
            await self._run_accepted(a, worker_id, live)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or an unreachable control plane must not leave the job RUNNING forever.
            log.exception("job %s: agent error", job_id)
            if accepted:
                with contextlib.suppress(Exception):
                    await self._control.job_finished(
                        assignment_id,
                        job_id,
                        JobResult("failure", ErrorCode.ORC_INFRA.value, f"agent error: {exc}"),
                    )
        finally:
            self._live.pop(assignment_id, None)

    async def _run_accepted(self, a: Assignment, worker_id: str, live: _Live) -> None:
        job = a.job
        service_logs: list[tuple[str, list[OutputLine]]] = []

        async def keep_service_log(name: str, lines: list[OutputLine]) -> None:
            # Only kept here: the provider hands them over inside destroy, under its timeout.
            service_logs.append((name, lines))

        request = WorkerRequest(
            worker_id,
            a.run_id,
            a.job_id,
            job.image,
            self._labels,
            resources=job.resources,
            services=tuple(job.services),
            runs_on=tuple(job.runs_on),
            service_output=keep_service_log if job.services else None,
        )
        try:
            worker = await self._provider.create(request)
        except ProviderError as exc:
            with contextlib.suppress(ProviderError):
                await self._provider.destroy(Worker(worker_id, self._provider.name, ""))
            await self._send_service_logs(a, service_logs)
            await self._control.worker_failed(
                a.assignment_id, a.job_id, worker_id, exc.message, exc.retryable
            )
            return
        live.worker = worker
        state = _JobState()
        try:
            await self._control.worker_created(
                a.assignment_id, a.job_id, worker_id, worker.provider, dict(worker.info)
            )
            await self._run_steps(a, worker, live, state)
        finally:
            await asyncio.shield(self._destroy(a, worker, 1 if state.failed else 0))
            await asyncio.shield(self._send_service_logs(a, service_logs))
        if live.revoked:
            result = JobResult("cancelled", message="cancelled")
        elif state.failed:
            result = JobResult("failure", state.error_code, state.message, state.outputs)
        else:
            result = JobResult("success", outputs=state.outputs)
        await self._control.job_finished(a.assignment_id, a.job_id, result)

    async def _destroy(self, a: Assignment, worker: Worker, code: int) -> None:
        # A failed job's worker may stay (stopped) for inspection: keep-failed.
        keep_for = a.job.keep_failed if code else None
        try:
            await self._provider.destroy(worker, keep_for)
        except ProviderError:
            log.exception("could not destroy worker %s", worker.worker_id)
        await self._control.worker_terminated(a.assignment_id, a.job_id, worker.worker_id, code)

    async def _send_service_logs(
        self, a: Assignment, logs: list[tuple[str, list[OutputLine]]]
    ) -> None:
        """Each service's log under its own section, after the steps' (index past them)."""
        names = [s.name for s in a.job.services]
        for name, lines in logs:
            index = len(a.job.steps) + (names.index(name) if name in names else len(names))
            try:
                await self._control.logs(a.run_id, a.job_id, a.attempt, index, lines)
            except Exception:
                log.warning("job %s: could not keep the log of service %s", a.job_id, name,
                            exc_info=True)  # fmt: skip
        logs.clear()

    async def _run_steps(self, a: Assignment, worker: Worker, live: _Live, st: _JobState) -> None:
        job = a.job
        deadline = time.monotonic() + job.timeout if job.timeout else None
        env_base = {**a.pipeline_env, **job.env}
        for index, step in enumerate(job.steps):
            ctx = self._context(a, env_base, st, live)
            buf = LogBuffer(self._control, a, index, self._log_batch, self._log_interval)
            try:
                go = bool(expressions.evaluate(condition(step.if_), ctx))
            except expressions.ExpressionError as exc:
                await self._fail_without_running(a, index, buf, st, f"if: {exc}")
                continue
            if not go or (
                deadline is not None and time.monotonic() >= deadline and not _always(step.if_)
            ):
                reason = "job timed out" if st.timed_out else "if condition is false"
                await self._control.step_skipped(a.assignment_id, a.job_id, index, reason)
                st.steps[step.id or f"_{index}"] = {
                    "outcome": "skipped",
                    "conclusion": "skipped",
                    "outputs": {},
                }
                continue
            with buf:
                await self._run_step(a, worker, live, st, index, step, ctx, env_base, deadline,
                                     buf)  # fmt: skip
        self._collect_outputs(a, st, live)

    def _context(
        self, a: Assignment, env: dict[str, str], st: _JobState, live: _Live
    ) -> dict[str, Any]:
        ctx = {
            **a.context,
            "env": env,
            "steps": st.steps,
            "job": {"status": "failure" if st.failed else "success"},
            "__status__": {
                "success": not st.failed and not live.revoked,
                "failure": st.failed,
                "cancelled": live.revoked,
            },
        }
        if live.worker is not None and Path(live.worker.workspace).is_dir():
            root = Path(live.worker.workspace)
            ctx[expressions.HASH_FILES_KEY] = lambda patterns: hash_files(root, patterns)
        return ctx

    async def _fail_without_running(
        self, a: Assignment, index: int, buf: LogBuffer, st: _JobState, message: str
    ) -> None:
        if not await self._control.step_started(a.assignment_id, a.job_id, index, 1):
            return
        await buf.note(message)
        await buf.flush()
        await self._control.step_finished(
            a.assignment_id,
            a.job_id,
            index,
            1,
            StepResult("failure", error_code=ErrorCode.ORC_VALID.value, message=message),
        )
        st.failed = True
        st.error_code, st.message = ErrorCode.ORC_VALID.value, message

    async def _run_step(
        self,
        a: Assignment,
        worker: Worker,
        live: _Live,
        st: _JobState,
        index: int,
        step: StepSpec,
        ctx: dict[str, Any],
        env_base: dict[str, str],
        deadline: float | None,
        buf: LogBuffer,
    ) -> None:
        policy = step.retry
        attempt = 0
        while True:
            attempt += 1
            if not await self._control.step_started(a.assignment_id, a.job_id, index, attempt):
                live.revoked = True
                return
            outcome, result = await self._exec(
                a, worker, live, index, step, attempt, ctx, env_base, deadline, buf
            )
            await buf.flush()
            retry = (
                outcome.outcome == "failure"
                and attempt < policy.max_attempts
                and not live.revoked
                and not st.timed_out
            )
            if retry:
                outcome = replace(outcome, will_retry=True)
            elif outcome.outcome == "failure" and step.continue_on_error:
                outcome = replace(outcome, continue_on_error=True)
            if deadline is not None and time.monotonic() >= deadline:
                st.timed_out = True
            await self._control.step_finished(a.assignment_id, a.job_id, index, attempt, outcome)
            if retry:
                delay = policy.delay_before(attempt + 1)
                await buf.note(
                    f"step failed; retrying in {delay:g}s "
                    f"(attempt {attempt + 1} of {policy.max_attempts})"
                )
                await buf.flush()
                if deadline is not None:
                    delay = min(delay, max(deadline - time.monotonic(), 0.0))
                # A cancel or the job's timeout ends the back-off early.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(live.wakeup.wait(), timeout=delay)
                if live.revoked:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    st.timed_out = True
                    message = f"job timed out after {a.job.timeout:g}s"
                    await buf.note(message)
                    await buf.flush()
                    outcome = replace(outcome, error_code="EXEC-TIMEOUT", message=message)
                    break
                continue
            break
        outputs = result.outputs if result else {}
        conclusion = outcome.outcome
        if outcome.outcome == "failure" and step.continue_on_error:
            conclusion = "success"
        elif outcome.outcome == "failure" and not live.revoked:
            st.failed = True
            st.error_code = outcome.error_code
            st.message = f"step '{display_name(step.name, ctx)}': {outcome.message}"
            if a.pause_on_failure > 0 and not live.paused_once:
                await self._pause(a, live, buf)
        st.steps[step.id or f"_{index}"] = {
            "outcome": outcome.outcome,
            "conclusion": conclusion,
            "outputs": outputs,
        }

    async def _exec(
        self,
        a: Assignment,
        worker: Worker,
        live: _Live,
        index: int,
        step: StepSpec,
        attempt: int,
        ctx: dict[str, Any],
        env_base: dict[str, str],
        deadline: float | None,
        buf: LogBuffer,
    ) -> tuple[StepResult, ExecResult | None]:
        try:
            env = {k: expressions.interpolate(v, ctx) for k, v in env_base.items()}
            step_ctx = {**ctx, "env": {**env}}
            env.update({k: expressions.interpolate(v, step_ctx) for k, v in step.env.items()})
            step_ctx["env"] = env
            script = expressions.interpolate(step.run, step_ctx)
        except expressions.ExpressionError as exc:
            await buf.note(f"expression error: {exc}")
            return StepResult("failure", error_code="ORC-VALID", message=str(exc)), None
        env.update(
            {
                "CI": "true",
                "FAENA": "true",
                "FAENA_RUN_ID": a.run_id,
                "FAENA_JOB_ID": a.job_id,
                "FAENA_JOB": a.job.key,
                "FAENA_RUN_ATTEMPT": str(a.attempt),
                "FAENA_SOURCE_DIR": str(a.context.get("faena", {}).get("source_dir", "")),
            }
        )
        timeout = step.timeout
        job_bound = False
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.001)
            if timeout is None or remaining < timeout:
                timeout, job_bound = remaining, True
        exec_id = f"{a.job_id}.{a.attempt}.{index}.{attempt}"
        request = ExecRequest(
            exec_id=exec_id,
            script=script,
            shell=step.shell or a.job.shell or a.shell,
            env=env,
            working_directory=(
                step.working_directory or a.job.working_directory or a.working_directory
            ),
            timeout=timeout,
        )
        live.exec_id = exec_id
        live.last = request
        try:
            result = await self._provider.exec(worker, request, buf.add)
        except PathEscapeError as exc:
            await buf.note(str(exc.message))
            return StepResult("failure", error_code="ORC-VALID", message=exc.message), None
        except ProviderError as exc:
            await buf.note(f"provider error: {exc.message}")
            return StepResult("failure", error_code=exc.code.value, message=exc.message), None
        finally:
            live.exec_id = None
        base = StepResult(
            "success",
            exit_code=result.exit_code,
            duration_ms=result.duration_ms,
            outputs=dict(result.outputs),
        )
        # Only the exec running when the revocation came is cancelled: the cleanup steps
        # that run afterwards (`if: cancelled()`/`always()`) are allowed to finish.
        if result.cancelled:
            return replace(base, outcome="cancelled", message="cancelled"), result
        if result.timed_out:
            if job_bound:
                st_msg = f"job timed out after {a.job.timeout:g}s"
            else:
                st_msg = f"step timed out after {step.timeout:g}s"
            await buf.note(st_msg)
            timed_out = replace(base, outcome="failure", error_code="EXEC-TIMEOUT", message=st_msg)
            return timed_out, result
        if result.exit_code != 0:
            msg = f"exit code {result.exit_code}"
            if result.reason:
                msg = f"{result.reason} (exit code {result.exit_code})"
            return replace(base, outcome="failure", error_code="EXEC-FAILED", message=msg), result
        return base, result

    def _collect_outputs(self, a: Assignment, st: _JobState, live: _Live) -> None:
        merged: dict[str, str] = {}
        for s in st.steps.values():
            merged.update(s.get("outputs", {}))
        ctx = self._context(a, {**a.pipeline_env, **a.job.env}, st, live)
        for key, source in a.job.outputs.items():
            if not source:
                if key in merged:
                    st.outputs[key] = merged[key]
                continue
            try:
                st.outputs[key] = expressions.interpolate(source, ctx)
            except expressions.ExpressionError as exc:
                log.warning("job %s output %s: %s", a.job_id, key, exc)


def _always(source: str | None) -> bool:
    return bool(source) and "always()" in (source or "").replace(" ", "")
