"""What every provider does around a step the same way: one serialised line emitter for
the sink, the result of a step that could not start, the record of a running step that
``cancel`` reaches, and the step's ``$FAENA_OUTPUT`` read back into the result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faena.domain.outputs import parse_output_file
from faena.workers.port import ExecResult, OutputLine, OutputSink, Stream
from faena.workers.providers.output_pipe import Stop

Emit = Callable[[Stream, bytes], Awaitable[None]]


def emitter(sink: OutputSink) -> Emit:
    """Bytes of one line in, an ``OutputLine`` to ``sink`` out; never two calls at once."""
    lock = asyncio.Lock()

    async def emit(stream: Stream, raw: bytes) -> None:
        line = OutputLine(stream, raw.decode("utf-8", errors="replace"), time.time())
        async with lock:
            await sink(line)

    return emit


@dataclass
class RunningStep:
    """A step in flight: ``cancel`` asks it to stop, ``done`` says it has."""

    tasks: set[asyncio.Future[Any]] = field(default_factory=set)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def cancel_step(running: RunningStep | None) -> None:
    """Stop a running step and wait until it ended; no-op for None."""
    if running is None:
        return
    running.cancel.set()
    # Called from the sink, i.e. from inside the exec: waiting would deadlock.
    if asyncio.current_task() not in running.tasks:
        await running.done.wait()


async def failed_to_start(emit: Emit, started: float, exit_code: int, message: str) -> ExecResult:
    """A step that never ran (no shell, no directory): a ``faena:`` line says why."""
    await emit("stderr", f"faena: {message}".encode())
    return ExecResult(exit_code=exit_code, duration_ms=ms_since(started))


async def result_of(
    emit: Emit,
    started: float,
    exit_code: int,
    stop: Stop | None,
    output: Path,
    reason: str | None = None,
) -> ExecResult:
    """The result of a step that ran, with what it wrote to ``$FAENA_OUTPUT`` (a malformed
    file fails a successful step, and says why on stderr)."""
    text: str | None = None
    try:
        # A small file the step just wrote, on local disk: not worth a thread hop.
        text = output.read_text(encoding="utf-8", errors="replace")  # noqa: ASYNC240
    except FileNotFoundError:
        pass  # the step deleted it, or destroy raced us: no outputs
    except OSError as exc:
        await emit("stderr", f"faena: invalid $FAENA_OUTPUT: {exc}".encode())
        exit_code = exit_code or 1
    return await result_from(emit, started, exit_code, stop, text, reason)


async def result_from(
    emit: Emit,
    started: float,
    exit_code: int,
    stop: Stop | None,
    output: str | None,
    reason: str | None = None,
) -> ExecResult:
    """``result_of`` for a ``$FAENA_OUTPUT`` already read (from a pod); None: no file."""
    outputs: dict[str, str] = {}
    try:
        outputs = parse_output_file(output) if output is not None else {}
    except ValueError as exc:
        await emit("stderr", f"faena: invalid $FAENA_OUTPUT: {exc}".encode())
        exit_code = exit_code or 1
    return ExecResult(
        exit_code=exit_code,
        duration_ms=ms_since(started),
        timed_out=stop == "timed_out",
        cancelled=stop == "cancelled",
        outputs=outputs,
        reason=reason,
    )


async def told(emit: Emit, reason: str | None) -> str | None:
    """``reason`` (what the provider knows of a failure), also said on the step's stderr."""
    if reason:
        await emit("stderr", f"faena: {reason}".encode())
    return reason


def ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0
