"""HTTP API under load: POST /api/v1/jobs against GET /healthz on the same server and run.

    .venv/bin/python bench/api_load.py [--clients 100] [--requests 2000] [--duration 60]
                                       [--first-step 30] [--remote] [--accept-only]

Starts a real ``faena server`` (the console script next to this Python, on a free loopback
port, FAENA_HOME in a temp dir, ``--admin-token``, ``--with-agent``), waits for /readyz,
then:

1. throughput and latency: ``--clients`` concurrent httpx clients send ``--requests``
   requests in all (stopping early at ``--duration`` seconds), first ``GET /healthz`` (the
   baseline: routing, JSON and the event loop, no store), then ``POST /api/v1/jobs`` with a
   one-job body ``{"steps": [{"run": "true"}]}`` (every accepted request is a run that the
   server then executes). Prints p50/p95/p99/max as the client saw them, errors, requests
   per second, the POST/healthz ratios, and the server's own p50/p95 of the same requests
   (its ``api_request_latency_ms`` histogram, scraped from GET /metrics before and after).
2. submit to first step start: once the server is idle again, ``--first-step`` times one
   at a time: submit a one-job run, follow ``GET /api/v1/events?run=RUN`` (SSE) until
   ``ci.step.v1.started`` arrives. Prints p50/p95 of the time until the client reads the
   event, and of the time until the event's own ``occurred_at`` (server-side, same clock).

``--remote`` adds a variant: the server without its in-process agent plus a
``faena agent --server URL --token T`` subprocess. ``--accept-only`` adds a diagnostic
variant: a server with no agent at all, so submitted runs stay queued and POST is measured
without jobs executing beside it.
``--clients 1,10,100`` measures each concurrency level; ``--profile FILE`` runs the server
under cProfile. Prints one JSON object per measurement on stdout, then a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

TOKEN = "bench-admin-token"
JOB_BODY = {"steps": [{"run": "true"}]}
STEP_STARTED = "ci.step.v1.started"
Buckets = dict[float, float]
FAENA = Path(sys.executable).parent / "faena"


# ---------------------------------------------------------------- the processes


@dataclass(frozen=True)
class Variant:
    """How jobs reach a worker: the server's in-process agent, a remote agent process, or
    nothing (accept-only: runs stay queued, so POST is measured without execution)."""

    name: str
    remote: bool = False
    runs_jobs: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(argv: list[str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FAENA_HOME": str(home)}
    env.pop("FAENA_ADMIN_TOKEN", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=home.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes], name: str, log: Path, sig: int = signal.SIGTERM) -> None:
    """SIGTERM (or ``sig``) and wait; SIGKILL only if it does not leave within 20 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sig_name = signal.Signals(sig).name
            print(f"{name} ignored {sig_name} for 20 s; killing it (log: {log})", file=sys.stderr)
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, -signal.SIGTERM, 130):
        tail = log.read_text(errors="replace")[-2000:]
        print(f"{name} exited with {proc.returncode}; its log ends with:\n{tail}", file=sys.stderr)


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in 60 s:\n{log.read_text()}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def system(variant: Variant, jobs: int | None, profile: Path | None) -> AsyncIterator[str]:
    """A `faena server` (and, for the remote variant, a `faena agent`); yields its URL.
    With ``profile``, the server runs under cProfile and writes its stats there on exit."""
    with tempfile.TemporaryDirectory(prefix="faena-api-load-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [str(FAENA), "server", "--port", str(port), "--admin-token", TOKEN]
        if profile is not None:
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile.absolute()), *argv]
        if jobs is not None:
            argv += ["-j", str(jobs)]
        if variant.runs_jobs and not variant.remote:
            argv.append("--with-agent")
        server_log = Path(tmp) / "server.log"
        server = _start(argv, Path(tmp) / "home", server_log)
        agent: subprocess.Popen[bytes] | None = None
        agent_log = Path(tmp) / "agent.log"
        try:
            await _wait_ready(url, server, server_log)
            if variant.remote:
                agent_argv = [str(FAENA), "agent", "--server", url, "--token", TOKEN]
                if jobs is not None:
                    agent_argv += ["--jobs", str(jobs)]
                agent = _start(agent_argv, Path(tmp) / "agent-home", agent_log)
                await _wait_agent(url, agent, agent_log)
            yield url
        finally:
            if agent is not None:
                _stop(agent, "faena agent", agent_log)
            # uvicorn shuts down on SIGTERM, then re-raises it, so the process dies by the
            # signal and cProfile would write nothing; SIGINT ends it with an exit instead.
            stop = signal.SIGINT if profile is not None else signal.SIGTERM
            _stop(server, "faena server", server_log, stop)


