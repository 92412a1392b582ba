"""A test harness around the embedded App on a temp FAENA_HOME, with real processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from faena.app import App
from faena.domain.events import Event
from faena.domain.run import PipelineRun
from faena.spec import parse_pipeline

Runner = Callable[..., Awaitable[PipelineRun]]


class Harness:
    def __init__(self, app: App, tmp: Path) -> None:
        self.app = app
        self.tmp = tmp
        self.events: list[Event] = []

    async def collect(self, event: Event) -> None:
        self.events.append(event)

    async def submit(self, text: str) -> str:
        spec = parse_pipeline(text, filename=str(self.tmp / "faena.yml"))
        return await self.app.orchestrator.submit(spec)

    async def run(self, text: str, timeout: float = 60) -> PipelineRun:
        run_id = await self.submit(text)
        async with asyncio.timeout(timeout):
            run = await self.app.orchestrator.wait(run_id)
            await self.app.bus.drain()
        return run

    def subjects(self, run_id: str, prefix: str = "ci.") -> list[str]:
        return [
            e.subject
            for e in self.events
            if e.correlation_id == run_id and e.subject.startswith(prefix)
        ]

    def job(self, run: PipelineRun, name: str) -> Any:
        matches = [j for j in run.jobs.values() if j.name == name]
        assert matches, f"no job {name!r} in {[j.name for j in run.jobs.values()]}"
        return matches[0]

    async def logs(self, run: PipelineRun, name: str) -> list[str]:
        await self.app.logs.flush()
        lines = await self.app.store.read_logs(run.run_id, self.job(run, name).job_id)
        return [ln.text for ln in lines]


def normalise(value: Any) -> Any:
    """Compare rows the way the store keeps them (JSON)."""
    return json.loads(json.dumps(value, default=str))
