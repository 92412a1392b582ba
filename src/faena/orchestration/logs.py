"""Step output: stored in batches and published live as ``ci.log.v1.chunk``.

Logs bypass the event log (they are many and never change run state); the bus copy is
for live viewers, the store copy is the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from faena.bus.port import EventBus
from faena.domain.events import make_event
from faena.periodic import PeriodicFlush
from faena.retries import with_retries
from faena.store.port import LogLine, Store
from faena.workers.port import OutputLine


class LogRecorder:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        flush_interval: float = 0.1,
        retry_delay: float = 0.1,
    ) -> None:
        self._retry_delay = retry_delay
        self._store = store
        self._bus = bus
        self._pending: list[LogLine] = []
        self._seq: dict[tuple[str, int, int], int] = {}
        self._lock = asyncio.Lock()
        self._periodic = PeriodicFlush(self.flush, flush_interval, "log-recorder")

    async def start(self) -> None:
        self._periodic.start()

    async def record(
        self,
        run_id: str,
        job_id: str,
        attempt: int,
        index: int,
        lines: Sequence[OutputLine],
        chunk: str | None = None,
    ) -> None:
        """Keep lines for the next flush; a ``chunk`` key already stored is not stored twice."""
        if not lines:
            return
        self._pending.extend(
            LogLine(run_id, job_id, attempt, index, ln.stream, ln.ts, ln.text, chunk=chunk)
            for ln in lines
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
        """Store the pending lines; a store briefly away (a database restart) is retried
        like the orchestrator's commits, then the lines stay pending and this raises."""
        async with self._lock:
            lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                await with_retries(lambda: self._store.append_logs(lines), "storing log lines",
                                   delay=self._retry_delay)  # fmt: skip
            except Exception:
                self._pending[:0] = lines  # kept for the next flush
                raise

    async def close(self) -> None:
        await self._periodic.close()
