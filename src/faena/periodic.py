"""A background flush every few milliseconds, and a last one on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PeriodicFlush:
    """Runs ``flush`` every ``interval`` seconds; a failing flush is logged and retried."""

    def __init__(self, flush: Callable[[], Awaitable[None]], interval: float, name: str) -> None:
        self._flush = flush
        self._interval = interval
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._started = False

    def start(self) -> None:
        self._started = True
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._flush()
            except Exception:
                # What was not flushed stays pending and goes with the next flush.
                log.exception("%s: flush failed", self._name)

    def cancel(self) -> None:
        """Stop the background flushes (no final flush)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._started:  # never started (a follower replica): nothing of its to flush
            await self._flush()
