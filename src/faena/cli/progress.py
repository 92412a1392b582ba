"""Live progress of a run: a rich table on a terminal, plain lines otherwise, or NDJSON."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from faena.domain.events import Event
from faena.domain.run import JobRun, PipelineRun
from faena.domain.states import JobState, RunState

TAIL = 15
_STYLE = {
    JobState.WAITING: ("·", "dim"),
    JobState.PENDING: ("○", "yellow"),
    JobState.SCHEDULED: ("○", "yellow"),
    JobState.RUNNING: ("▶", "cyan"),
    JobState.SUCCEEDED: ("✓", "green"),
    JobState.FAILED: ("✗", "red"),
    JobState.CANCELLED: ("⊘", "magenta"),
    JobState.SKIPPED: ("–", "dim"),
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Display:
    """Receives every bus event of the run and renders progress."""

    def __init__(self, snapshot: Callable[[], PipelineRun | None]) -> None:
        self.snapshot = snapshot
        self.run_id = ""
        self._tails: dict[tuple[str, int], deque[str]] = {}
        self._early: list[Event] = []

    def tail(self, job_id: str, index: int) -> list[str]:
        return list(self._tails.get((job_id, index), ()))

    def _keep_lines(self, event: Event) -> None:
        p = event.payload
        buf = self._tails.setdefault((p["job_id"], int(p["index"])), deque(maxlen=TAIL))
        buf.extend(line["text"] for line in p["lines"])

    async def on_event(self, event: Event) -> None:
        if not self.run_id:
            # Events can arrive before submit returns the run id: shown once it is known.
            self._early.append(event)
            return
        if event.correlation_id != self.run_id:
            return
        if event.subject == "ci.log.v1.chunk":
            self._keep_lines(event)
        self.handle(event)

    async def replay(self) -> None:
        early, self._early = self._early, []
        for event in early:
            await self.on_event(event)

    def handle(self, event: Event) -> None: ...

    def start(self, run_id: str) -> None:
        self.run_id = run_id

    def note(self, message: str) -> None: ...

    def finish(self, run: PipelineRun) -> None: ...


class JsonDisplay(Display):
    """One JSON object per line: every event, then the result."""

    def handle(self, event: Event) -> None:
        print(json.dumps(event.to_dict(), default=str), flush=True)

    def note(self, message: str) -> None:
        print(json.dumps({"type": "note", "message": message}), flush=True)

    def finish(self, run: PipelineRun) -> None:
        jobs = [
            {
                "job_id": j.job_id,
                "name": j.name,
                "state": j.state.value,
                "result": j.result,
                "attempt": j.attempt,
                "duration_s": j.duration,
                "error_code": j.error_code,
                "message": j.message,
                "outputs": j.outputs,
            }
            for j in run.jobs.values()
        ]
        print(
            json.dumps(
                {
                    "type": "result",
                    "run_id": run.run_id,
                    "pipeline": run.pipeline,
                    "state": run.state.value,
                    "result": run.result,
                    "message": run.message,
                    "jobs": jobs,
                }
            ),
            flush=True,
        )


class ConsoleDisplay(Display):
    """Human output: a live table on a terminal, one line per change elsewhere."""

    def __init__(self, snapshot: Callable[[], PipelineRun | None]) -> None:
        super().__init__(snapshot)
        self.console = Console(stderr=False, highlight=False)
        if not self.console.is_terminal:
            # Logs and CI capture: no wrapping at 80 columns.
            self.console = Console(highlight=False, soft_wrap=True)
        self.live: Live | None = None
        self._started = time.monotonic()
        self._printed_failures: set[str] = set()

    def start(self, run_id: str) -> None:
        super().start(run_id)
        run = self.snapshot()
        name = run.pipeline if run else ""
        self.console.print(f"[bold]run {run_id}[/] · {name}")
        if self.console.is_terminal:
            self.live = Live(
                _Table(self), console=self.console, refresh_per_second=8, transient=True
            )
            self.live.start()

    def handle(self, event: Event) -> None:
        s = event.subject
        if s in ("ci.job.v1.failed",) and not event.payload.get("will_retry"):
            self._failure(event.payload["job_id"])
        if self.live is None:
            self._line(event)

    def _job(self, job_id: str) -> JobRun | None:
        run = self.snapshot()
        return run.jobs.get(job_id) if run else None

    def _line(self, event: Event) -> None:
        p = event.payload
        job = self._job(p.get("job_id", "")) if "job_id" in p else None
        stamp = time.strftime("%H:%M:%S", time.localtime(event.occurred_at))
        s = event.subject
        if job is None:
            return
        if s == "ci.job.v1.started":
            text = f"▶ {job.name} started" + (
                f" (attempt {job.attempt})" if job.attempt > 1 else ""
            )
        elif s == "ci.job.v1.completed":
            text = f"✓ {job.name} succeeded in {fmt_duration(job.duration)}"
        elif s == "ci.job.v1.failed":
            retry = " — retrying" if p.get("will_retry") else ""
            text = f"✗ {job.name} failed: {p.get('message') or p.get('error_code')}{retry}"
        elif s == "ci.job.v1.cancelled":
            text = f"⊘ {job.name} cancelled: {p.get('reason', '')}"
        elif s == "ci.job.v1.skipped":
            text = f"– {job.name} skipped: {p.get('reason', '')}"
        else:
            return
        self.console.print(f"[dim]{stamp}[/] {text}", markup=True, highlight=False)

    def _failure(self, job_id: str) -> None:
        job = self._job(job_id)
        if job is None or job_id in self._printed_failures:
            return
        self._printed_failures.add(job_id)
        failed = [s for s in job.steps if s.state.value == "FAILED"]
        step = failed[-1] if failed else None
        lines = self.tail(job_id, step.index) if step else []
        title = f"✗ {job.name}" + (f" › {step.name}" if step else "")
        body = Text("\n".join(lines) if lines else "(no output)", style="dim")
        out = Group(Text(title, style="bold red"), body)
        if self.live is not None:
            self.live.console.print(out)
        else:
            self.console.print(out)

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]{message}[/]")

    def finish(self, run: PipelineRun) -> None:
        if self.live is not None:
            self.live.stop()
            self.console.print(_Table(self))
        elapsed = fmt_duration(
            (run.finished_at or time.time()) - (run.started_at or run.created_at)
        )
        counts: dict[str, int] = {}
        for j in run.jobs.values():
            counts[j.state.value.lower()] = counts.get(j.state.value.lower(), 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in counts.items())
        if run.state is RunState.SUCCEEDED:
            self.console.print(
                f"[green bold]✓ run {run.run_id} succeeded[/] in {elapsed} ({summary})"
            )
        else:
            verb = "was cancelled" if run.state is RunState.CANCELLED else "failed"
            self.console.print(f"[red bold]✗ run {run.run_id} {verb}[/] in {elapsed} ({summary})")
            if run.message:
                self.console.print(f"  {run.message}")
            self.console.print(f"  logs: faena logs {run.run_id} JOB")


class _Table:
    def __init__(self, display: ConsoleDisplay) -> None:
        self.display = display

    def __rich__(self) -> RenderableType:
        run = self.display.snapshot()
        table = Table.grid(padding=(0, 2))
        table.add_column(width=1)
        table.add_column()
        table.add_column()
        table.add_column(justify="right")
        if run is None:
            return table
        now = time.time()
        for job in run.jobs.values():
            icon, style = _STYLE[job.state]
            detail = job.state.value.lower()
            if job.state is JobState.RUNNING:
                running = [s for s in job.steps if s.state.value == "RUNNING"]
                if running:
                    detail = f"running › {running[0].name}"
            elif job.state is JobState.FAILED and job.message:
                detail = f"failed: {job.message}"
            if job.attempt > 1:
                detail += f" (attempt {job.attempt})"
            duration = job.duration
            if duration is None and job.started_at and job.state is JobState.RUNNING:
                duration = now - job.started_at
            table.add_row(
                Text(icon, style=style), job.name, Text(detail, style=style), fmt_duration(duration)
            )
        for key in run.templates:
            table.add_row(Text("·", style="dim"), key, Text("waiting (matrix)", style="dim"), "")
        return table


def make_display(json_out: bool, snapshot: Callable[[], PipelineRun | None]) -> Display:
    return JsonDisplay(snapshot) if json_out else ConsoleDisplay(snapshot)


def out(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
