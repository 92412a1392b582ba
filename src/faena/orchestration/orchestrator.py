"""The orchestrator: the only writer of run state.

Commands (submit, cancel, scheduler decisions, agent reports) queue up and are handled one
at a time by a single task against in-memory aggregates; the events of everything handled
in one pass are committed in one transaction (group commit), then published. A caller's
await returns only after its events are durable, so an acknowledged command is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from faena.domain import progress
from faena.domain.assignment import Assignment, JobResult, StepResult
from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.domain.events import DEFAULT_TENANT, Event, make_event, new_id
from faena.domain.run import JobRun, PipelineRun, rebuild
from faena.domain.spec import PipelineSpec
from faena.domain.states import JobState, RunState
from faena.orchestration.ports import CommittedEventPublisher
from faena.retries import with_retries
from faena.store.port import Commit, Deposed, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_INFRA_RETRIES = 3


class RunFinished(FaenaError):
    code = ErrorCode.ORC_STATE


@dataclass(frozen=True)
class Placed:
    """A job a recovered run has on a node (SCHEDULED or RUNNING)."""

    job_id: str
    attempt: int
    node_id: str
    assignment_id: str
    state: JobState
    cancel_requested: bool


@dataclass
class Recovery:
    """What a server needs to carry on its unfinished runs after a restart."""

    requests: list[Event] = field(default_factory=list)
    placed: list[Placed] = field(default_factory=list)


@dataclass
class _Handle:
    run: PipelineRun
    spec: PipelineSpec
    keys: set[str] = field(default_factory=set)


class _Tx:
    """The writes of one group commit."""

    def __init__(self, tenant: str, now: Callable[[], float]) -> None:
        self.tenant = tenant
        self.now = now
        self.events: list[Event] = []
        self.jobs: dict[str, set[str]] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.handles: dict[str, _Handle] = {}
        # Only run-level events change the run row; job events change job rows alone.
        self.runs_changed: set[str] = set()

    def emit(self, h: _Handle, subject: str, payload: dict[str, Any]) -> Event:
        if payload.get("spec_hash") == "":
            payload["spec_hash"] = h.run.spec_hash
        if subject == "ci.job.v1.requested" and "runs_on" not in payload:
            # The scheduler places by labels without reading specs.
            job = h.run.jobs.get(payload["job_id"])
            if job is not None:
                payload["runs_on"] = list(progress.concrete_job(h.spec, job).runs_on)
        event = make_event(
            subject,
            payload,
            correlation_id=h.run.run_id,
            tenant_id=h.run.tenant_id,
            now=self.now(),
        )
        changed = h.run.apply(event)
        h.keys.add(event.idempotency_key)
        self.events.append(event)
        self.handles[h.run.run_id] = h
        self.jobs.setdefault(h.run.run_id, set()).update(changed)
        if subject.startswith("ci.run.") or subject == "ci.job.v1.expanded":
            self.runs_changed.add(h.run.run_id)
        return event

    def settle(self, h: _Handle) -> None:
        """Apply DAG progression until the run waits on the outside world."""
        for _ in range(10_000):
            actions = progress.advance(h.run, h.spec)
            if not actions:
                return
            for subject, payload in actions:
                self.emit(h, subject, payload)
        raise FaenaError(f"run {h.run.run_id}: progression does not converge")

    def to_commit(self) -> Commit:
        batch = Commit(events=list(self.events), specs=dict(self.specs))
        for run_id, h in self.handles.items():
            if run_id in self.runs_changed:
                batch.runs.append(h.run.to_row())
            for job_id in sorted(self.jobs.get(run_id, ()), key=_job_position):
                row = h.run.jobs[job_id].to_row()
                row["run_id"] = run_id
                row["position"] = _job_position(job_id)
                batch.jobs.append(row)
        return batch


def _job_position(job_id: str) -> int:
    return int(job_id.rsplit(".", 1)[1])


def run_of(job_id: str) -> str:
    """Job ids are ``<run_id>.<n>``."""
    return job_id.rsplit(".", 1)[0]


class Orchestrator:
    """Owns PipelineRun aggregates; everything else asks it to change them."""

    def __init__(
        self,
        store: Store,
        publisher: CommittedEventPublisher,
        *,
        tenant: str = DEFAULT_TENANT,
        clock: Callable[[], float] = time.time,
        batch_limit: int = 512,
        retry_delay: float = 0.1,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._tenant = tenant
        self._clock = clock
        self._batch_limit = batch_limit
        self._retry_delay = retry_delay
        self._runs: dict[str, _Handle] = {}
        self._queue: asyncio.Queue[tuple[Callable[[_Tx], Any], asyncio.Future[Any]]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._watchers: dict[str, list[asyncio.Future[PipelineRun]]] = {}
        # The leader's term (see orchestration/leadership.py): every commit carries it, and
        # the first refused one calls on_deposed; None when no other replica can lead.
        self.fence: int | None = None
        self.on_deposed: Callable[[Deposed], None] = lambda exc: None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="orchestrator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the single writer ---------------------------------------------------------------

    async def _call(self, fn: Callable[[_Tx], T], *, wait: bool = True) -> T:
        if self._task is None or self._task.done():
            raise FaenaError("orchestrator is not running", code=ErrorCode.ORC_INFRA)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, fut))
        if not wait:
            fut.add_done_callback(_log_failure)
            return None  # type: ignore[return-value]
        return await fut

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._process(batch)

    async def _process(self, batch: list[tuple[Callable[[_Tx], Any], asyncio.Future[Any]]]) -> None:
        tx = _Tx(self._tenant, self._clock)
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        broken: set[str] = set()
        for fn, fut in batch:
            mark = len(tx.events)
            try:
                outcomes.append((fut, fn(tx), None))
            except Exception as exc:
                if not isinstance(exc, FaenaError):
                    log.exception("orchestrator command failed")
                # Drop the failed command's events; its runs are rebuilt from the store.
                for e in tx.events[mark:]:
                    broken.add(e.correlation_id)
                del tx.events[mark:]
                outcomes.append((fut, None, exc))
        try:
            if tx.events or tx.specs:
                writes = tx.to_commit()
                writes.fence = self.fence
                # A database restart is ridden out; commands queue meanwhile.
                await with_retries(lambda: self._store.commit(writes), "commit",
                                   delay=self._retry_delay, final=Deposed)  # fmt: skip
        except Deposed as exc:
            log.error("%s", exc)
            self.on_deposed(exc)
            outcomes = [(fut, None, err or exc) for fut, _, err in outcomes]
            tx.events.clear()
            broken.clear()
        except Exception as exc:
            log.exception("commit failed")
            broken.update(tx.handles)
            error = FaenaError(f"store unavailable: {exc}", code=ErrorCode.ORC_INFRA)
            outcomes = [(fut, None, err or error) for fut, _, err in outcomes]
            tx.events.clear()
        for run_id in broken:
            self._runs.pop(run_id, None)
            with contextlib.suppress(Exception):
                await self._load(run_id)
        if tx.events:
            await self._publisher.publish_committed(tx.events)
        for fut, value, err in outcomes:
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(value)
        for run_id, h in tx.handles.items():
            if h.run.state.terminal:
                for w in self._watchers.pop(run_id, []):
                    if not w.done():
                        w.set_result(h.run)

    async def _load(self, run_id: str) -> _Handle:
        h = self._runs.get(run_id)
        if h is not None:
            return h
        stored = await self._store.run_events(run_id)
        if not stored:
            raise NotFound(f"no run {run_id}")
        events = [s.event for s in stored]
        run = rebuild(run_id, events)
        spec_data = await self._store.get_spec(run.spec_hash)
        if spec_data is None:
            raise NotFound(f"run {run_id}: its pipeline spec is missing from the store")
        h = _Handle(run, PipelineSpec.from_dict(spec_data), {e.idempotency_key for e in events})
        # Two loads of one run may overlap across the awaits above: the first one wins, so
        # every command works on the same handle.
        return self._runs.setdefault(run_id, h)

    def _handle(self, run_id: str) -> _Handle:
        h = self._runs.get(run_id)
        if h is None:
            raise NotFound(f"run {run_id} is not loaded")
        return h

    # -- queries -------------------------------------------------------------------------

    def snapshot(self, run_id: str) -> PipelineRun | None:
        """The live in-memory state of a loaded run (read-only use)."""
        h = self._runs.get(run_id)
        return h.run if h else None

    async def wait(self, run_id: str) -> PipelineRun:
        """Return once the run is finished."""
        h = self._runs.get(run_id)
        if h is not None and h.run.state.terminal:
            return h.run
        fut: asyncio.Future[PipelineRun] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(run_id, []).append(fut)
        return await fut

    # -- commands ------------------------------------------------------------------------

    async def submit(
        self,
        spec: PipelineSpec,
        *,
        options: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a new PipelineRun and start its DAG; returns the run id."""
        given = run_id

        def command(tx: _Tx) -> str:
            rid = given or new_id()[:12]
            # Runs submitted in the same millisecond share a prefix; a clash with a live
            # run of this process is the only one the time part allows.
            while given is None and rid in self._runs:
                rid = new_id()[:12]
            if rid in self._runs:
                raise FaenaError(f"run {rid} exists", code=ErrorCode.ORC_VALID)
            spec_data = spec.to_dict()
            spec_hash = spec.spec_hash(spec_data)
            run = PipelineRun(
                run_id=rid, pipeline=spec.name, spec_hash=spec_hash, tenant_id=self._tenant
            )
            h = _Handle(run, spec)
            plan = progress.plan_jobs(rid, spec)
            tx.specs[spec_hash] = spec_data
            tx.emit(
                h,
                "ci.run.v1.requested",
                {
                    "run_id": rid,
                    "pipeline": spec.name,
                    "spec_hash": spec_hash,
                    "source": spec.source,
                    "options": dict(options or {}),
                    **plan,
                },
            )
            self._runs[rid] = h
            tx.settle(h)
            return rid

        return await self._call(command)

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> None:
        """Ask a run to stop: queued jobs are cancelled, running ones revoked; idempotent."""
        await self._load(run_id)

        def command(tx: _Tx) -> None:
            h = self._handle(run_id)
            if h.run.state.terminal or h.run.cancel_requested:
                return
            tx.emit(h, "ci.run.v1.cancel_requested", {"run_id": run_id, "reason": reason})
            tx.settle(h)

        await self._call(command)

    async def retry(self, run_id: str) -> list[str]:
        """Run a finished run's failed and cancelled jobs again, with everything downstream,
        as a new attempt of the same run; returns the job ids that will run again."""
        # The loaded run, never a reload: commands already queued hold this handle.
        h = await self._load(run_id)

        def command(tx: _Tx) -> list[str]:
            if not h.run.state.terminal:
                raise RunFinished(f"run {run_id} is {h.run.state.value}: nothing to retry yet")
            jobs = h.run.retry_set()
            if not jobs:
                raise RunFinished(f"run {run_id} has no failed or cancelled job to retry")
            tx.emit(h, "ci.run.v1.retry_requested",
                    {"run_id": run_id, "jobs": jobs, "attempt": h.run.attempt + 1})  # fmt: skip
            tx.settle(h)
            return jobs

        return await self._call(command)

    async def retry_job(self, job_id: str) -> list[str]:
        """Run one failed or cancelled job again with its unfinished dependents, even while
        the rest of the run goes on; returns the job ids that will run again."""
        h = await self._load(run_of(job_id))

        def command(tx: _Tx) -> list[str]:
            job = h.run.job(job_id)
            if job.result not in ("failure", "cancelled"):
                raise RunFinished(f"job {job_id} is {job.state.value}: only a failed or "
                                  "cancelled job can be retried")  # fmt: skip
            jobs = [j for j in h.run.downstream_unfinished({job.group})
                    if h.run.jobs[j].state.terminal]  # fmt: skip
            if job.group != job.key:  # one matrix combination: not its siblings
                jobs = [j for j in jobs if h.run.jobs[j].group != job.group or j == job_id]
            payload = {"run_id": h.run.run_id, "jobs": jobs, "attempt": h.run.attempt + 1}
            tx.emit(h, "ci.run.v1.retry_requested", payload)
            tx.settle(h)
            return jobs

        return await self._call(command)

    async def cancel_job(self, job_id: str, reason: str = "cancelled by user") -> None:
        """Stop one job (dependents then skip, as after any cancelled need); idempotent."""
        h = await self._load(run_of(job_id))

        def command(tx: _Tx) -> None:
            job = h.run.job(job_id)
            if job.state.terminal or job.cancel_requested:
                return
            if job.state in (JobState.SCHEDULED, JobState.RUNNING):
                tx.emit(h, *progress.revoke_action(job, reason))
            if job.state is not JobState.RUNNING:
                tx.emit(h, "ci.job.v1.cancelled",
                        {"job_id": job_id, "reason": reason, "attempt": job.attempt})  # fmt: skip
            tx.settle(h)

        await self._call(command)

    async def resume(self, run_id: str) -> list[Event]:
        """Continue a run a dead process left behind; returns the JobRequested events of
        queued jobs, which the caller republishes to the (fresh) scheduler."""
        self._runs.pop(run_id, None)
        h = await self._load(run_id)
        if h.run.state.terminal:
            raise RunFinished(f"run {run_id} already finished ({h.run.state.value})")

        def command(tx: _Tx) -> list[str]:
            for job in list(h.run.jobs.values()):
                if job.state in (JobState.SCHEDULED, JobState.RUNNING):
                    _fail_over(tx, h, job, "the process running this job stopped")
            tx.settle(h)
            return [j.job_id for j in h.run.jobs.values() if j.state is JobState.PENDING]

        pending = set(await self._call(command))
        return await self._latest_requests(run_id, pending)

    async def _latest_requests(self, run_id: str, job_ids: set[str]) -> list[Event]:
        stored = await self._store.run_events(run_id)
        latest: dict[str, Event] = {}
        for s in stored:
            if s.event.subject == "ci.job.v1.requested" and s.event.payload["job_id"] in job_ids:
                latest[s.event.payload["job_id"]] = s.event
        return list(latest.values())

    async def recover(self, local_nodes: set[str]) -> Recovery:
        """Take over the unfinished runs a stopped server left: jobs placed on ``local_nodes``
        died with it and are re-queued; jobs on remote nodes are kept for their agents."""
        recovery = Recovery()
        for state in (RunState.PENDING, RunState.RUNNING):
            for row in await self._store.list_runs(limit=100_000, state=state.value):
                self._runs.pop(row["run_id"], None)
                try:
                    h = await self._load(row["run_id"])
                except (NotFound, ValueError, KeyError) as exc:
                    # One broken run (its spec lost, say) must not stop the others.
                    log.error("run %s cannot be recovered, left as it is: %s",
                              row["run_id"], exc)  # fmt: skip
                    continue

                def command(tx: _Tx, h: _Handle = h) -> list[str]:
                    for job in list(h.run.jobs.values()):
                        placed = job.state in (JobState.SCHEDULED, JobState.RUNNING)
                        if placed and job.node_id in local_nodes:
                            _fail_over(tx, h, job, "the server running this job stopped")
                    tx.settle(h)
                    return [j.job_id for j in h.run.jobs.values() if j.state is JobState.PENDING]

                pending = set(await self._call(command))
                recovery.requests.extend(await self._latest_requests(h.run.run_id, pending))
                for job in h.run.jobs.values():
                    if job.state in (JobState.SCHEDULED, JobState.RUNNING) and job.node_id:
                        recovery.placed.append(
                            Placed(
                                job.job_id,
                                job.attempt,
                                job.node_id,
                                job.assignment_id or "",
                                job.state,
                                job.cancel_requested,
                            )
                        )
        return recovery

    async def node_lost(self, node_id: str, message: str) -> list[str]:
        """Fail over every job placed on a node that stopped answering; returns their ids.
        They are re-queued without using their retry attempts."""

        def command(tx: _Tx) -> list[str]:
            moved: list[str] = []
            for h in list(self._runs.values()):
                if h.run.state.terminal:
                    continue
                touched = False
                for job in list(h.run.jobs.values()):
                    placed = job.state in (JobState.SCHEDULED, JobState.RUNNING)
                    if placed and job.node_id == node_id:
                        _fail_over(tx, h, job, message)
                        moved.append(job.job_id)
                        touched = True
                if touched:
                    tx.settle(h)
            return moved

        return await self._call(command)

    # -- scheduler port ------------------------------------------------------------------

    async def create_assignment(
        self, job_id: str, attempt: int, node_id: str, policy: str
    ) -> str | None:
        """Record the scheduler's placement; None when the job no longer waits for one."""
        h = await self._load(run_of(job_id))

        def command(tx: _Tx) -> str | None:
            job = h.run.jobs.get(job_id)
            if job is None or job.state is not JobState.PENDING or job.attempt != attempt:
                return None
            assignment_id = new_id()
            tx.emit(
                h,
                "ci.assignment.v1.created",
                {
                    "assignment_id": assignment_id,
                    "job_id": job_id,
                    "node_id": node_id,
                    "policy": policy,
                    "attempt": attempt,
                },
            )
            return assignment_id

        return await self._call(command)

    # -- agent reports (the control plane seen by agents) --------------------------------

    async def _fenced_call(
        self,
        assignment_id: str,
        job_id: str,
        fn: Callable[[_Tx, _Handle, JobRun], T],
        default: T,
        *,
        wait: bool = True,
    ) -> T:
        """Run an agent report against its job, or answer ``default`` when the report's
        assignment is not the job's current one (fencing: a stale agent changes nothing)."""

        def command(tx: _Tx) -> T:
            found = self._fenced(job_id, assignment_id)
            if found is None:
                return default
            return fn(tx, *found)

        return await self._call(command, wait=wait)

    def _fenced(self, job_id: str, assignment_id: str) -> tuple[_Handle, JobRun] | None:
        h = self._runs.get(run_of(job_id))
        if h is None:
            return None
        job = h.run.jobs.get(job_id)
        if job is None or job.assignment_id != assignment_id:
            return None
        return h, job

    async def barrier(self) -> None:
        """Return once every command queued before this call is committed."""
        await self._call(lambda tx: None)

    async def is_current(self, assignment_id: str, job_id: str) -> bool:
        """Whether the assignment is still its job's, and not being taken back."""
        try:
            await self._load(run_of(job_id))
        except NotFound:
            return False
        found = self._fenced(job_id, assignment_id)
        return found is not None and not found[1].cancel_requested

    async def accept(self, assignment_id: str, job_id: str, worker_id: str) -> Assignment | None:
        """The agent takes the assignment; None if it was revoked or superseded."""
        await self._load(run_of(job_id))

        def command(tx: _Tx, h: _Handle, job: JobRun) -> Assignment | None:
            if job.state is JobState.SCHEDULED:
                tx.emit(
                    h,
                    "ci.assignment.v1.accepted",
                    {
                        "assignment_id": assignment_id,
                        "job_id": job_id,
                        "node_id": job.node_id,
                        "attempt": job.attempt,
                    },
                )
                tx.emit(
                    h,
                    "ci.job.v1.started",
                    {"job_id": job_id, "worker_id": worker_id, "attempt": job.attempt},
                )
            elif job.state is not JobState.RUNNING or job.worker_id != worker_id:
                return None
            if job.cancel_requested:
                return None
            spec = progress.concrete_job(h.spec, job)
            ctx = progress.expression_context(h.run, h.spec, spec)
            ctx.pop("__status__", None)
            return Assignment(
                assignment_id=assignment_id,
                run_id=h.run.run_id,
                job_id=job_id,
                attempt=job.attempt,
                job=spec,
                context=ctx,
                pipeline_env=dict(h.spec.env),
                shell=h.spec.shell,
                working_directory=h.spec.working_directory,
                tenant_id=h.run.tenant_id,
                pause_on_failure=float(
                    spec.pause_on_failure
                    or h.spec.pause_on_failure
                    or h.run.options.get("pause_on_failure")
                    or 0.0
                ),
            )

        return await self._fenced_call(assignment_id, job_id, command, None)

    async def worker_created(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        provider: str,
        info: dict[str, str],
        *,
        wait: bool = True,
    ) -> None:
        """Record the worker; ``wait=False`` queues the record behind the caller's next
        command, so both share a commit (the order of events is kept)."""

        def command(tx: _Tx, h: _Handle, _job: JobRun) -> None:
            payload = {
                "worker_id": worker_id,
                "provider_id": provider,
                "runtime_spec": info,
                "job_id": job_id,
            }
            if "ci.worker.v1.created:" + worker_id not in h.keys:
                tx.emit(h, "ci.worker.v1.created", payload)

        await self._fenced_call(assignment_id, job_id, command, None, wait=wait)

    async def worker_terminated(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        exit_code: int,
        *,
        wait: bool = True,
    ) -> None:
        def command(tx: _Tx, h: _Handle, _job: JobRun) -> None:
            if "ci.worker.v1.terminated:" + worker_id not in h.keys:
                tx.emit(
                    h,
                    "ci.worker.v1.terminated",
                    {"worker_id": worker_id, "exit_code": exit_code, "job_id": job_id},
                )

        await self._fenced_call(assignment_id, job_id, command, None, wait=wait)

    async def worker_failed(
        self,
        assignment_id: str,
        job_id: str,
        worker_id: str,
        message: str,
        retryable: bool = True,
    ) -> None:
        """The provider could not give a worker: re-queue without using the job's attempts,
        or fail the job at once when trying again cannot help (``retryable=False``)."""

        def command(tx: _Tx, h: _Handle, job: JobRun) -> None:
            if job.state is not JobState.RUNNING:
                return
            tx.emit(
                h,
                "ci.worker.v1.failed",
                {
                    "worker_id": worker_id,
                    "job_id": job_id,
                    "error_code": ErrorCode.WKM_PROV.value,
                    "message": message,
                },
            )
            if retryable and job.infra_retries < MAX_INFRA_RETRIES and not job.cancel_requested:
                tx.emit(h, *progress.request_action(job_id, job.attempt + 1, "infra"))
            else:
                tx.emit(
                    h,
                    "ci.job.v1.failed",
                    {
                        "job_id": job_id,
                        "attempt": job.attempt,
                        "error_code": ErrorCode.WKM_PROV.value,
                        "retryable": False,
                        "message": message,
                    },
                )
            tx.settle(h)

        await self._fenced_call(assignment_id, job_id, command, None)

    async def step_started(
        self, assignment_id: str, job_id: str, index: int, attempt: int, *, wait: bool = True
    ) -> bool:
        """Record a step start; False tells the agent the job moved on without it."""

        def command(tx: _Tx, h: _Handle, job: JobRun) -> bool:
            if job.state is not JobState.RUNNING:
                return False
            payload = {
                "step_id": f"{job_id}.s{index}",
                "job_id": job_id,
                "index": index,
                "exec_id": f"{job.attempt}.{attempt}",
                "attempt": attempt,
            }
            key = f"ci.step.v1.started:{payload['step_id']}:{payload['exec_id']}:{attempt}"
            if key not in h.keys:
                tx.emit(h, "ci.step.v1.started", payload)
            # A cancelled job still runs its `if: cancelled()`/`always()` steps.
            return True

        return await self._fenced_call(assignment_id, job_id, command, False, wait=wait)

    async def step_finished(
        self,
        assignment_id: str,
        job_id: str,
        index: int,
        attempt: int,
        result: StepResult,
        *,
        wait: bool = True,
    ) -> None:
        def command(tx: _Tx, h: _Handle, job: JobRun) -> None:
            step_id = f"{job_id}.s{index}"
            if index >= len(job.steps) or job.steps[index].attempt != attempt:
                return
            if job.steps[index].state.terminal:
                return  # a duplicate report
            base = {
                "step_id": step_id,
                "job_id": job_id,
                "index": index,
                "attempt": attempt,
                "exit_code": result.exit_code,
                "duration_ms": result.duration_ms,
                "outputs": dict(result.outputs),
            }
            if result.outcome == "success":
                subject = "ci.step.v1.completed"
                payload = {**base, "result_ref": "success"}
            else:
                subject = "ci.step.v1.failed"
                payload = {
                    **base,
                    "error_code": result.error_code or "EXEC-FAILED",
                    "retryable": result.will_retry,
                    "will_retry": result.will_retry,
                    "message": result.message,
                    "continue_on_error": result.continue_on_error,
                    "cancelled": result.outcome == "cancelled",
                }
            tx.emit(h, subject, payload)

        await self._fenced_call(assignment_id, job_id, command, None, wait=wait)

    async def step_skipped(self, assignment_id: str, job_id: str, index: int, reason: str) -> None:
        def command(tx: _Tx, h: _Handle, job: JobRun) -> None:
            if index >= len(job.steps) or job.steps[index].state.terminal:
                return
            tx.emit(
                h,
                "ci.step.v1.skipped",
                {
                    "step_id": f"{job_id}.s{index}",
                    "job_id": job_id,
                    "index": index,
                    "reason": reason,
                    "attempt": job.attempt,
                },
            )

        await self._fenced_call(assignment_id, job_id, command, None)

    async def job_paused(self, assignment_id: str, job_id: str, until: float) -> None:
        """A failed step's worker is kept for debugging until ``until`` (epoch seconds)."""

        def command(tx: _Tx, h: _Handle, job: JobRun) -> None:
            if job.state is JobState.RUNNING and job.paused_until is None:
                tx.emit(h, "ci.job.v1.paused",
                        {"job_id": job_id, "attempt": job.attempt, "until": until})  # fmt: skip

        await self._fenced_call(assignment_id, job_id, command, None)

    async def job_resumed(self, assignment_id: str, job_id: str, reason: str) -> None:
        def command(tx: _Tx, h: _Handle, job: JobRun) -> None:
            if job.paused_until is not None:
                tx.emit(h, "ci.job.v1.resumed",
                        {"job_id": job_id, "attempt": job.attempt, "reason": reason})  # fmt: skip

        await self._fenced_call(assignment_id, job_id, command, None)

    async def paused_job(self, job_id: str) -> JobRun:
        """The job, if it is paused for debugging now; raises ORC-STATE otherwise."""
        h = await self._load(run_of(job_id))
        job = h.run.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.paused_until is None or job.state is not JobState.RUNNING:
            raise FaenaError(
                f"job {job.name} is not paused for debugging ({job.state.value}); run it with "
                "debug: pause-on-failure or --pause-on-failure, and exec once a step failed",
                code=ErrorCode.ORC_STATE,
            )
        return job

    async def exec_audit(self, job_id: str, subject: str, payload: dict[str, Any]) -> None:
        """Record a debugging command (``ci.exec.v1.started``/``finished``) in the run's log."""
        h = await self._load(run_of(job_id))

        def command(tx: _Tx) -> None:
            tx.emit(h, subject, {**payload, "job_id": job_id})

        await self._call(command)

    async def job_finished(self, assignment_id: str, job_id: str, result: JobResult) -> None:
        """The agent's final word on a job attempt; applies the job's retry policy."""

        def command(tx: _Tx, h: _Handle, job: JobRun) -> None:
            if job.state is not JobState.RUNNING:
                return
            if result.outcome == "success":
                tx.emit(
                    h,
                    "ci.job.v1.completed",
                    {
                        "job_id": job_id,
                        "result_ref": "success",
                        "attempt": job.attempt,
                        "outputs": dict(result.outputs),
                    },
                )
            elif result.outcome == "cancelled":
                tx.emit(
                    h,
                    "ci.job.v1.cancelled",
                    {
                        "job_id": job_id,
                        "attempt": job.attempt,
                        "reason": result.message or "cancelled",
                    },
                )
            else:
                policy = progress.concrete_job(h.spec, job).retry
                retry = (
                    job.retries_used + 1 < policy.max_attempts
                    and not job.cancel_requested
                    and not h.run.cancel_requested
                )
                tx.emit(
                    h,
                    "ci.job.v1.failed",
                    {
                        "job_id": job_id,
                        "attempt": job.attempt,
                        "error_code": result.error_code or "EXEC-FAILED",
                        "retryable": retry,
                        "will_retry": retry,
                        "message": result.message,
                        "outputs": dict(result.outputs),
                    },
                )
                if retry:
                    delay = policy.delay_before(job.retries_used + 2)
                    tx.emit(
                        h,
                        *progress.request_action(
                            job_id,
                            job.attempt + 1,
                            "retry",
                            tx.now() + delay if delay > 0 else None,
                        ),
                    )
            tx.settle(h)

        await self._fenced_call(assignment_id, job_id, command, None)


