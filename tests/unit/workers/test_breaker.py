"""CircuitBreaker, driven by a fake clock: every state and transition."""

from __future__ import annotations

import pytest
from worker_fakes import Clock

from faena.domain.errors import ErrorCode
from faena.workers.breaker import BreakerState, CircuitBreaker, CircuitOpen, Permit
from faena.workers.port import ProviderError


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[tuple[BreakerState, BreakerState]]:
    return []


@pytest.fixture
def breaker(clock: Clock, changes: list[tuple[BreakerState, BreakerState]]) -> CircuitBreaker:
    return CircuitBreaker(
        "docker", clock=clock, on_change=lambda _name, old, new: changes.append((old, new))
    )


def calls(breaker: CircuitBreaker, ok: int = 0, failed: int = 0) -> None:
    for _ in range(ok):
        breaker.success(breaker.acquire())
    for _ in range(failed):
        breaker.failure(breaker.acquire())


def trip(breaker: CircuitBreaker) -> None:
    calls(breaker, ok=18, failed=2)
    assert breaker.state is BreakerState.OPEN


def test_starts_closed_and_lets_calls_through(breaker: CircuitBreaker) -> None:
    assert breaker.state is BreakerState.CLOSED
    permit = breaker.acquire()
    assert permit == Permit(probe=False, generation=0)
    assert breaker.status() == {
        "state": "closed", "opened_at": None, "calls": 0, "failures": 0, "last_error": None
    }  # fmt: skip


def test_few_calls_never_open_it_whatever_failed(breaker: CircuitBreaker) -> None:
    calls(breaker, failed=19)  # every call failed, but fewer than min_calls
    assert breaker.state is BreakerState.CLOSED
    assert breaker.counts() == (19, 19)


def test_one_failure_of_the_first_three_does_not_open_it(breaker: CircuitBreaker) -> None:
    calls(breaker, ok=2, failed=1)
    calls(breaker, ok=17)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.counts() == (20, 1)  # 5%: not more than 5%


def test_opens_above_five_percent_with_enough_calls(
    breaker: CircuitBreaker, clock: Clock, changes: list[tuple[BreakerState, BreakerState]]
) -> None:
    calls(breaker, ok=38, failed=2)
    assert breaker.state is BreakerState.CLOSED  # 2 of 40: exactly 5%
    calls(breaker, failed=1)  # 3 of 41: 7.3%
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_at == clock.now
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_only_the_last_minute_counts(breaker: CircuitBreaker, clock: Clock) -> None:
    calls(breaker, failed=10)
    clock.advance(62)  # those failures left the window
    assert breaker.counts() == (0, 0)
    calls(breaker, ok=19, failed=1)
    assert breaker.state is BreakerState.CLOSED


