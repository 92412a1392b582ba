"""Fakes for the worker tests: a scriptable provider implementing the port, a clock, a sleep.

No mocks: ``FakeProvider`` is a WorkerProvider whose calls fail, hang or succeed as a test
scripts them, and which records what it was asked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputLine,
    OutputSink,
    ProviderError,
    Worker,
    WorkerRequest,
)

HANG = "hang"  # a scripted outcome: the call never returns (until cancelled)
Outcome = BaseException | str | None  # an error to raise, HANG, or None (success)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """An ``asyncio.sleep`` stand-in that records the delays and advances a clock."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.delays: list[float] = []
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)
        await asyncio.sleep(0)


@dataclass
class FakeProvider:
    """A WorkerProvider whose calls do what ``script`` says, in order, then succeed."""

    name: str = "fake"
    enforces: frozenset[str] = frozenset({"cpu"})
    script: dict[str, deque[Outcome]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (operation, worker id)
    live: dict[str, Worker] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    kept: dict[str, float | None] = field(default_factory=dict)
    # Calls of these operations wait for the event to be set before they go on.
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def fail(self, operation: str, *outcomes: Outcome) -> None:
        """The next calls of ``operation`` end so, one outcome each."""
        self.script.setdefault(operation, deque()).extend(outcomes)

    def count(self, operation: str) -> int:
        return sum(1 for op, _ in self.calls if op == operation)

    async def _play(self, operation: str, worker_id: str) -> None:
        self.calls.append((operation, worker_id))
        gate = self.gates.get(operation)
        if gate is not None:
            await gate.wait()
        queue = self.script.get(operation)
        outcome = queue.popleft() if queue else None
        if outcome == HANG:
            await asyncio.Event().wait()
        elif isinstance(outcome, BaseException):
            raise outcome

    async def create(self, request: WorkerRequest) -> Worker:
        await self._play("create", request.worker_id)
        worker = self.live.get(request.worker_id)
        if worker is None:
            worker = Worker(request.worker_id, self.name, f"/ws/{request.worker_id}",
                            {"image": request.image or ""})  # fmt: skip
            self.live[request.worker_id] = worker
        return worker

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        await self._play("exec", worker.worker_id)
        if worker.worker_id not in self.live:
            raise ProviderError(f"no worker {worker.worker_id}")
        await sink(OutputLine("stdout", f"{self.name}:{worker.worker_id}", 0.0))
        return ExecResult(0, 1.0)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        await self._play("cancel", worker.worker_id)

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        await self._play("destroy", worker.worker_id)
        self.live.pop(worker.worker_id, None)
        self.destroyed.append(worker.worker_id)
        self.kept[worker.worker_id] = keep_for


def retryable(message: str = "docker daemon is down") -> ProviderError:
    return ProviderError(message)


def permanent(message: str = "no such image") -> ProviderError:
    return ProviderError(message, retryable=False)
