"""Waiting for a worker's services to be healthy, the same way on every container provider:
run the service's health command in its container until it exits 0; a service that exits
first, or never passes, fails the job at once (not retried) with its last output."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from faena.domain.spec import ServiceSpec
from faena.workers.port import ProviderError

Exited = Callable[[], Awaitable[str | None]]  # "exited with code N", or None while it runs
Check = Callable[[list[str]], Awaitable[tuple[int, str]]]  # argv -> exit code, output
Tail = Callable[[], Awaitable[str]]  # "; its last output:\n..." or ""


async def wait_healthy(service: ServiceSpec, exited: Exited, check: Check, tail: Tail) -> None:
    """Return once ``service.health.cmd`` passes (at once without a health check)."""
    if service.health is None:
        return
    health = service.health
    last = ""
    for _ in range(max(health.retries, 1)):
        gone = await exited()
        if gone is not None:
            raise ProviderError(
                f"service {service.name!r} ({service.image}) {gone} before it was healthy"
                f"{await tail()}",
                retryable=False,
            )
        try:
            code, last = await asyncio.wait_for(check(["sh", "-c", health.cmd]), health.timeout)
        except TimeoutError:
            code, last = -1, f"health check timed out after {health.timeout:g}s"
        if code == 0:
            return
        await asyncio.sleep(health.interval)
    raise ProviderError(
        f"service {service.name!r} ({service.image}) never became healthy after "
        f"{health.retries} checks of {health.cmd!r}: {last.strip()[-300:]}{await tail()}",
        retryable=False,
    )
