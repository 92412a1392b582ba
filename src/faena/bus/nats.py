"""EventBus on NATS JetStream: the distributed shape's bus.

Stream. One file-backed stream (``FAENA`` by default) captures ``ci.>``, so it also holds the
dead letters (``ci.dlq.>``): one place to inspect, and a DLQ subscriber is just another
consumer. Retention follows communication_architecture.md Tablas 9 and 19 by subject:
Step* and log chunks 30 days, Job* and the rest of the business events (runs, assignments,
workers, nodes, artifacts, dead letters) 90 days, security events 180 days, metrics one day,
traces seven. One stream holds them all through per-message TTLs (``Nats-TTL``, NATS 2.11+;
the stream's ``max_age`` is the longest retention): separate streams per retention could
not share the ``ci.>`` capture, and each new subject family would need one. The store's
append-only event log, never trimmed, stays the record projections are rebuilt from. Every event is
published with ``Nats-Msg-Id`` = its idempotency key, so the server drops a duplicate that
arrives within ``duplicate_window`` (an outbox relay republishing after a crash, or
``publish`` retrying after a timeout whose first try did land). ``publish`` waits for the
server's acknowledgements (the stream holds the events durably) and retries within
``publish_timeout`` so that a NATS restart is ridden out; past it, it raises and the events
stay in the outbox.

Consumers. ``subscribe`` creates or binds a durable pull consumer named after ``durable`` with
the pattern as its filter subject, explicit acks and ``DeliverPolicy.NEW`` (a new durable
starts at the present, as an in-process subscription does; an existing one resumes where it
stopped). A background task fetches and calls the handler; success acks, a raise naks with
``retry_delay``. By default ``max_ack_pending=1``: the server hands out the next event only
after the previous one is acked, which keeps publish order per subscription even across
retries (the port's promise, and what MemoryBus does); a larger value trades that for
throughput. A subscription made with ``ordered=False`` gets ``UNORDERED_ACK_PENDING`` and is
fetched in batches of as many: a round trip per batch instead of per event. Subscribing
twice with the same ``durable`` (several replicas) shares one
consumer: the work is split between them.

Dead letters. The server-side ``max_deliver`` is left unlimited and the adapter dead-letters
itself: when a delivery that reaches ``max_deliver`` fails (or a delivery arrives past it,
because a process died while handling it), the event is published to
``ci.dlq.<subject>`` (same envelope, as MemoryBus does; the reason travels in
``Faena-Dlq-*`` headers) and the original is terminated. A server-side limit would instead
drop the event silently, with only an advisory. A dead letter that itself fails for good is
terminated and logged, never re-dead-lettered (no ``ci.dlq.ci.dlq.`` loops).

Reconnection. nats-py reconnects forever (``max_reconnect_attempts=-1``); durable consumers
and unacked messages live in the server's store, so a restart loses nothing: fetch loops
retry and unacked events are redelivered after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import replace

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from faena.bus.port import DLQ_PREFIX, Handler
from faena.domain.events import Event

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
MSG_TTL = "Nats-TTL"
DAY = 86400.0
# Subject prefix -> seconds kept (communication_architecture.md Tablas 9 and 19).
RETENTION: dict[str, float] = {
    "ci.security.": 180 * DAY,
    "ci.step.": 30 * DAY,
    "ci.log.": 30 * DAY,
    "ci.metric.": 1 * DAY,
    "ci.trace.": 7 * DAY,
}
DEFAULT_RETENTION = 90 * DAY  # Job*, runs, assignments, workers, nodes, artifacts, DLQ
DLQ_REASON = "Faena-Dlq-Reason"
DLQ_CONSUMER = "Faena-Dlq-Consumer"
DLQ_DELIVERIES = "Faena-Dlq-Deliveries"
DLQ_STREAM_SEQ = "Faena-Dlq-Stream-Seq"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Errors after which trying again later can succeed (connection down, server restarting).
_TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


class BusUnavailable(ConnectionError):
    """The bus cannot take events now (not connected, JetStream unreachable)."""


def consumer_name(durable: str) -> str:
    """A durable name NATS accepts: no ``.``, ``*``, ``>``, spaces or slashes."""
    name = _UNSAFE.sub("_", durable).strip("_")
    if not name:
        raise ValueError(f"durable name {durable!r} has no usable characters")
    return name


def encode(event: Event) -> bytes:
    return json.dumps(event.to_dict(), separators=(",", ":")).encode()


def _header_value(text: str, limit: int = 512) -> str:
    return " ".join(text.split())[:limit]


UNORDERED_ACK_PENDING = 64


class _JetStreamSubscription:
    def __init__(
        self,
        bus: JetStreamBus,
        pattern: str,
        handler: Handler,
        name: str,
        max_deliver: int,
        retry_delay: float,
        max_ack_pending: int,
    ) -> None:
        self.bus = bus
        self.max_ack_pending = max_ack_pending
        self.pattern = pattern
        self.handler = handler
        self.name = name
        self.max_deliver = max_deliver
        self.retry_delay = retry_delay
        self.pending = 0  # num_pending of the last delivery (tel_queue_depth)
        self._psub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._ensure_consumer()
        self._psub = await self.bus.js.pull_subscribe_bind(
            consumer=self.name, stream=self.bus.stream
        )
        self._task = asyncio.create_task(self._loop(), name=f"bus:{self.name}")

    async def _ensure_consumer(self) -> None:
        config = ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            filter_subject=self.pattern,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.bus.ack_wait,
            max_deliver=-1,  # dead-lettered by the adapter, see the module doc
            max_ack_pending=self.max_ack_pending,
            # A consumer nobody has bound for this long goes (a replica gone for good);
            # one that comes back is made again, starting at the present.
            inactive_threshold=self.bus.inactive_threshold,
        )
        await self.bus.js.add_consumer(self.bus.stream, config=config)

    async def _loop(self) -> None:
        assert self._psub is not None
        # Never more than the server hands out unacked: a larger fetch would wait for
        # messages that cannot come until this batch is acked.
        batch = self.max_ack_pending
        while True:
            try:
                msgs = await self._psub.fetch(batch, timeout=self.bus.fetch_timeout)
            except asyncio.CancelledError:
                raise
            except TimeoutError:  # nats.errors.TimeoutError is one
                continue  # idle, or reconnecting: ask again
            except nats.js.errors.NotFoundError:
                await self._recover("consumer not found")
                continue
            except nats.errors.ConnectionClosedError:
                return
            except Exception as exc:
                await self._recover(repr(exc))
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _recover(self, why: str) -> None:
        """A fetch failed for another reason than idleness: re-create the consumer (it may
        have been deleted with its stream) and carry on after a pause."""
        log.warning("bus %s: fetch failed (%s); retrying", self.name, why)
        await asyncio.sleep(self.bus.reconnect_wait)
        try:
            await self.bus._ensure_stream()
            await self._ensure_consumer()
        except Exception:
            log.debug("bus %s: consumer not re-created yet", self.name, exc_info=True)

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        self.pending = meta.num_pending
        delivered = meta.num_delivered
        try:
            event = Event.from_dict(json.loads(msg.data))
        except Exception as exc:
            log.error("bus %s: undecodable message on %s", self.name, msg.subject)
            await self._dead_letter(msg, None, f"undecodable: {exc!r}", delivered)
            return
        if delivered > self.max_deliver:
            # Delivered again after a process died handling it: its tries are used up.
            await self._dead_letter(msg, event, "no ack within max_deliver", delivered)
            return
        try:
            await self._run_handler(msg, event)
        except asyncio.CancelledError:
            # Closing: hand the event back at once rather than after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:
            log.warning(
                "handler %s failed on %s (delivery %d/%d)",
                self.name,
                event.subject,
                delivered,
                self.max_deliver,
                exc_info=True,
            )
            if delivered >= self.max_deliver:
                await self._dead_letter(msg, event, repr(exc), delivered)
            else:
                await msg.nak(delay=self.retry_delay)
            return
        await msg.ack()

    async def _run_handler(self, msg: Msg, event: Event) -> None:
        """Run the handler, telling the server it is still at work past half of ack_wait."""
        task = asyncio.ensure_future(self.handler(event))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.bus.ack_wait / 2)
                if done:
                    return task.result()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _dead_letter(
        self, msg: Msg, event: Event | None, reason: str, delivered: int
    ) -> None:
        seq = msg.metadata.sequence.stream
        if msg.subject.startswith(DLQ_PREFIX):
            log.error(
                "bus %s: dead letter %s (stream seq %d) failed for good (%s); dropped",
                self.name,
                msg.subject,
                seq,
                reason,
            )
            await msg.term()
            return
        subject = DLQ_PREFIX + msg.subject
        headers = {
            # One dead letter per consumer and message, even if this is retried.
            **self.bus.headers(subject, f"dlq:{self.name}:{seq}"),
            DLQ_REASON: _header_value(reason) or "failed",
            DLQ_CONSUMER: self.name,
            DLQ_DELIVERIES: str(delivered),
            DLQ_STREAM_SEQ: str(seq),
        }
        body = msg.data if event is None else encode(_with_subject(event, subject))
        try:
            await self.bus._publish_one(subject, body, headers)
        except Exception:
            log.warning("bus %s: dead letter not published; will retry", self.name, exc_info=True)
            await msg.nak(delay=max(self.retry_delay, self.bus.reconnect_wait))
            return
        log.error(
            "bus %s: %s dead-lettered to %s after %d deliveries: %s",
            self.name,
            msg.subject,
            subject,
            delivered,
            reason,
        )
        await msg.term()

    async def unsubscribe(self) -> None:
        with contextlib.suppress(ValueError):
            self.bus._subs.remove(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
            self._psub = None


def _with_subject(event: Event, subject: str) -> Event:
    return replace(event, subject=subject)


class JetStreamBus:
    """EventBus on a NATS JetStream stream; see the module doc for the design."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        stream: str = "FAENA",
        subjects: Sequence[str] = ("ci.>",),
        duplicate_window: float = 120.0,
        retention: dict[str, float] | None = None,
        default_retention: float = DEFAULT_RETENTION,
        max_bytes: int = -1,
        replicas: int = 1,
        # An ack lost in a server crash holds a strictly ordered consumer until ack_wait
        # ends: short, with "still working" signals from long handlers (bench/nats_recovery.py).
        ack_wait: float = 5.0,
        max_ack_pending: int = 1,
        inactive_threshold: float = 7 * DAY,
        fetch_timeout: float = 5.0,
        publish_timeout: float = 10.0,
        request_timeout: float = 2.0,
        reconnect_wait: float = 0.5,
        name: str = "faena",
    ) -> None:
        self.servers = [url] if isinstance(url, str) else list(url)
        self.stream = stream
        self.subjects = list(subjects)
        self.duplicate_window = duplicate_window
        self.retention = dict(RETENTION if retention is None else retention)
        self.default_retention = default_retention
        self.max_age = max([default_retention, *self.retention.values()])
        self.max_bytes = max_bytes
        self.replicas = replicas
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.inactive_threshold = inactive_threshold
        self.fetch_timeout = fetch_timeout
        self.publish_timeout = publish_timeout
        self.request_timeout = request_timeout
        self.reconnect_wait = reconnect_wait
        self.name = name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: list[_JetStreamSubscription] = []

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusUnavailable("the NATS bus is not started")
        return self._js

    async def start(self) -> None:
        async def on_error(exc: Exception) -> None:
            # Refused connections repeat every reconnect_wait while the server is down.
            level = logging.DEBUG if isinstance(exc, OSError) else logging.WARNING
            log.log(level, "nats: %r", exc)

        async def on_disconnect() -> None:
            if self._nc is not None and not self._nc.is_closed:
                log.warning("nats: disconnected from %s; reconnecting", self.servers)

        async def on_reconnect() -> None:
            log.info("nats: reconnected")

        connecting = nats.connect(
            servers=self.servers,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,
            connect_timeout=max(1, int(self.request_timeout)),
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        # Reconnects are retried forever once connected; the first connect is bounded, so
        # a wrong URL or a server that is down is an error, not a hang.
        try:
            self._nc = await asyncio.wait_for(connecting, self.publish_timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusUnavailable(
                f"cannot reach NATS at {', '.join(self.servers)}: {exc!r}"
            ) from exc
        self._js = self._nc.jetstream(timeout=self.request_timeout)
        await self._ensure_stream()

    def _stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=self.subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            allow_msg_ttl=True,
        )

    def kept_for(self, subject: str) -> float:
        """Seconds the stream keeps an event of ``subject`` (dead letters: the default)."""
        for prefix, seconds in self.retention.items():
            if subject.startswith(prefix):
                return seconds
        return self.default_retention

    def headers(self, subject: str, msg_id: str) -> dict[str, str]:
        """The publish headers: de-duplication id, and a TTL shorter than the stream's."""
        headers = {MSG_ID: msg_id}
        kept = self.kept_for(subject)
        if kept < self.max_age:
            headers[MSG_TTL] = f"{max(1, int(kept))}s"
        return headers

    async def _ensure_stream(self) -> None:
        config = self._stream_config()
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # It exists with another configuration (an older faena): bring it up to date.
            await self.js.update_stream(config)

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.unsubscribe()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), self.request_timeout)

    async def ping(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise BusUnavailable("not connected to NATS")
        try:
            await self.js.stream_info(self.stream)
        except Exception as exc:
            raise BusUnavailable(f"JetStream stream {self.stream} unreachable: {exc!r}") from exc

    async def publish(self, events: Sequence[Event]) -> None:
        """Store the events in the stream, in order; returns once the server acked them all.

        Retries within ``publish_timeout`` (the server drops what a previous try stored,
        by ``Nats-Msg-Id``); then raises, and the caller's outbox keeps the events."""
        todo = list(events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        delay = 0.05
        while todo:
            if self._nc is None or self._nc.is_closed:
                raise BusUnavailable("the NATS bus is closed")
            try:
                todo = await self._publish_batch(todo)
            except _TRANSIENT as exc:
                if loop.time() + delay >= deadline:
                    raise BusUnavailable(f"NATS did not take the events: {exc!r}") from exc
                log.info("nats: publish failed (%r); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _publish_batch(self, events: list[Event]) -> list[Event]:
        """Pipeline the publishes; return the events from the first one not acked, or raise."""
        if len(events) == 1:
            e = events[0]
            await self._publish_one(
                e.subject, encode(e), self.headers(e.subject, e.idempotency_key)
            )
            return []
        futures = []
        for event in events:
            futures.append(
                await self.js.publish_async(
                    event.subject,
                    encode(event),
                    headers=self.headers(event.subject, event.idempotency_key),
                )
            )
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.request_timeout
            )
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if isinstance(result, _TRANSIENT) and i > 0:
                    return events[i:]
                raise result
        return []

    async def _publish_one(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        await self.js.publish(subject, body, headers=headers)

    async def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        durable: str,
        max_deliver: int = 5,
        retry_delay: float = 0.05,
        ordered: bool = True,
    ) -> _JetStreamSubscription:
        pending = self.max_ack_pending if ordered else max(self.max_ack_pending,
                                                           UNORDERED_ACK_PENDING)  # fmt: skip
        sub = _JetStreamSubscription(
            self, pattern, handler, consumer_name(durable), max_deliver, retry_delay, pending
        )
        await sub.start()
        self._subs.append(sub)
        return sub

    def depths(self) -> dict[str, int]:
        """Events waiting per subscription pattern, as of each one's last delivery."""
        out: dict[str, int] = {}
        for sub in self._subs:
            out[sub.pattern] = out.get(sub.pattern, 0) + sub.pending
        return out
