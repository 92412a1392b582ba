"""Several `faena server` replicas on one PostgreSQL and one NATS, with real agents: every
replica serves the API, one leads, and killing the leader loses no accepted run."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from remote_harness import (
    ADMIN,
    FAENA_CMD,
    Proc,
    Server,
    clean_env,
    make_agent,
    make_replica,
    role,
    start,
    wait_until,
)

from faena.store.sql import SqlStore
from nats_server import NatsServer
from postgres import PostgresServer, end_leader_session

GATED = """
name: gated
jobs:
  wait:
    steps:
      - run: while [ ! -e "{gate}" ]; do sleep 0.05; done; echo through
"""

# Each job holds a directory named after it while it runs: a second copy of the same job
# running at the same time cannot create it, and fails its run.
PIPELINE = """
name: replicated-{n}
jobs:
  build:
    steps:
      - run: |
          mkdir "{dir}/$FAENA_JOB_ID" || {{ echo "$FAENA_JOB_ID runs twice at once"; exit 1; }}
          echo "$FAENA_JOB_ID" >> "{dir}/ran"
          sleep 1
          rmdir "{dir}/$FAENA_JOB_ID"
  test:
    needs: build
    strategy:
      matrix:
        shard: [1, 2]
    steps:
      - run: |
          mkdir "{dir}/$FAENA_JOB_ID" || {{ echo "$FAENA_JOB_ID runs twice at once"; exit 1; }}
          echo "$FAENA_JOB_ID" >> "{dir}/ran"
          sleep 1.5
          rmdir "{dir}/$FAENA_JOB_ID"