async def _wait_agent(url: str, agent: subprocess.Popen[bytes], log: Path) -> None:
    """Until GET /api/v1/nodes lists a node other than the server's own `local` (30 s)."""
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=5) as client:
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                raise RuntimeError(f"faena agent exited ({agent.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                items = (await client.get("/api/v1/nodes")).json()["items"]
                if any(n.get("node_id") != "local" for n in items):
                    return
            await asyncio.sleep(0.1)
    print(
        "warning: after 30 s /api/v1/nodes lists no node but `local`; measuring anyway",
        file=sys.stderr,
    )


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------- the measurements


@dataclass
class Load:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: dict[str, int] = field(default_factory=dict)  # status code or exception name
    wall: float = 0.0
    loadavg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    server: dict[str, Any] = field(default_factory=dict)  # from api_request_latency_ms

    @property
    def sent(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def record(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "requests": self.sent,
            "ok": len(ms),
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "wall_s": round(self.wall, 3),
            "rps": round(self.sent / self.wall, 1) if self.wall else 0.0,
            "p50_ms": _round(percentile(ms, 50)),
            "p95_ms": _round(percentile(ms, 95)),
            "p99_ms": _round(percentile(ms, 99)),
            "max_ms": _round(ms[-1] if ms else math.nan),
            **self.server,
            "loadavg": [round(x, 2) for x in self.loadavg],
        }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 2)


async def load(
    client: httpx.AsyncClient,
    name: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    clients: int,
    requests: int,
    duration: float,
    ok: int,
) -> Load:
    """``clients`` workers share ``requests`` requests, until done or ``duration`` passes."""
    result = Load(name)
    issued = 0
    start = time.perf_counter()
    deadline = start + duration

    async def worker() -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            else:
                if r.status_code == ok:
                    result.latencies.append(time.perf_counter() - t0)
                    continue
                kind = str(r.status_code)
            result.errors[kind] = result.errors.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(clients)))
    result.wall = time.perf_counter() - start
    return result


