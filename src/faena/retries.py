"""Retrying a store write through a short outage: the seeds' ORC-INFRA policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 7  # exponential back-off from 0.1 s: ~13 s in all, a database restart


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    what: str,
    *,
    delay: float = 0.1,
    attempts: int = ATTEMPTS,
    final: type[Exception] | tuple[type[Exception], ...] = (),
) -> T:
    """Await ``fn()`` until it succeeds, at most ``attempts`` times; the last error is raised.
    Errors of the ``final`` types are raised at once (trying again cannot help)."""
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as exc:
            if attempt == attempts or isinstance(exc, final):
                raise
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.1fs",
                        what, attempt, attempts, exc, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
