"""What the orchestrator needs from outside: somewhere to publish committed events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from faena.domain.events import Event


class CommittedEventPublisher(Protocol):
    """Publishes events that are already durable in the outbox (the relay)."""

    async def publish_committed(self, events: Sequence[Event]) -> None: ...
