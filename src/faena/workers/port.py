"""The WorkerProvider port: ephemeral places where a job's steps run.

Lifecycle, per job attempt: ``create`` once, ``exec`` once per step (in order, one at a
time), ``destroy`` always, whatever happened before. ``destroy`` is idempotent and safe to
call even if ``create`` failed halfway; afterwards no process of the worker is left
running (with ``keep_for``, its stopped remains stay that long for inspection and are
reaped after). ``create`` is idempotent by ``worker_id``; it starts the request's
``services`` and waits for them to be healthy (their logs go to the request's
``service_output`` before ``destroy`` removes them), and enforces its ``resources`` where the
provider can (``enforces`` names which). ``cancel`` may be called concurrently
with ``exec`` from another task and makes that ``exec`` return promptly with
``cancelled=True``. Providers raise ``ProviderError`` (WKM-PROV) for infrastructure
failures, which the platform retries without using the job's attempts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from faena.domain.errors import ErrorCode, FaenaError
from faena.domain.spec import Resources, ServiceSpec

Stream = Literal["stdout", "stderr"]


class ProviderError(FaenaError):
    """The provider could not create, run in or destroy a worker.

    ``retryable=False`` marks what trying again cannot fix (an image that is not there, a
    service that never became healthy): the job fails at once instead of being re-queued.
    """

    code = ErrorCode.WKM_PROV

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class PathEscapeError(FaenaError):
    """A user-given path resolves outside the worker's workspace."""

    code = ErrorCode.ORC_VALID


ServiceOutput = Callable[[str, list["OutputLine"]], Awaitable[None]]
"""Takes a service's log lines (by service name) before its worker is removed."""


@dataclass(frozen=True)
class WorkerRequest:
    """What a job attempt needs from its worker. ``labels`` are the node's; ``runs_on``
    the job's own ``runs-on`` labels, by which a ``PoolSet`` picks a pool."""

    worker_id: str
    run_id: str
    job_id: str
    image: str | None = None
    labels: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    services: tuple[ServiceSpec, ...] = ()
    runs_on: tuple[str, ...] = ()
    service_output: ServiceOutput | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Worker:
    """A live worker; ``workspace`` is the job's working directory as seen inside it."""

    worker_id: str
    provider: str
    workspace: str
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecRequest:
    """One step to run: a script for ``shell``, in ``working_directory`` under the workspace."""

    exec_id: str
    script: str
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class OutputLine:
    """One line of a step's output, without its newline; ``ts`` is epoch seconds."""

    stream: Stream
    text: str
    ts: float


@dataclass(frozen=True)
class ExecResult:
    """How a step ended. ``outputs`` holds what the step wrote to ``$FAENA_OUTPUT``;
    ``reason`` what the provider knows of a failure beyond its exit code (out of memory)."""

    exit_code: int
    duration_ms: float
    timed_out: bool = False
    cancelled: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


OutputSink = Callable[[OutputLine], Awaitable[None]]


class WorkerProvider(Protocol):
    """Creates ephemeral workers, runs steps in them and destroys them."""

    name: str
    # The ``Resources`` fields this provider enforces ("cpu", "memory", "pids").
    enforces: frozenset[str]

    async def create(self, request: WorkerRequest) -> Worker:
        """Start a worker with an empty workspace; idempotent by ``worker_id``."""
        ...

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        """Run one step, streaming each output line to ``sink`` as it is written."""
        ...

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        """Stop a running exec and its whole process tree; no-op if it already ended."""
        ...

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        """Stop everything left in the worker and release it; idempotent. ``keep_for``:
        seconds to leave its stopped remains for inspection before they are reaped."""
        ...


RunEnded = Callable[[str], Awaitable[bool]]
"""Whether no live process may still drive a run (its workers are orphans): by run id."""


@runtime_checkable
class DaemonBackedProvider(Protocol):
    """A provider whose workers live in a daemon or cluster that outlives this process."""

    async def reap_orphans(self, ended: RunEnded | None = None) -> int:
        """Remove the workers a previous process of this owner left behind; how many.
        With ``ended``, only those of runs for which it answers true."""
        ...

    async def close(self) -> None:
        """Close the connection to the daemon or cluster."""
        ...
