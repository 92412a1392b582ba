"""The agent protocol's HTTP routes (``/api/v1/agent/...``), pulled by remote agents.

Register, heartbeat, long-poll the node's mailbox, accept an assignment, post reports.
Every route needs the ``node:register`` scope, and a node answers only to the token that
registered it.
No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from faena.domain.assignment import assignment_to_dict
from faena.domain.errors import ErrorCode, FaenaError
from faena.orchestration.agent_gateway import AgentGateway, Report
from faena.orchestration.dispatch import Dispatcher
from faena.scheduling.nodes import NodeRegistry
from faena.security.port import Principal

SCOPE = "node:register"
MAX_WAIT = 30.0

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(_Body):
    node_id: Id | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)]
    labels: Annotated[list[Label], Field(max_length=64)] = []
    slots: Annotated[int, Field(ge=1, le=1024)] = 1
    capacity: dict[Label, Annotated[str, Field(max_length=64)]] = {}
    provider: Label = "local"
    version: Annotated[str, Field(max_length=64)] = ""


class NodeBody(_Body):
    node_id: Id


class HeartbeatBody(NodeBody):
    running: Annotated[dict[Id, Id], Field(description="assignment id -> job id")] = {}
    slots: Annotated[int, Field(ge=1, le=1024)] | None = None
    capacity: dict[Label, Annotated[str, Field(max_length=64)]] | None = None


class AcceptBody(NodeBody):
    assignment_id: Id
    job_id: Id
    worker_id: Id


Kind = Literal[
    "logs",
    "worker_created",
    "worker_failed",
    "worker_terminated",
    "step_started",
    "step_finished",
    "step_skipped",
    "job_paused",
    "job_resumed",
    "exec_output",
    "exec_finished",
    "job_finished",
]


class ReportItem(_Body):
    kind: Kind
    assignment_id: Id
    job_id: Id
    args: dict[str, Any] = {}


class ReportsBody(NodeBody):
    reports: Annotated[list[ReportItem], Field(max_length=2000)]


# -- what each report kind carries ---------------------------------------------------------

Index = Annotated[int, Field(ge=0, le=10_000)]
Attempt = Annotated[int, Field(ge=1, le=10_000)]
Text = Annotated[str, Field(max_length=65_536)]


class _Line(_Body):
    stream: Literal["stdout", "stderr"]
    text: Text
    ts: float


class _Logs(_Body):
    attempt: Attempt
    index: Index
    lines: Annotated[list[_Line], Field(max_length=5000)]
    chunk: Id


class _WorkerCreated(_Body):
    worker_id: Id
    provider: Label
    info: dict[str, Text] = {}


class _WorkerFailed(_Body):
    worker_id: Id
    message: Text
    retryable: bool = True


class _WorkerTerminated(_Body):
    worker_id: Id
    exit_code: int


class _StepStarted(_Body):
    index: Index
    attempt: Attempt


class _StepResult(_Body):
    outcome: Literal["success", "failure", "cancelled"]
    exit_code: int | None = None
    duration_ms: float = 0.0
    error_code: Annotated[str, Field(max_length=32)] | None = None
    message: Text | None = None
    outputs: dict[str, Text] = {}
    continue_on_error: bool = False
    will_retry: bool = False


class _StepFinished(_StepStarted):
    result: _StepResult


class _StepSkipped(_Body):
    index: Index
    reason: Text


class _JobResult(_Body):
    outcome: Literal["success", "failure", "cancelled"]
    error_code: Annotated[str, Field(max_length=32)] | None = None
    message: Text | None = None
    outputs: dict[str, Text] = {}


class _JobFinished(_Body):
    result: _JobResult


class _JobPaused(_Body):
    until: float


class _JobResumed(_Body):
    reason: Annotated[str, Field(max_length=64)]


class _ExecOutput(_Body):
    exec_id: Id
    lines: Annotated[list[_Line], Field(max_length=5000)]


class _ExecFinished(_Body):
    exec_id: Id
    exit_code: int


_ARGS: dict[str, type[_Body]] = {
    "logs": _Logs,
    "worker_created": _WorkerCreated,
    "worker_failed": _WorkerFailed,
    "worker_terminated": _WorkerTerminated,
    "step_started": _StepStarted,
    "step_finished": _StepFinished,
    "step_skipped": _StepSkipped,
    "job_paused": _JobPaused,
    "job_resumed": _JobResumed,
    "exec_output": _ExecOutput,
    "exec_finished": _ExecFinished,
    "job_finished": _JobFinished,
}


def _report(item: ReportItem, n: int) -> Report:
    try:
        args = _ARGS[item.kind].model_validate(item.args).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise FaenaError(
            f"reports[{n}] ({item.kind}): {where}: {first.get('msg')}", code=ErrorCode.ORC_VALID
        ) from None
    if item.kind == "logs":
        args["run_id"] = item.job_id.rsplit(".", 1)[0]
    return Report(item.kind, item.assignment_id, item.job_id, args)


def agent_router(
    *,
    gateway: AgentGateway,
    registry: NodeRegistry,
    dispatcher: Dispatcher,
    require: Callable[[str], Callable[..., Awaitable[Principal]]],
) -> APIRouter:
    """Routes of the agent protocol; ``require(scope)`` authenticates and authorizes."""
    router = APIRouter(prefix="/api/v1/agent", tags=["agent protocol"])
    Agent = Annotated[Principal, Depends(require(SCOPE))]

    def owner(p: Principal) -> str:
        return p.token_id or p.subject

    @router.post("/register", status_code=201)
    async def register(body: RegisterBody, p: Agent) -> dict[str, Any]:
        """Register this agent's node (again, after a server restart or a loss)."""
        node = await registry.register(
            owner=owner(p),
            node_id=body.node_id,
            name=body.name,
            labels=body.labels,
            slots=body.slots,
            capacity=body.capacity,
            provider=body.provider,
            version=body.version,
        )
        return {
            "node_id": node.node_id,
            "heartbeat_interval": registry.interval,
            "cursor": dispatcher.cursor(0),
        }

    @router.post("/heartbeat")
    async def heartbeat(body: HeartbeatBody, p: Agent) -> dict[str, Any]:
        """The node is alive; answers the assignments it must stop (404: register again)."""
        registry.heartbeat(body.node_id, owner(p))
        if body.slots is not None or body.capacity is not None:
            await registry.update_capacity(body.node_id, body.slots, body.capacity)
        return {"revoke": await gateway.revocations(dict(body.running))}

    @router.get("/work")
    async def work(
        p: Agent,
        node_id: Annotated[str, Query(pattern=r"^[A-Za-z0-9._:-]{1,128}$")],
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 25.0,
    ) -> dict[str, Any]:
        """Long-poll the node's mailbox: assignments to take, assignments to stop. Pass
        the cursor of the previous answer: it acknowledges what came before."""
        registry.check_owner(node_id, owner(p))
        messages, new_cursor = await dispatcher.poll(node_id, cursor, wait)
        return {"cursor": new_cursor, "messages": [m.to_dict() for m in messages]}

    @router.post("/accept")
    async def accept(body: AcceptBody, p: Agent) -> dict[str, Any]:
        """Take an assignment: the job to run, or null if it moved on."""
        registry.check_owner(body.node_id, owner(p))
        a = await gateway.accept(body.assignment_id, body.job_id, body.worker_id)
        return {"assignment": assignment_to_dict(a) if a is not None else None}

    @router.post("/reports")
    async def reports(body: ReportsBody, p: Agent) -> dict[str, Any]:
        """Apply the agent's reports in order; answered once durable. Sending a batch
        again changes nothing. Answers the assignments the agent must stop."""
        registry.check_owner(body.node_id, owner(p))
        batch = [_report(item, n) for n, item in enumerate(body.reports)]
        return {"revoke": await gateway.apply(batch)}

    @router.post("/deregister", status_code=202)
    async def deregister(body: NodeBody, p: Agent) -> dict[str, str]:
        """The agent leaves: its unfinished jobs are failed over now."""
        await registry.deregister(body.node_id, owner(p))
        return {"node_id": body.node_id, "status": "gone"}

    return router