def test_calls_spread_over_the_minute_add_up(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(9):
        calls(breaker, ok=1, failed=1)
        clock.advance(5)  # 45 s in all: still within the window
    assert breaker.counts() == (18, 9)
    assert breaker.state is BreakerState.CLOSED
    calls(breaker, ok=1, failed=1)
    assert breaker.state is BreakerState.OPEN


def test_successes_only_never_open_it(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(100):
        calls(breaker, ok=10)
        clock.advance(1)
    assert breaker.state is BreakerState.CLOSED


def test_open_refuses_at_once_with_a_retryable_provider_error(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    trip(breaker)
    clock.advance(10)
    with pytest.raises(CircuitOpen) as raised:
        breaker.acquire()
    err = raised.value
    assert isinstance(err, ProviderError)
    assert err.retryable and err.code is ErrorCode.WKM_PROV
    assert err.message.startswith("provider docker is unavailable (circuit open since ")
    assert "1970-01-01T00:16:40+00:00" in err.message  # the fake clock's 1000 s
    assert err.provider == "docker" and err.opened_at == 1_000.0


def test_open_ignores_outcomes_of_calls_it_did_not_gate(breaker: CircuitBreaker) -> None:
    trip(breaker)
    breaker.success()  # an exec ending well
    breaker.failure()
    assert breaker.state is BreakerState.OPEN


def test_cooldown_then_half_open_lets_one_probe(
    breaker: CircuitBreaker, clock: Clock, changes: list[tuple[BreakerState, BreakerState]]
) -> None:
    trip(breaker)
    clock.advance(29.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitOpen, match="a probe call is under way"):
        breaker.acquire()
    assert changes[-1] == (BreakerState.OPEN, BreakerState.HALF_OPEN)
    assert breaker.status()["state"] == "half-open"


def test_probe_success_closes_with_a_fresh_window(
    breaker: CircuitBreaker, clock: Clock, changes: list[tuple[BreakerState, BreakerState]]
) -> None:
    trip(breaker)
    clock.advance(30)
    breaker.success(breaker.acquire())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.opened_at is None
    assert breaker.counts() == (0, 0)
    assert not breaker.acquire().probe
    assert [new for _, new in changes] == [
        BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED,
    ]  # fmt: skip


def test_probe_failure_opens_it_for_another_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    trip(breaker)
    clock.advance(30)
    breaker.failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_at == clock.now
    clock.advance(29)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    clock.advance(1)
    assert breaker.acquire().probe


def test_a_released_probe_frees_the_slot(breaker: CircuitBreaker, clock: Clock) -> None:
    trip(breaker)
    clock.advance(30)
    breaker.release(breaker.acquire())  # the probe was cancelled: no verdict
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire().probe


def test_a_stale_permit_does_not_move_the_breaker(breaker: CircuitBreaker, clock: Clock) -> None:
    slow = breaker.acquire()  # a call let through while closed, still running
    trip(breaker)
    clock.advance(30)
    probe = breaker.acquire()
    breaker.failure(slow)  # ends after the breaker opened: says nothing of now
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.success(probe)
    assert breaker.state is BreakerState.CLOSED
    breaker.failure(slow)  # and nothing of the new window either
    assert breaker.counts() == (0, 0)


def test_non_probe_outcomes_in_half_open_do_not_close_it(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    trip(breaker)
    clock.advance(30)
    probe = breaker.acquire()
    breaker.success()  # an exec
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.failure(probe)
    assert breaker.state is BreakerState.OPEN


def test_can_reopen_after_closing(breaker: CircuitBreaker, clock: Clock) -> None:
    trip(breaker)
    clock.advance(30)
    breaker.success(breaker.acquire())
    trip(breaker)
    assert breaker.opened_at == clock.now


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", threshold=1.5)
    with pytest.raises(ValueError):
        CircuitBreaker("x", min_calls=0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", window=0)


def test_custom_thresholds(clock: Clock) -> None:
    b = CircuitBreaker("k8s", clock=clock, min_calls=4, threshold=0.5, cooldown=5)
    calls(b, ok=2, failed=2)
    assert b.state is BreakerState.CLOSED
    calls(b, failed=1)
    assert b.state is BreakerState.OPEN
    clock.advance(5)
    assert b.state is BreakerState.HALF_OPEN


def test_a_failing_listener_does_not_break_the_breaker(clock: Clock) -> None:
    def boom(_name: str, _old: BreakerState, _new: BreakerState) -> None:
        raise RuntimeError("listener bug")

    b = CircuitBreaker("x", clock=clock, on_change=boom)
    trip(b)
    assert b.state is BreakerState.OPEN


def test_an_open_breaker_says_what_the_last_failure_was() -> None:
    clock = Clock()
    breaker = CircuitBreaker("docker", clock=clock)
    for _ in range(20):
        breaker.failure(breaker.acquire(), "cannot reach the docker daemon (no such socket)")
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert "last error: cannot reach the docker daemon (no such socket)" in refused.value.message
    assert breaker.status()["last_error"] == "cannot reach the docker daemon (no such socket)"
