"""No-op jobs completed per minute end to end, embedded vs distributed, in the same run; and
how long an event takes from its commit to its consumers (seed SLOs: job state published
p95 < 1 s, JobStarted p95 < 1 s).

    .venv/bin/python bench/throughput.py [--runs 10] [--jobs 20] [--slots 4]

Both shapes are real processes on loopback, driven over the HTTP API:

- embedded (the baseline): one ``faena server --with-agent -j SLOTS`` on SQLite with the
  in-process bus;
- distributed: PostgreSQL and NATS JetStream (tests/postgres.py, tests/nats_server.py; the
  database with its durable settings, fsync on), two ``faena server`` replicas, and two
  ``faena agent`` processes with SLOTS/2 slots each. Runs are submitted to both replicas
  in turn, as a load balancer would (the follower forwards to the leader).

Each shape gets ``--runs`` pipelines of ``--jobs`` independent ``true`` jobs, all
submitted at once; throughput is jobs / (last run completed - first submit). Latency:
every ``ci.job.*`` event as a consumer receives it, minus the event's ``occurred_at``
(stamped before the commit, so this slightly over-counts): through the SSE stream of
``GET /api/v1/events`` (both shapes; on the distributed one, from the follower), and as a
plain NATS subscriber on ``ci.job.>`` (distributed). Prints one JSON line per shape and a
table; the ratio distributed/embedded is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from remote_harness import (  # noqa: E402
    ADMIN,
    Proc,
    Server,
    make_agent,
    make_replica,
    make_server,
    role,
    wait_until,
)

from faena.domain.events import parse_iso  # noqa: E402
from nats_server import NatsServer, nats_server_binary  # noqa: E402
from postgres import PostgresServer, find_bindir  # noqa: E402


def pipeline(n: int, jobs: int) -> str:
    body = "".join(f"  j{i}:\n    steps:\n      - run: 'true'\n" for i in range(jobs))
    return f"name: throughput-{n}\njobs:\n{body}"


@dataclass
class Listener:
    """Follows an SSE event stream in a thread, noting each job event's delay."""

    url: str
    runs: int
    delays: dict[str, list[float]] = field(default_factory=dict)
    completed: set[str] = field(default_factory=set)
    last_completed: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._follow, daemon=True).start()
        if not self.ready.wait(30):
            raise RuntimeError("the event stream did not open")

    def _follow(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        params = {"after": "0"}
        with httpx.stream("GET", f"{self.url}/api/v1/events", params=params,
                          headers=headers, timeout=None) as stream:  # fmt: skip
            self.ready.set()
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.time()
                event = json.loads(line[6:])
                subject = event["subject"]
                if subject.startswith("ci.job.v1."):
                    delay = now - parse_iso(event["occurred_at"])
                    self.delays.setdefault(subject, []).append(delay)
                elif subject in ("ci.run.v1.completed", "ci.run.v1.failed"):
                    self.completed.add(event["correlation_id"])
                    self.last_completed = now
                    if len(self.completed) >= self.runs:
                        self.done.set()
                        return


class NatsListener:
    """A plain NATS subscriber on ci.job.> (what any consumer of the bus sees)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.delays: dict[str, list[float]] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        threading.Thread(target=self._loop.run_until_complete, args=(self._main(),),
                         daemon=True).start()  # fmt: skip
        if not self._ready.wait(30):
            raise RuntimeError("NATS subscriber did not start")

    async def _main(self) -> None:
        import nats

        nc = await nats.connect(self.url)
        self._stop = asyncio.Event()

        async def on(msg: object) -> None:
            now = time.time()
            event = json.loads(msg.data)  # type: ignore[attr-defined]
            delay = now - parse_iso(event["occurred_at"])
            self.delays.setdefault(event["subject"], []).append(delay)

        await nc.subscribe("ci.job.>", cb=on)
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(delays: dict[str, list[float]]) -> dict[str, float]:
    every = [d for ds in delays.values() for d in ds]
    started = delays.get("ci.job.v1.started", [])
    return {
        "job_events": len(every),
        "job_state_p50_ms": round(quantile(every, 0.5) * 1000, 1),
        "job_state_p95_ms": round(quantile(every, 0.95) * 1000, 1),
        "job_started_p95_ms": round(quantile(started, 0.95) * 1000, 1),
    }


def drive(entry: list[Server], listen: str, runs: int, jobs: int, timeout: float) -> dict:
    listener = Listener(listen, runs)
    listener.start()
    time.sleep(0.3)
    began = time.time()
    for n in range(runs):
        entry[n % len(entry)].submit(pipeline(n, jobs))
    if not listener.done.wait(timeout):
        raise RuntimeError(f"only {len(listener.completed)} of {runs} runs completed")
    elapsed = listener.last_completed - began
    return {
        "jobs": runs * jobs,
        "seconds": round(elapsed, 2),
        "jobs_per_minute": round(runs * jobs / elapsed * 60, 1),
        "sse": summary(listener.delays),
    }


def embedded(tmp: Path, args: argparse.Namespace) -> dict:
    server = make_server(tmp, with_agent=True)
    server.env["FAENA_JOBS"] = str(args.slots)
    try:
        server.start()
        return {"shape": "embedded", **drive([server], server.url, args.runs, args.jobs,
                                             args.timeout)}  # fmt: skip
    finally:
        server.stop()


def distributed(tmp: Path, args: argparse.Namespace) -> dict:
    bindir, binary = find_bindir(), nats_server_binary()
    if bindir is None or binary is None:
        raise SystemExit("distributed shape needs PostgreSQL binaries and nats-server")
    pg = PostgresServer(bindir, fast=False)
    nats = NatsServer(binary, tmp / "nats")
    procs: list[Proc] = []
    listener: NatsListener | None = None
    try:
        pg.start()
        nats.start()
        url = pg.url(pg.create_database("bench"))
        first = make_replica(tmp, "r1", url, nats.url)
        procs.append(first)
        first.start()
        wait_until(lambda: role(first) == "leader", what="a leader")
        second = make_replica(tmp, "r2", url, nats.url)
        procs.append(second)
        second.start()
        per_agent = max(1, args.slots // 2)
        for name in ("a1", "a2"):
            agent = make_agent(tmp, second, name, slots=per_agent, also=(first,))
            procs.append(agent)
            agent.start()
        wait_until(lambda: len(first.nodes()) == 2, what="agents")
        listener = NatsListener(nats.url)
        listener.start()
        result = drive([first, second], second.url, args.runs, args.jobs, args.timeout)
        return {"shape": "distributed", **result, "nats": summary(listener.delays)}
    finally:
        if listener is not None:
            listener.stop()
        for p in reversed(procs):
            p.stop()
        nats.stop()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20, help="jobs per run")
    parser.add_argument("--slots", type=int, default=4, help="jobs at once in each shape")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="faena-throughput-") as tmp:
        for shape in (embedded, distributed):
            where = Path(tmp) / shape.__name__
            where.mkdir()
            result = shape(where, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    base, dist = results
    ratio = dist["jobs_per_minute"] / base["jobs_per_minute"]
    print(f"\n{'shape':<12}{'jobs/min':>10}{'SSE p95 ms':>12}{'started p95':>13}"
          f"{'NATS p95 ms':>13}", file=sys.stderr)  # fmt: skip
    for r in results:
        nats = r.get("nats", {}).get("job_state_p95_ms", "-")
        print(f"{r['shape']:<12}{r['jobs_per_minute']:>10}{r['sse']['job_state_p95_ms']:>12}"
              f"{r['sse']['job_started_p95_ms']:>13}{nats:>13}", file=sys.stderr)  # fmt: skip
    print(f"distributed / embedded throughput: {ratio:.2f}", file=sys.stderr)
    worst = max(dist["sse"]["job_state_p95_ms"], dist["nats"]["job_state_p95_ms"])
    verdict = "met" if worst < 1000 else "NOT met"
    print(f"seed SLO job state published p95 < 1 s (distributed): {verdict} ({worst} ms)",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
