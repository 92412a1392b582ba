"""ResilientProvider over a fake provider: timeouts, retries with back-off, the breaker.

Delays go through a fake sleep; the timeouts that must fire are tiny and wait on calls
that never return, so no test waits on, or asserts, wall-clock time.
"""

from __future__ import annotations

import asyncio

import pytest
from worker_fakes import HANG, Clock, FakeProvider, FakeSleep, permanent, retryable

from faena.telemetry.metrics import Metrics
from faena.workers.breaker import BreakerState, CircuitBreaker, CircuitOpen
from faena.workers.port import ExecRequest, OutputLine, ProviderError, Worker, WorkerRequest
from faena.workers.resilient import (
    ATTEMPTS,
    CONTROL_TIMEOUT,
    CREATE_TIMEOUT,
    ResilientProvider,
    backoff,
    provider_status,
)

REQ = WorkerRequest("w1", "r1", "r1.build")
WORKER = Worker("w1", "fake", "/ws/w1")


class Failures:
    """A CallObserver that remembers what failed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def provider_call_failed(self, provider: str, operation: str) -> None:
        self.seen.append((provider, operation))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inner() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def sleep(clock: Clock) -> FakeSleep:
    return FakeSleep(clock)


@pytest.fixture
def failures() -> Failures:
    return Failures()


@pytest.fixture
def provider(
    inner: FakeProvider, clock: Clock, sleep: FakeSleep, failures: Failures
) -> ResilientProvider:
    return ResilientProvider(
        inner,
        breaker=CircuitBreaker(inner.name, clock=clock),
        sleep=sleep,
        rand=lambda: 0.5,
        observer=failures,
    )


async def nothing(_line: OutputLine) -> None:
    return None


def test_is_a_provider_with_the_wrapped_ones_name_and_limits(provider: ResilientProvider) -> None:
    assert provider.name == "fake"
    assert provider.enforces == frozenset({"cpu"})
    assert provider.create_timeout == CREATE_TIMEOUT == 120.0
    assert provider.control_timeout == CONTROL_TIMEOUT == 3.0
    assert provider.attempts == ATTEMPTS == 5


def test_backoff_is_exponential_capped_and_jittered() -> None:
    def low() -> float:
        return 0.0

    def high() -> float:
        return 1.0

    assert [backoff(n, base=0.2, cap=5.0, rand=high) for n in range(1, 7)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    )
    assert [backoff(n, base=0.2, cap=5.0, rand=low) for n in range(1, 4)] == pytest.approx(
        [0.1, 0.2, 0.4]
    )


async def test_calls_go_through(provider: ResilientProvider, inner: FakeProvider) -> None:
    worker = await provider.create(REQ)
    assert worker.worker_id == "w1"
    lines: list[OutputLine] = []

    async def sink(line: OutputLine) -> None:
        lines.append(line)

    result = await provider.exec(worker, ExecRequest("e1", "true"), sink)
    assert result.exit_code == 0 and lines
    await provider.cancel(worker, "e1")
    await provider.destroy(worker, keep_for=60.0)
    assert [op for op, _ in inner.calls] == ["create", "exec", "cancel", "destroy"]
    assert inner.kept == {"w1": 60.0}


async def test_retryable_errors_are_retried_with_backoff(
    provider: ResilientProvider, inner: FakeProvider, sleep: FakeSleep, failures: Failures
) -> None:
    inner.fail("create", retryable(), retryable(), retryable())
    worker = await provider.create(REQ)
    assert worker.worker_id == "w1"
    assert inner.count("create") == 4
    assert sleep.delays == pytest.approx([0.15, 0.3, 0.6])  # 0.2, 0.4, 0.8 at 3/4 each
    assert failures.seen == [("fake", "create")] * 3


async def test_five_attempts_in_all_then_the_last_error(
    provider: ResilientProvider, inner: FakeProvider, sleep: FakeSleep
) -> None:
    inner.fail("destroy", *(retryable(f"down {n}") for n in range(1, 7)))
    with pytest.raises(ProviderError, match="down 5") as raised:
        await provider.destroy(WORKER)
    assert raised.value.retryable
    assert inner.count("destroy") == 5
    assert len(sleep.delays) == 4


async def test_permanent_errors_are_never_retried(
    provider: ResilientProvider, inner: FakeProvider, sleep: FakeSleep, failures: Failures
) -> None:
    inner.fail("create", permanent())
    with pytest.raises(ProviderError, match="no such image") as raised:
        await provider.create(REQ)
    assert not raised.value.retryable
    assert inner.count("create") == 1 and sleep.delays == []
    assert failures.seen == [("fake", "create")]


async def test_exec_is_never_retried(
    provider: ResilientProvider, inner: FakeProvider, failures: Failures
) -> None:
    inner.live["w1"] = WORKER
    inner.fail("exec", retryable("lost the container"))
    with pytest.raises(ProviderError, match="lost the container"):
        await provider.exec(WORKER, ExecRequest("e1", "make deploy"), nothing)
    assert inner.count("exec") == 1
    assert failures.seen == [("fake", "exec")]
    assert provider.breaker.counts() == (1, 1)


async def test_other_errors_are_not_retried_and_not_counted(
    provider: ResilientProvider, inner: FakeProvider
) -> None:
    inner.fail("cancel", RuntimeError("a bug"))
    with pytest.raises(RuntimeError):
        await provider.cancel(WORKER, "e1")
    assert inner.count("cancel") == 1
    assert provider.breaker.counts() == (0, 0)


async def test_a_control_call_that_hangs_times_out_and_is_retried(
    inner: FakeProvider, sleep: FakeSleep, failures: Failures
) -> None:
    provider = ResilientProvider(inner, control_timeout=0.01, sleep=sleep, observer=failures)
    inner.fail("cancel", HANG, HANG)
    await provider.cancel(WORKER, "e1")
    assert inner.count("cancel") == 3
    assert failures.seen == [("fake", "cancel")] * 2


async def test_create_has_its_own_timeout(inner: FakeProvider, sleep: FakeSleep) -> None:
    provider = ResilientProvider(inner, create_timeout=0.01, attempts=2, sleep=sleep)
    inner.fail("create", HANG, HANG)
    with pytest.raises(ProviderError, match=r"create timed out after 0\.01 s") as raised:
        await provider.create(REQ)
    assert raised.value.retryable
    assert inner.count("create") == 2


async def test_exec_has_no_timeout_of_its_own(inner: FakeProvider) -> None:
    # A control timeout this small would fire at once if exec had it.
    provider = ResilientProvider(inner, control_timeout=0.0001, create_timeout=0.0001)
    inner.live["w1"] = WORKER
    inner.fail("exec", HANG)
    task = asyncio.create_task(provider.exec(WORKER, ExecRequest("e1", "sleep 1h"), nothing))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_failures_open_the_breaker_and_then_calls_fail_at_once(
    provider: ResilientProvider, inner: FakeProvider, clock: Clock, sleep: FakeSleep
) -> None:
    for n in range(20):
        await provider.create(WorkerRequest(f"ok{n}", "r", "r.j"))
    inner.fail("create", *(retryable() for _ in range(10)))
    with pytest.raises(CircuitOpen):
        await provider.create(REQ)  # 2 failures of 22 open it; the 3rd attempt is refused
    assert provider.breaker.state is BreakerState.OPEN
    calls = inner.count("create")
    with pytest.raises(CircuitOpen, match="provider fake is unavailable") as raised:
        await provider.destroy(WORKER)
    assert raised.value.retryable
    assert inner.count("create") == calls and inner.count("destroy") == 0
    assert provider_status(provider)["breaker"]["state"] == "open"


async def test_half_open_probe_success_closes_it(
    provider: ResilientProvider, inner: FakeProvider, clock: Clock
) -> None:
    breaker = provider.breaker
    trip(breaker)
    assert breaker.state is BreakerState.OPEN
    clock.advance(30)
    await provider.create(REQ)
    assert breaker.state is BreakerState.CLOSED


async def test_half_open_probe_failure_reopens_without_retrying(
    provider: ResilientProvider, inner: FakeProvider, clock: Clock
) -> None:
    breaker = provider.breaker
    trip(breaker)
    clock.advance(30)
    inner.fail("create", retryable(), retryable())
    with pytest.raises(CircuitOpen):
        await provider.create(REQ)  # the probe fails, the retry is refused
    assert inner.count("create") == 1
    assert breaker.state is BreakerState.OPEN


async def test_a_cancelled_probe_frees_the_half_open_slot(
    provider: ResilientProvider, inner: FakeProvider, clock: Clock
) -> None:
    breaker = provider.breaker
    trip(breaker)
    clock.advance(30)
    inner.fail("create", HANG)
    task = asyncio.create_task(provider.create(REQ))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is BreakerState.HALF_OPEN
    await provider.create(REQ)
    assert breaker.state is BreakerState.CLOSED


async def test_metrics_count_failures_and_show_breaker_states(
    inner: FakeProvider, clock: Clock, sleep: FakeSleep
) -> None:
    metrics = Metrics()
    provider = ResilientProvider(
        inner, breaker=CircuitBreaker("fake", clock=clock), sleep=sleep, observer=metrics
    )
    metrics.add_breaker_source(lambda: {provider.name: int(provider.breaker.state)})
    inner.fail("create", retryable(), retryable())
    await provider.create(REQ)
    body, _ = metrics.render()
    text = body.decode()
    assert 'wkm_provider_call_failures_total{operation="create",provider="fake"} 2.0' in text
    assert 'wkm_breaker_state{provider="fake"} 0.0' in text
    while provider.breaker.state is BreakerState.CLOSED:
        provider.breaker.failure(provider.breaker.acquire())
    assert 'wkm_breaker_state{provider="fake"} 2.0' in metrics.render()[0].decode()
    clock.advance(31)  # the jittered sleeps made the clock fractional: no rounding edge
    assert 'wkm_breaker_state{provider="fake"} 1.0' in metrics.render()[0].decode()


async def test_close_reaches_the_wrapped_provider() -> None:
    class Closable(FakeProvider):
        closed = False

        async def close(self) -> None:
            self.closed = True

    inner = Closable()
    await ResilientProvider(inner).close()
    assert inner.closed
    await ResilientProvider(FakeProvider()).close()  # nothing to close: fine


def test_a_bare_provider_has_no_breaker() -> None:
    assert provider_status(FakeProvider(name="local")) == {"name": "local", "breaker": None}


def trip(breaker: CircuitBreaker) -> None:
    """Open the breaker: 20 failed calls, 100% of the window (opens above 5% of >= 20)."""
    for _ in range(20):
        breaker.failure(breaker.acquire())
