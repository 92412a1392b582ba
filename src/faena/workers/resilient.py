"""Timeouts, retries and a circuit breaker around any WorkerProvider.

``ResilientProvider`` wraps a provider and is one itself. Every call but ``exec`` has a
timeout: 3 s for control calls (``cancel``, ``destroy``; the seeds' provider timeout,
distributed_use_cases.md Tabla 36) and a longer one for ``create``, which may pull images,
start containers and wait for service health checks (120 s by default). ``exec`` has none:
steps have their own timeouts.

``create``, ``cancel`` and ``destroy`` are retried when they raise a retryable
``ProviderError`` or time out: 5 attempts in all, exponential back-off from 0.2 s (capped,
with jitter). ``ProviderError(retryable=False)`` is never retried, nor is ``exec`` (a step
may not be idempotent). Each attempt goes through the provider's ``CircuitBreaker``: while
it is open, calls fail at once with a retryable ``CircuitOpen`` and are not retried (the
job is re-queued, or a ``PoolSet`` falls back to another pool). ``exec`` is not gated by the
breaker (refusing a step of a job already running would not spare the provider anything),
but its infrastructure failures count in the breaker's window.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from faena.workers.breaker import CircuitBreaker, CircuitOpen, Permit
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    ProviderError,
    Worker,
    WorkerProvider,
    WorkerRequest,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTROL_TIMEOUT = 3.0
CREATE_TIMEOUT = 120.0
ATTEMPTS = 5
BACKOFF_BASE = 0.2
BACKOFF_CAP = 5.0


class CallObserver(Protocol):
    """Where failed provider calls are counted (``telemetry.metrics.Metrics`` is one)."""

    def provider_call_failed(self, provider: str, operation: str) -> None: ...


def backoff(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """The wait after failed attempt ``attempt`` (1-based): ``base * 2**(attempt-1)``, at
    most ``cap``, of which a random half ("equal jitter": never less than half of it)."""
    full = min(cap, base * 2.0 ** (attempt - 1))
    return full / 2 + rand() * full / 2


class ResilientProvider:
    """A ``WorkerProvider`` adding timeouts, retries and a circuit breaker to another."""

    def __init__(
        self,
        provider: WorkerProvider,
        *,
        breaker: CircuitBreaker | None = None,
        create_timeout: float = CREATE_TIMEOUT,
        control_timeout: float = CONTROL_TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        observer: CallObserver | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.name = provider.name
        self.enforces = provider.enforces
        self.inner = provider
        self.breaker = breaker if breaker is not None else CircuitBreaker(provider.name)
        self.create_timeout = create_timeout
        self.control_timeout = control_timeout
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._rand = rand
        self._observer = observer

    def status(self) -> dict[str, Any]:
        """The provider and its breaker, as ``GET /api/v1/workers`` lists them."""
        return {"name": self.name, "breaker": self.breaker.status()}

    # -- the WorkerProvider port -----------------------------------------------------------

    async def create(self, request: WorkerRequest) -> Worker:
        # Retrying is safe: create is idempotent by worker id.
        return await self._call("create", self.create_timeout, lambda: self.inner.create(request))

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        try:
            result = await self.inner.exec(worker, request, sink)
        except ProviderError as exc:
            self._failed("exec", None, exc.message)
            raise
        self.breaker.success()
        return result

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        await self._call("cancel", self.control_timeout, lambda: self.inner.cancel(worker, exec_id))

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        await self._call(
            "destroy", self.control_timeout, lambda: self.inner.destroy(worker, keep_for)
        )

    async def close(self) -> None:
        """Close the wrapped provider, if it has anything to close."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()

    # -- helpers ---------------------------------------------------------------------------

    async def _call(self, operation: str, timeout: float, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 1
        while True:
            permit = self.breaker.acquire()  # CircuitOpen: fail at once, no retry
            try:
                async with asyncio.timeout(timeout):
                    result = await call()
            except TimeoutError:
                error = ProviderError(
                    f"provider {self.name}: {operation} timed out after {timeout:g} s"
                )
                self._failed(operation, permit, error.message)
            except CircuitOpen:
                # A nested breaker refused it (a pool of pools): not this provider's fault.
                self.breaker.release(permit)
                raise
            except ProviderError as exc:
                self._failed(operation, permit, exc.message)
                if not exc.retryable:
                    raise
                error = exc
            except BaseException:
                # Not an infrastructure failure (a bug, or the caller cancelled): no verdict.
                self.breaker.release(permit)
                raise
            else:
                self.breaker.success(permit)
                return result
            if attempt >= self.attempts:
                raise error
            delay = backoff(attempt, base=self.backoff_base, cap=self.backoff_cap, rand=self._rand)
            log.info(
                "provider %s: %s failed (attempt %d of %d), retrying in %.2f s: %s",
                self.name, operation, attempt, self.attempts, delay, error.message,
            )  # fmt: skip
            await self._sleep(delay)
            attempt += 1

    def _failed(self, operation: str, permit: Permit | None, error: str) -> None:
        self.breaker.failure(permit, error)
        if self._observer is not None:
            try:
                self._observer.provider_call_failed(self.name, operation)
            except Exception:
                log.warning("provider call observer failed", exc_info=True)


def provider_status(provider: WorkerProvider) -> dict[str, Any]:
    """``status()`` of a ResilientProvider; a bare provider has no breaker (None)."""
    if isinstance(provider, ResilientProvider):
        return provider.status()
    return {"name": provider.name, "breaker": None}
