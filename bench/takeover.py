"""Time from ``kill -9`` of the leading replica to a replica leading again, and to a job
submitted then running (aim: takeover under 5 s), with real processes on PostgreSQL and NATS.

    .venv/bin/python bench/takeover.py [--repeat 5]

Two shapes, in the same run:

- baseline: ONE replica; after ``kill -9`` it is started again at once (what a supervisor
  does): the time is that of a restart, the only recovery without a second replica;
- replicas: two replicas; the follower takes over.

Each time: a one-job run is in flight on an agent (given both URLs), the leader is killed,
and the clock runs until (1) a replica's ``/readyz`` says ``leader`` and (2) a new one-job
run submitted at that moment has its job running (the agent re-registered, the scheduler
placed it). The run in flight must complete. Prints one JSON line per measurement and the
medians, with the ratio replicas / baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from remote_harness import Proc, Server, make_agent, make_replica, role, wait_until  # noqa: E402

from nats_server import NatsServer, nats_server_binary  # noqa: E402
from postgres import PostgresServer, find_bindir  # noqa: E402

GATED = """
name: in-flight
jobs:
  long:
    steps:
      - run: while [ ! -e "{gate}" ]; do sleep 0.05; done
"""
QUICK = """
name: after
jobs:
  quick:
    steps:
      - run: sleep 30
"""


def running(server: Server, run_id: str) -> bool:
    try:
        return any(j["state"] == "RUNNING" for j in server.run(run_id)["jobs"])
    except AssertionError:
        return False


def once(tmp: Path, pg: PostgresServer, nats: NatsServer, replicas: int) -> dict[str, float]:
    url = pg.url(pg.create_database("takeover"))
    procs: list[Proc] = []
    try:
        servers = [make_replica(tmp, f"r{i}", url, nats.url) for i in range(1, replicas + 1)]
        for s in servers:
            procs.append(s)
            s.start()
            if s is servers[0]:
                wait_until(lambda: role(servers[0]) == "leader", what="a leader")
        leader, survivor = servers[0], servers[-1]
        agent = make_agent(tmp, survivor, "worker", slots=2, also=tuple(servers[:-1]))
        procs.append(agent)
        agent.start()
        wait_until(lambda: len(leader.nodes()) == 1, what="the agent")
        gate = tmp / "gate"
        in_flight = leader.submit(GATED.format(gate=gate))
        wait_until(lambda: running(leader, in_flight), what="the run in flight")
        t0 = time.monotonic()
        leader.kill9()
        if replicas == 1:
            survivor.start()  # a supervisor's restart: the only way back with one replica
        wait_until(lambda: role(survivor) == "leader", timeout=60, what="a new leader")
        leading = time.monotonic() - t0
        after = survivor.submit(QUICK)
        wait_until(lambda: running(survivor, after), timeout=60, what="a new job running")
        placed = time.monotonic() - t0
        gate.touch()
        assert survivor.wait_run(in_flight, timeout=60)["state"] == "SUCCEEDED"
        survivor.api("POST", f"/api/v1/pipelines/{after}/cancel")
        return {"leading_s": round(leading, 3), "new_job_running_s": round(placed, 3)}
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bindir, binary = find_bindir(), nats_server_binary()
    if bindir is None or binary is None:
        raise SystemExit("needs PostgreSQL binaries and nats-server")
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "replicas": []}
    with tempfile.TemporaryDirectory(prefix="faena-takeover-") as tmp:
        pg = PostgresServer(bindir, fast=False)
        nats = NatsServer(binary, Path(tmp) / "nats")
        pg.start()
        nats.start()
        try:
            for i in range(args.repeat):
                for shape, count in (("baseline", 1), ("replicas", 2)):
                    where = Path(tmp) / f"{shape}-{i}"
                    where.mkdir()
                    r = once(where, pg, nats, count)
                    results[shape].append(r)
                    print(json.dumps({"shape": shape, **r}), flush=True)
        finally:
            nats.stop()
            pg.stop()
    med = {
        shape: {k: statistics.median(r[k] for r in rs) for k in ("leading_s", "new_job_running_s")}
        for shape, rs in results.items()
    }
    print(f"\n{'shape':<10}{'leading (median s)':>20}{'new job running':>18}", file=sys.stderr)
    for shape, m in med.items():
        print(f"{shape:<10}{m['leading_s']:>20.2f}{m['new_job_running_s']:>18.2f}",
              file=sys.stderr)  # fmt: skip
    ratio = med["replicas"]["new_job_running_s"] / med["baseline"]["new_job_running_s"]
    print(f"replicas / baseline (new job running): {ratio:.2f}", file=sys.stderr)
    verdict = "met" if med["replicas"]["leading_s"] < 5 else "NOT met"
    print(f"aim: takeover under 5 s: {verdict}", file=sys.stderr)


if __name__ == "__main__":
    main()