async def wait_idle(client: httpx.AsyncClient, timeout: float) -> float:
    """Until no run is PENDING or RUNNING; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        busy = False
        for state in ("PENDING", "RUNNING"):
            r = await client.get("/api/v1/pipelines", params={"state": state, "limit": 1})
            busy = busy or bool(r.json()["items"])
        if not busy:
            break
        await asyncio.sleep(0.2)
    return time.perf_counter() - start


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str, str]]:
    """(id, event, data) of each event in a text/event-stream, from its lines."""
    ident = event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data or event:
                yield ident, event, "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                ident = value
            elif key == "event":
                event = value
            elif key == "data":
                data.append(value)


async def first_step(
    client: httpx.AsyncClient, after: int, timeout: float
) -> tuple[float, float, int]:
    """Submit one job; seconds until the client reads its step's start on the SSE stream
    and until the event's own occurred_at; and the event's id (the next ``after``)."""
    wall0 = time.time()
    t0 = time.perf_counter()
    r = await client.post("/api/v1/jobs", json=JOB_BODY)
    r.raise_for_status()
    run_id = r.json()["run_id"]
    params = {"run": run_id, "subject": STEP_STARTED, "after": after}
    async with asyncio.timeout(timeout):
        async with client.stream("GET", "/api/v1/events", params=params) as stream:
            stream.raise_for_status()
            lines: list[str] = []
            async for line in stream.aiter_lines():
                lines.append(line)
                if line:
                    continue
                for ident, event, data in sse_events(iter(lines)):
                    if event == STEP_STARTED:
                        seen = time.perf_counter() - t0
                        occurred = datetime.fromisoformat(json.loads(data)["occurred_at"])
                        return seen, occurred.timestamp() - wall0, int(ident)
                lines = []
    raise RuntimeError(f"the stream of {run_id} ended without {STEP_STARTED}")


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


LABEL = re.compile(r'(\w+)="([^"]*)"')


async def server_buckets(control: httpx.AsyncClient, method: str, route: str) -> Buckets | None:
    """Cumulative counts of the server's ``api_request_latency_ms`` histogram for one route
    (all statuses), by upper bound in ms; None when GET /metrics does not answer."""
    try:
        r = await control.get("/metrics")
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    buckets: Buckets = {}
    for line in r.text.splitlines():
        if not line.startswith("api_request_latency_ms_bucket{"):
            continue
        labels_text, _, value = line.rpartition("} ")
        labels = dict(LABEL.findall(labels_text))
        if labels.get("method") == method and labels.get("route") == route:
            le = float(labels["le"])  # "+Inf" parses as inf
            buckets[le] = buckets.get(le, 0.0) + float(value.split()[0])
    return buckets


def bucket_quantile(buckets: Buckets, q: float) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket holding the rank."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # above the last finite bound: report that bound
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def server_view(before: Buckets | None, after: Buckets | None) -> dict[str, Any]:
    """Server-side p50/p95 of one phase (its requests only) and its share under 25 ms."""
    if before is None or after is None:
        return {}
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta.get(math.inf, 0.0)
    if not total:
        return {}
    p50, p95 = bucket_quantile(delta, 0.5), bucket_quantile(delta, 0.95)
    return {
        "server_p50_ms": None if p50 is None else round(p50, 1),
        "server_p95_ms": None if p95 is None else round(p95, 1),
        "server_under_25ms_pct": round(100 * delta.get(25.0, 0.0) / total, 1),
    }


async def phase(
    url: str,
    control: httpx.AsyncClient,
    name: str,
    body: dict[str, Any] | None,
    clients: int,
    args: argparse.Namespace,
) -> Load:
    """One load measurement on a fresh connection pool (no connection left idle across the
    server's keep-alive timeout), opened and warmed by ``clients`` GET /healthz first; and
    the server's own view of it from GET /metrics, scraped before and after."""
    method, path = name.split(" ", 1)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers=auth(), limits=limits, timeout=args.timeout
    ) as client:
        common = {"clients": clients, "duration": args.duration}
        await load(client, "warm-up", "GET", "/healthz", None, requests=clients, ok=200, **common)
        ok = 201 if method == "POST" else 200
        load1 = os.getloadavg()[0]
        before = await server_buckets(control, method, path)
        result = await load(
            client, name, method, path, body, requests=args.requests, ok=ok, **common
        )
        result.server = server_view(before, await server_buckets(control, method, path))
        result.loadavg = (load1, os.getloadavg()[0])
        return result


