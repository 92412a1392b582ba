"""A circuit breaker per worker provider (distributed_use_cases.md, Tabla 36).

Pure logic: no I/O, no asyncio, time from an injected clock. ``CLOSED`` lets every call
through and counts outcomes over a sliding window (1 minute by default, in buckets); it
opens when, with at least ``min_calls`` calls in the window, more than ``threshold`` of them
failed (5%). ``OPEN`` refuses calls (``CircuitOpen``, a retryable WKM-PROV error) for
``cooldown`` seconds, then becomes ``HALF_OPEN``: one probe call goes through and the rest
are refused until it ends; the probe's success closes the breaker (with an empty window),
its failure opens it again for another cool-down.

Callers ask ``acquire()`` before a call and report it with ``success(permit)`` or
``failure(permit)``; a call that ended with neither (cancelled) is ``release(permit)``-d so
that a half-open breaker does not wait for a verdict that never comes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from faena.workers.port import ProviderError

log = logging.getLogger(__name__)

WINDOW = 60.0
THRESHOLD = 0.05
MIN_CALLS = 20
COOLDOWN = 30.0
BUCKETS = 60  # the window is counted in this many buckets: memory stays bounded


class BreakerState(IntEnum):
    """The ``wkm_breaker_state`` gauge's values."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class CircuitOpen(ProviderError):
    """The provider's breaker refuses calls for now (retryable: the job is re-queued)."""

    def __init__(self, message: str, *, provider: str, opened_at: float) -> None:
        super().__init__(message, retryable=True)
        self.provider = provider
        self.opened_at = opened_at


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; ``probe`` is the half-open breaker's single trial call."""

    probe: bool
    generation: int  # which opening of the breaker the permit belongs to


@dataclass
class _Bucket:
    start: float
    calls: int = 0
    failures: int = 0


Listener = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """Closed, open or half-open, from the recent outcomes of one provider's calls."""

    def __init__(
        self,
        name: str,
        *,
        clock: Callable[[], float] = time.time,
        window: float = WINDOW,
        threshold: float = THRESHOLD,
        min_calls: int = MIN_CALLS,
        cooldown: float = COOLDOWN,
        on_change: Listener | None = None,
    ) -> None:
        if window <= 0 or cooldown < 0 or not 0 <= threshold < 1 or min_calls < 1:
            raise ValueError("window > 0, cooldown >= 0, 0 <= threshold < 1, min_calls >= 1")
        self.name = name
        self._clock = clock
        self.window = window
        self.threshold = threshold
        self.min_calls = min_calls
        self.cooldown = cooldown
        self._on_change = on_change
        self._bucket_width = window / BUCKETS
        self._buckets: deque[_Bucket] = deque()
        self._state = BreakerState.CLOSED
        self.opened_at: float | None = None  # when it last opened (None: closed)
        self.last_error: str | None = None  # what the latest failed call said, for people
        self._probing = False
        # Bumped whenever the breaker opens or closes, so that a permit given before
        # cannot close or reopen a breaker that has moved on since.
        self._generation = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose cool-down is over is half-open."""
        if self._state is BreakerState.OPEN and self._cooled():
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def counts(self) -> tuple[int, int]:
        """(calls, failures) in the window now."""
        self._prune()
        return sum(b.calls for b in self._buckets), sum(b.failures for b in self._buckets)

    def status(self) -> dict[str, object]:
        """What the API shows: state, since when open, the window's counts."""
        state = self.state
        calls, failures = self.counts()
        return {
            "state": state.label,
            "opened_at": self.opened_at,
            "calls": calls,
            "failures": failures,
            "last_error": self.last_error,
        }

    # -- calls -----------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Leave for one call, or ``CircuitOpen`` at once."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit(probe=False, generation=self._generation)
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return Permit(probe=True, generation=self._generation)
        assert self.opened_at is not None
        since = datetime.fromtimestamp(self.opened_at, UTC).isoformat(timespec="seconds")
        why = "a probe call is under way" if state is BreakerState.HALF_OPEN else "cooling down"
        last = f"; last error: {self.last_error}" if self.last_error else ""
        raise CircuitOpen(
            f"provider {self.name} is unavailable (circuit open since {since}; {why}){last}",
            provider=self.name,
            opened_at=self.opened_at,
        )

    def success(self, permit: Permit | None = None) -> None:
        """A call ended well. ``permit`` None: a call the breaker did not gate (exec)."""
        if permit is not None and permit.probe:
            self._probing = False
            if permit.generation == self._generation and self._state is BreakerState.HALF_OPEN:
                self._close()
            return
        if self._state is BreakerState.CLOSED and self._current(permit):
            self._count(failed=False)

    def failure(self, permit: Permit | None = None, error: str | None = None) -> None:
        """A call failed (a provider error or a timeout); ``error`` says how."""
        if error is not None:
            self.last_error = error
        if permit is not None and permit.probe:
            self._probing = False
            if permit.generation == self._generation and self._state is BreakerState.HALF_OPEN:
                self._open()
            return
        if self._state is BreakerState.CLOSED and self._current(permit):
            self._count(failed=True)
            calls, failures = self.counts()
            if calls >= self.min_calls and failures > self.threshold * calls:
                self._open()

    def release(self, permit: Permit) -> None:
        """A call ended without a verdict (it was cancelled): free the probe slot."""
        if permit.probe and permit.generation == self._generation:
            self._probing = False

    # -- helpers ---------------------------------------------------------------------------

    def _current(self, permit: Permit | None) -> bool:
        # A call let through before the breaker last closed says nothing about it now.
        return permit is None or permit.generation == self._generation

    def _cooled(self) -> bool:
        return self.opened_at is not None and self._clock() - self.opened_at >= self.cooldown

    def _open(self) -> None:
        self.opened_at = self._clock()
        self._generation += 1
        self._probing = False
        self._buckets.clear()
        self._move(BreakerState.OPEN)

    def _close(self) -> None:
        self.opened_at = None
        self._generation += 1
        self._buckets.clear()
        self._move(BreakerState.CLOSED)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        log.warning("provider %s: circuit breaker %s -> %s", self.name, old.label, new.label)
        if self._on_change is not None:
            try:
                self._on_change(self.name, old, new)
            except Exception:
                log.warning("breaker listener failed", exc_info=True)

    def _count(self, *, failed: bool) -> None:
        now = self._clock()
        self._prune(now)
        start = now - (now % self._bucket_width)
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(_Bucket(start))
        bucket = self._buckets[-1]
        bucket.calls += 1
        bucket.failures += int(failed)

    def _prune(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        # A bucket counts while any part of it is within the window.
        while self._buckets and self._buckets[0].start + self._bucket_width <= now - self.window:
            self._buckets.popleft()
