"""A service container's log, read when its worker ends, handed to the job's log."""

from __future__ import annotations

import logging
import time
from datetime import datetime

from faena.workers.port import OutputLine, ServiceOutput

log = logging.getLogger(__name__)

TAIL_LINES = 2000  # a chatty database's whole log would drown the job's own


def parse_timestamped(text: str) -> list[OutputLine]:
    """Lines as ``docker logs -t`` and the Kubernetes log API (``timestamps``) write them:
    an RFC 3339 time, a space, the text. A line without one gets the time of reading."""
    now = time.time()
    lines: list[OutputLine] = []
    for raw in text.splitlines():
        stamp, _, rest = raw.partition(" ")
        ts = _epoch(stamp)
        if ts is None:
            lines.append(OutputLine("stdout", raw, now))
        else:
            lines.append(OutputLine("stdout", rest, ts))
    return lines


async def hand_over(sink: ServiceOutput | None, name: str, text: str) -> None:
    """Give a service's log to the job's; a failure to do so never fails the worker's end."""
    if sink is None:
        return
    lines = parse_timestamped(text)
    if not lines:
        return
    try:
        await sink(name, lines)
    except Exception:
        log.warning("could not keep the log of service %s", name, exc_info=True)


def _epoch(stamp: str) -> float | None:
    if len(stamp) < 20 or stamp[4:5] != "-" or "T" not in stamp:
        return None
    # Nanoseconds: fromisoformat takes at most microseconds.
    head, dot, frac = stamp.rstrip("Z").partition(".")
    try:
        when = datetime.fromisoformat(head + (f".{frac[:6]}" if dot else "") + "+00:00")
    except ValueError:
        return None
    return when.timestamp()
