"""Mailboxes of remote agents: the assignments and revocations each node must hear of.

Fed by ``ci.assignment.v1.created`` and ``ci.assignment.v1.revoked``; agents long-poll
their node's mailbox with a cursor and a message stays until a later poll acknowledges
it, so nothing is lost when a poll's answer is. Cursors carry the server's epoch: after a
restart an old cursor means "from the start".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from faena.bus.port import EventBus, Subscription
from faena.domain.events import Event, new_id

Kind = Literal["assign", "revoke", "exec", "resume"]


@dataclass(frozen=True)
class Message:
    seq: int
    kind: Kind
    assignment_id: str
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "assignment_id": self.assignment_id,
            "job_id": self.job_id,
            **self.data,
        }


@dataclass
class _Mailbox:
    messages: list[Message] = field(default_factory=list)
    seq: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Dispatcher:
    def __init__(self, bus: EventBus, *, local: Callable[[str], bool]) -> None:
        self._bus = bus
        self._local = local  # nodes served in-process, straight from the bus
        self.epoch = new_id()[:8]
        self._boxes: dict[str, _Mailbox] = {}
        self._subs: list[Subscription] = []
        self._closing = False

    async def start(self) -> None:
        self._subs.append(
            await self._bus.subscribe("ci.assignment.v1.*", self._on_event, durable="dispatch")
        )

    def shutdown(self) -> None:
        """Answer every waiting poll now, and every later one at once: the server stops."""
        self._closing = True
        for box in self._boxes.values():
            box.wake.set()

    async def close(self) -> None:
        self.shutdown()
        for s in self._subs:
            await s.unsubscribe()

    async def _on_event(self, event: Event) -> None:
        p = event.payload
        node_id = p.get("node_id")
        if not node_id or self._local(node_id):
            return
        if event.subject == "ci.assignment.v1.created":
            self.post(node_id, "assign", p["assignment_id"], p["job_id"])
        elif event.subject == "ci.assignment.v1.revoked" and p.get("assignment_id"):
            self.post(node_id, "revoke", p["assignment_id"], p["job_id"])

    def post(
        self,
        node_id: str,
        kind: Kind,
        assignment_id: str,
        job_id: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        box = self._boxes.setdefault(node_id, _Mailbox())
        message = Message(0, kind, assignment_id, job_id, dict(data or {}))
        if any(m.to_dict() == message.to_dict() for m in box.messages):
            return  # a redelivered event
        box.seq += 1
        box.messages.append(Message(box.seq, kind, assignment_id, job_id, message.data))
        box.wake.set()

    def forget(self, node_id: str) -> None:
        """Drop a lost node's mailbox: its assignments were failed over."""
        box = self._boxes.pop(node_id, None)
        if box is not None:
            box.wake.set()

    def cursor(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"

    def _acked(self, cursor: str | None) -> int:
        if not cursor or ":" not in cursor:
            return 0
        epoch, _, seq = cursor.partition(":")
        return int(seq) if epoch == self.epoch and seq.isdigit() else 0

    async def poll(
        self, node_id: str, cursor: str | None, timeout: float
    ) -> tuple[list[Message], str]:
        """Messages after ``cursor`` (waiting up to ``timeout`` for one) and the new cursor."""
        acked = self._acked(cursor)
        box = self._boxes.setdefault(node_id, _Mailbox())
        box.messages = [m for m in box.messages if m.seq > acked]
        if not box.messages and not self._closing:
            box.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(box.wake.wait(), timeout)
            box = self._boxes.get(node_id) or _Mailbox()
        pending = [m for m in box.messages if m.seq > acked]
        return pending, self.cursor(pending[-1].seq if pending else acked)