async def measure(variant: Variant, args: argparse.Namespace) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    profile = args.profile.with_suffix(f".{variant.name}.prof") if args.profile else None
    async with (
        system(variant, args.server_jobs, profile) as url,
        httpx.AsyncClient(base_url=url, headers=auth(), timeout=args.timeout) as control,
    ):
        # Warm-up: code paths imported, SQLite pages cached, a few runs through the system.
        await phase(url, control, "POST /api/v1/jobs", JOB_BODY, min(20, max(args.clients)), args)
        if variant.runs_jobs:
            await wait_idle(control, args.drain_timeout)

        for clients in args.clients:
            base = await phase(url, control, "GET /healthz", None, clients, args)
            jobs = await phase(url, control, "POST /api/v1/jobs", JOB_BODY, clients, args)
            drained = await wait_idle(control, args.drain_timeout) if variant.runs_jobs else 0.0
            b = base.record()
            for result in (base, jobs):
                rec = {
                    "bench": "api_load",
                    "variant": variant.name,
                    "request": result.name,
                    "clients": clients,
                    **result.record(),
                }
                if result is jobs:
                    for key in ("p50_ms", "p95_ms", "p99_ms"):
                        if rec[key] and b[key]:
                            rec[f"{key[:3]}_ratio_to_healthz"] = round(rec[key] / b[key], 1)
                    rec["rps_ratio_to_healthz"] = round(rec["rps"] / b["rps"], 3)
                    if variant.runs_jobs:
                        rec["drain_s"] = round(drained, 2)
                emit(rec)
                records.append(rec)

        if args.first_step and variant.runs_jobs:
            seen: list[float] = []
            occurred: list[float] = []
            _, _, after = await first_step(control, 0, args.timeout)  # warm-up; skips the log
            for _ in range(args.first_step):
                s, o, after = await first_step(control, after, args.timeout)
                seen.append(s * 1000)
                occurred.append(o * 1000)
                await wait_idle(control, args.drain_timeout)
            seen.sort()
            occurred.sort()
            rec = {
                "bench": "first_step",
                "variant": variant.name,
                "runs": len(seen),
                "p50_ms": _round(percentile(seen, 50)),
                "p95_ms": _round(percentile(seen, 95)),
                "max_ms": _round(seen[-1]),
                "occurred_p50_ms": _round(percentile(occurred, 50)),
                "occurred_p95_ms": _round(percentile(occurred, 95)),
                "mean_ms": round(statistics.fmean(seen), 2),
                "loadavg": round(os.getloadavg()[0], 2),
            }
            emit(rec)
            records.append(rec)
    return records


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def table(records: list[dict[str, Any]]) -> None:
    out = sys.stderr
    print(file=out)
    head = ["clients", "n", "err", "rps", "p50", "p95", "p99", "max", "srv p50", "srv p95"]
    head += ["<25ms%", "p95 x"]
    print(f"{'variant':<10}{'request':<22}" + "".join(f"{h:>8}" for h in head), file=out)
    for r in records:
        if r["bench"] == "api_load":
            cells = [r["clients"], r["requests"], r["errors"], f"{r['rps']:.0f}"]
            cells += [_ms(r[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
            cells += [_ms(r.get("server_p50_ms")), _ms(r.get("server_p95_ms"))]
            cells += [r.get("server_under_25ms_pct", "-"), r.get("p95_ratio_to_healthz", 1.0)]
            line = "".join(f"{c!s:>8}" for c in cells)
            print(f"{r['variant']:<10}{r['request']:<22}{line}", file=out)
    for r in records:
        if r["bench"] == "first_step":
            cells = [1, r["runs"], "", "", _ms(r["p50_ms"]), _ms(r["p95_ms"]), "", _ms(r["max_ms"])]
            cells += [_ms(r["occurred_p50_ms"]), _ms(r["occurred_p95_ms"])]
            line = "".join(f"{c!s:>8}" for c in cells)
            print(f"{r['variant']:<10}{'submit -> step start':<22}{line}", file=out)
    print(
        "ms. p50..max: as the client saw it. srv: the server's api_request_latency_ms (to the\n"
        "response headers; for submit -> step start: the event's occurred_at). <25ms%: share\n"
        "of the server's answers under 25 ms. p95 x: p95 / p95 of GET /healthz, same clients.",
        file=out,
    )


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,10,100, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"each count must be at least 1, got {text!r}")
    return counts


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clients",
        type=_counts,
        default=[100],
        help="concurrent clients; a comma-separated list measures each level (100)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per measured endpoint, in all (2000)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="cap, in seconds, on each load measurement (60)",
    )
    parser.add_argument(
        "--first-step",
        type=int,
        default=30,
        metavar="K",
        help="submit-to-first-step-start samples, 0 to skip (30)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="also measure a server without its agent plus a `faena agent`",
    )
    parser.add_argument(
        "--server-jobs",
        type=int,
        default=None,
        metavar="N",
        help="-j for the server (and agent): jobs at once (default: CPU count)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds (30)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="how long to wait for submitted runs to finish (300)",
    )
    parser.add_argument(
        "--accept-only",
        action="store_true",
        help="also measure a server that runs no jobs (no agent): the submit path alone",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the server under cProfile; stats in FILE.<variant>.prof "
        "(read with: python -m pstats FILE.embedded.prof)",
    )
    args = parser.parse_args()
    if not FAENA.exists():
        print(f"{FAENA} not found: run ./scripts/bootstrap", file=sys.stderr)
        return 2

    variants = [Variant("embedded")]
    if args.remote:
        variants.append(Variant("remote", remote=True))
    if args.accept_only:
        variants.append(Variant("accept", runs_jobs=False))
    print(f"{os.cpu_count()} CPUs", file=sys.stderr)

    records: list[dict[str, Any]] = []
    for variant in variants:
        records += await measure(variant, args)
    table(records)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