def _fail_over(tx: _Tx, h: _Handle, job: JobRun, message: str) -> None:
    """Re-queue a placed job whose node or process is gone (a platform retry), or fail it
    once the platform has retried it too often."""
    if job.state is JobState.RUNNING and job.worker_id:
        tx.emit(
            h,
            "ci.worker.v1.failed",
            {
                "worker_id": job.worker_id,
                "job_id": job.job_id,
                "error_code": ErrorCode.ORC_INFRA.value,
                "message": message,
            },
        )
    if job.cancel_requested or h.run.cancel_requested:
        tx.emit(h, "ci.job.v1.cancelled", {"job_id": job.job_id, "attempt": job.attempt,
                                            "reason": f"cancelled ({message})"})  # fmt: skip
    elif job.infra_retries < MAX_INFRA_RETRIES or job.state is JobState.SCHEDULED:
        # A job that never started has nothing to blame: it goes back in the queue.
        tx.emit(h, *progress.request_action(job.job_id, job.attempt + 1, "infra"))
    else:
        tx.emit(
            h,
            "ci.job.v1.failed",
            {
                "job_id": job.job_id,
                "attempt": job.attempt,
                "error_code": ErrorCode.ORC_INFRA.value,
                "retryable": False,
                "message": f"{message} (after {job.infra_retries} platform retries)",
            },
        )


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("queued command failed", exc_info=fut.exception())
