"""Step output: stored in batches and published live as ``ci.log.v1.chunk``.

Logs bypass the event log (they are many and never change run state); the bus copy is
for live viewers, the store copy is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from faena.bus.port import EventBus
from faena.domain.events import make_event
from faena.store.port import LogLine, Store
from faena.workers.port import OutputLine


class LogRecorder:
    def __init__(self, store: Store, bus: EventBus, flush_interval: float = 0.1) -> None:
        self._store = store
        self._bus = bus
        self._interval = flush_interval
        self._pending: list[LogLine] = []
        self._seq: dict[tuple[str, int, int], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="log-recorder")

    async def record(
        self, run_id: str, job_id: str, attempt: int, index: int, lines: Sequence[OutputLine]
    ) -> None:
        if not lines:
            return
        self._pending.extend(
            LogLine(run_id, job_id, attempt, index, ln.stream, ln.ts, ln.text) for ln in lines
        )
        key = (job_id, attempt, index)
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        event = make_event(
            "ci.log.v1.chunk",
            {
                "job_id": job_id,
                "step_id": f"{job_id}.s{index}",
                "index": index,
                "attempt": attempt,
                "seq": seq,
                "lines": [{"stream": ln.stream, "ts": ln.ts, "text": ln.text} for ln in lines],
            },
            correlation_id=run_id,
        )
        await self._bus.publish([event])

    async def flush(self) -> None:
        async with self._lock:
            lines, self._pending = self._pending, []
            if lines:
                await self._store.append_logs(lines)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
