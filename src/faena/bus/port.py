"""The EventBus port: at-least-once delivery of domain events to subscribers.

A handler that returns acknowledges the event; one that raises gets it again after a
delay, up to ``max_deliver`` times, after which the event goes to ``ci.dlq.<subject>``.
Delivery order is publish order per subscription, unless it subscribed with
``ordered=False`` (a consumer indifferent to order, such as a counter or a wake-up, which an
adapter may then serve in batches). Consumers must be idempotent (an inbox of
idempotency keys), since an event may arrive more than once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from faena.domain.events import Event

Handler = Callable[[Event], Awaitable[None]]
DLQ_PREFIX = "ci.dlq."


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class EventBus(Protocol):
    """Publishes events and delivers them to every matching subscription."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return if the bus can take events now; raise otherwise (readiness)."""
        ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Hand events to the bus; returns once the bus holds them durably (adapter-wise)."""
        ...

    async def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        durable: str,
        max_deliver: int = 5,
        retry_delay: float = 0.05,
        ordered: bool = True,
    ) -> Subscription:
        """Deliver events whose subject matches ``pattern`` (NATS wildcards ``*``, ``>``)."""
        ...
