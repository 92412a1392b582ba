"""PeriodicFlush keeps flushing after a failure and flushes once more on close."""

from __future__ import annotations

import asyncio

from faena.periodic import PeriodicFlush


async def test_failures_are_retried_and_close_flushes() -> None:
    calls: list[str] = []

    async def flush() -> None:
        calls.append("flush")
        if len(calls) == 1:
            raise OSError("disk full")

    periodic = PeriodicFlush(flush, 0.01, "test")
    periodic.start()
    async with asyncio.timeout(5):
        while len(calls) < 3:
            await asyncio.sleep(0.005)
    before = len(calls)
    await periodic.close()
    assert len(calls) == before + 1