"""


def replicas(
    tmp_path: Path, procs: list[Proc], postgres_url: str, nats: NatsServer
) -> tuple[Server, Server]:
    first = start(procs, make_replica(tmp_path, "r1", postgres_url, nats.url))
    assert isinstance(first, Server)
    wait_until(lambda: role(first) == "leader", what="the first replica to lead")
    second = start(procs, make_replica(tmp_path, "r2", postgres_url, nats.url))
    assert isinstance(second, Server)
    return first, second


def test_every_replica_serves_and_one_leads(
    tmp_path: Path, procs: list[Proc], postgres_url: str, nats_server: NatsServer
) -> None:
    leader, follower = replicas(tmp_path, procs, postgres_url, nats_server)
    assert role(follower) == "follower"
    ready = httpx.get(f"{follower.url}/readyz", timeout=5).json()
    assert ready["leader"] == leader.url and ready["term"] >= 1 and ready["replica"] == "r2"
    assert "replica r2" in follower.output() and "r1 leads orchestration" in leader.output()
    start(procs, make_agent(tmp_path, follower, "solo", also=(leader,)))
    wait_until(lambda: [n["name"] for n in follower.nodes()] == ["solo"], what="agent")
    # Submitted through the follower (forwarded), read back through both.
    run_id = follower.submit(PIPELINE.format(n=1, dir=tmp_path))
    row = follower.wait_run(run_id)
    assert row["state"] == "SUCCEEDED", row
    assert leader.run(run_id)["state"] == "SUCCEEDED"
    listed = follower.api("GET", "/api/v1/pipelines")["items"]
    assert [r["run_id"] for r in listed] == [run_id]
    # The follower's own event stream has the run's events.
    with httpx.stream(
        "GET", f"{follower.url}/api/v1/events", params={"run": run_id},
        headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10,
    ) as stream:  # fmt: skip
        subjects = []
        for line in stream.iter_lines():
            if line.startswith("event: "):
                subjects.append(line[7:])
            if "ci.run.v1.completed" in subjects:
                break
    assert subjects[0] == "ci.run.v1.requested" and subjects[-1] == "ci.run.v1.completed"
    # A forwarded answer carries the follower's own Date and Server headers, once.
    forwarded = httpx.get(f"{follower.url}/api/v1/nodes", timeout=10,
                          headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert forwarded.status_code == 200
    assert len(forwarded.headers.get_list("date")) == 1
    assert len(forwarded.headers.get_list("server")) == 1
    # Authentication still applies to forwarded requests.
    r = httpx.post(f"{follower.url}/api/v1/pipelines/{run_id}/cancel", timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "SEC-TOK"


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_the_leader_stopped_mid_run_is_replaced_and_every_run_completes(
    tmp_path: Path, procs: list[Proc], postgres_url: str, nats_server: NatsServer, how: str
) -> None:
    leader, follower = replicas(tmp_path, procs, postgres_url, nats_server)
    for name in ("north", "south"):
        start(procs, make_agent(tmp_path, follower, name, also=(leader,)))
    wait_until(lambda: len(leader.nodes()) == 2, what="both agents registered")
    runs = [leader.submit(PIPELINE.format(n=n, dir=tmp_path)) for n in range(4)]
    wait_until(
        lambda: any(j["state"] == "RUNNING" for j in leader.run(runs[-1])["jobs"]),
        what="the last run to start",
    )
    assert leader.proc is not None
    killed = time.monotonic()
    leader.halt(how)  # SIGTERM: a rolling upgrade; the leader hands over at once
    wait_until(lambda: role(follower) == "leader", timeout=30, what="the follower to lead")
    takeover = time.monotonic() - killed
    print(f"takeover: {takeover:.2f}s")
    for run_id in runs:
        row = follower.wait_run(run_id, timeout=120)
        assert row["state"] == "SUCCEEDED", (row, follower.output())
    ran = (tmp_path / "ran").read_text().split()
    assert len(ran) == 4 * 3 and len(set(ran)) == len(ran), ran  # each job ran once
    # The new leader's term is higher: the old one's writes would be refused.
    ready = httpx.get(f"{follower.url}/readyz", timeout=5).json()
    assert ready["role"] == "leader" and ready["term"] >= 2


def test_a_leader_that_loses_its_lease_starts_again_as_a_follower(
    tmp_path: Path, procs: list[Proc], postgres_url: str, nats_server: NatsServer
) -> None:
    """Its database session is cut (a network partition, as the database sees it): the
    follower takes the lease, and the old leader, rather than act on stale state, starts
    again (the same process) as a follower."""
    leader, follower = replicas(tmp_path, procs, postgres_url, nats_server)

    # The follower polls for the lock every 0.5 s; the leader checks its session every
    # second: cut until the follower wins the race (it almost always does at once).
    deadline = time.monotonic() + 30
    while role(follower) != "leader":
        assert time.monotonic() < deadline, "the follower never took the lease"
        asyncio.run(end_leader_session(postgres_url))
        time.sleep(0.7)
    assert leader.proc is not None
    wait_until(lambda: "starting again as a follower" in leader.output(), timeout=30,
               what="the old leader to notice")  # fmt: skip
    wait_until(lambda: role(leader) == "follower", timeout=30, what="it to serve again")
    assert leader.proc.poll() is None  # the same process: a supervisor sees no exit
    assert role(follower) == "leader"


def test_faena_run_refuses_a_database_that_replicas_lead(tmp_path: Path, postgres_url: str) -> None:
    """Their leader would take the run for its own at its next takeover."""

    async def claim() -> None:
        store = SqlStore(postgres_url)
        await store.open()
        try:
            await store.claim_leadership("ci-1", "http://ci-1:8080")
        finally:
            await store.close()

    (tmp_path / "faena.yml").write_text("jobs:\n  a:\n    steps: [{run: 'true'}]\n")
    env = clean_env(FAENA_HOME=str(tmp_path / "home"), FAENA_DATABASE_URL=postgres_url)
    first = subprocess.run([*FAENA_CMD, "run"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert first.returncode == 0, first.stderr  # a database of its own: fine
    asyncio.run(claim())
    elsewhere = {**env, "FAENA_HOME": str(tmp_path / "elsewhere")}
    second = subprocess.run([*FAENA_CMD, "run"], cwd=tmp_path, env=elsewhere,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert second.returncode == 2
    assert "belongs to faena server replicas (leader ci-1" in second.stderr
    assert "faena submit" in second.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ([], "replicas share one admin token"),
        (["--admin-token", "t", "--with-agent"], "--with-agent runs jobs inside the server"),
    ],
)
def test_a_replica_refuses_settings_it_cannot_share(
    tmp_path: Path, postgres_url: str, extra: list[str], said: str
) -> None:
    env = clean_env(FAENA_HOME=str(tmp_path / "home"), FAENA_DATABASE_URL=postgres_url)
    done = subprocess.run([*FAENA_CMD, "server", "--port", "1", *extra], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr


def test_a_database_restart_under_two_replicas_leaves_one_leader_and_the_run_completes(
    tmp_path: Path,
    procs: list[Proc],
    postgres_url: str,
    postgres_server: PostgresServer,
    nats_server: NatsServer,
) -> None:
    """Both replicas lose their sessions; whichever takes the lock first leads. If that is
    the follower, the old leader finds itself deposed and starts again as a follower."""
    first, second = replicas(tmp_path, procs, postgres_url, nats_server)
    start(procs, make_agent(tmp_path, second, "solo", also=(first,)))
    wait_until(lambda: len(first.nodes()) == 1, what="the agent")
    gate = tmp_path / "gate"
    run_id = first.submit(GATED.format(gate=gate))
    wait_until(lambda: first.run(run_id)["jobs"][0]["state"] == "RUNNING", what="the job")
    postgres_server.restart(1.0)
    gate.touch()

    def leaders() -> list[Server]:
        return [s for s in (first, second) if role(s) == "leader"]

    wait_until(lambda: len(leaders()) == 1, timeout=60, what="one leader again")
    [leader] = leaders()
    row = leader.wait_run(run_id, timeout=60)
    assert row["state"] == "SUCCEEDED", (row, first.output(), second.output())
    other = second if leader is first else first
    wait_until(lambda: role(other) == "follower", timeout=30, what="the other to follow")
