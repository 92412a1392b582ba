"""The distributed shape with real processes: `faena server` and `faena agent`s over HTTP."""

from __future__ import annotations

import json
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
    make_server,
    pid_alive,
    start,
    wait_until,
)


def node_names(server: Server) -> dict[str, str]:
    return {n["node_id"]: n["name"] for n in server.nodes()}


def ready(server: Server, *names: str) -> bool:
    states = {n["name"]: n["state"] for n in server.nodes()}
    return all(states.get(name) == "ready" for name in names)


def jobs_by_name(row: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(j["name"]): j for j in row["jobs"]}  # type: ignore[attr-defined]


def test_a_dag_spreads_over_two_agents_by_labels(tmp_path: Path, procs: list[Proc]) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    start(procs, make_agent(tmp_path, server, "alpha", labels="alpha"))
    start(procs, make_agent(tmp_path, server, "beta", labels="beta"))
    wait_until(lambda: ready(server, "alpha", "beta"), what="both agents registered")
    run_id = server.submit(
        """
name: spread
jobs:
  build:
    runs-on: alpha
    steps:
      - id: v
        run: echo "version=1.2.$((40 + 2))" >> "$FAENA_OUTPUT"; echo built on alpha
    outputs:
      version: ${{ steps.v.outputs.version }}
  test:
    runs-on: beta
    needs: build
    steps:
      - run: echo testing ${{ needs.build.outputs.version }}
  ship:
    runs-on: [alpha, linux]
    needs: [build, test]
    steps:
      - run: echo shipping
"""
    )
    row = server.wait_run(run_id)
    assert row["state"] == "SUCCEEDED", row
    names = node_names(server)
    jobs = jobs_by_name(row)
    assert names[str(jobs["build"]["node_id"])] == "alpha"
    assert names[str(jobs["test"]["node_id"])] == "beta"
    assert names[str(jobs["ship"]["node_id"])] == "alpha"
    out = "\n".join(server.logs(run_id))
    assert "built on alpha" in out and "testing 1.2.42" in out and "shipping" in out


def test_a_job_whose_agent_is_killed_finishes_on_the_other(
    tmp_path: Path, procs: list[Proc]
) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    agents = {
        name: start(procs, make_agent(tmp_path, server, name, labels="pool"))
        for name in ("one", "two")
    }
    wait_until(lambda: ready(server, "one", "two"), what="both agents registered")
    pids = tmp_path / "pids"
    pids.mkdir()
    run_id = server.submit(
        f"""
name: survive
jobs:
  long:
    runs-on: pool
    steps:
      - run: |
          echo $$ > {pids}/attempt-$FAENA_RUN_ATTEMPT
          if [ "$FAENA_RUN_ATTEMPT" = 1 ]; then sleep 120; fi
          echo finished
"""
    )
    first = pids / "attempt-1"

    def running_on() -> str | None:
        job = server.run(run_id)["jobs"][0]
        return str(job["node_id"]) if job["state"] == "RUNNING" and first.exists() else None

    node = wait_until(running_on, what="the job to start")
    victim = node_names(server)[node]
    killed_at = time.monotonic()
    agents[victim].kill9()

    def moved() -> bool:
        # The second attempt is quick: it may be over by the time we look.
        return (pids / "attempt-2").exists()

    wait_until(moved, timeout=30, what="the job to run on the other agent")
    failover = time.monotonic() - killed_at
    row = server.wait_run(run_id)
    assert row["state"] == "SUCCEEDED", row
    job = row["jobs"][0]
    assert node_names(server)[str(job["node_id"])] != victim
    assert job["attempt"] == 2  # a platform retry, not one of the job's own attempts
    assert {n["name"]: n["state"] for n in server.nodes()}[victim] == "lost"
    # Heartbeats every 0.3 s, lost after 3 missed: the move takes about a second.
    print(f"failover after kill -9: {failover:.2f}s")
    # The killed agent's step still runs; the agent, started again, ends it.
    orphan = int(first.read_text())
    assert pid_alive(orphan)
    again = agents[victim]
    again.start()
    wait_until(lambda: not pid_alive(orphan), what="the orphaned step to be killed")
    wait_until(lambda: ready(server, victim), what="the agent to be back")


RESTART_PIPELINE = """
name: restart
jobs:
  first:
    steps:
      - run: |
          echo before
          while [ ! -e {gate} ]; do sleep 0.05; done
          for i in $(seq 1 40); do echo "line $i"; sleep 0.02; done
  second:
    needs: first
    steps:
      - run: echo second ran
  third:
    steps:
      - run: echo third ran
"""


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_the_server_restarts_mid_run_and_the_run_completes(
    tmp_path: Path, procs: list[Proc], how: str
) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    start(procs, make_agent(tmp_path, server, "steady", slots=1))
    wait_until(lambda: ready(server, "steady"), what="agent registered")
    gate = tmp_path / "gate"
    run_id = server.submit(RESTART_PIPELINE.format(gate=gate))
    wait_until(lambda: server.run(run_id)["jobs"][0]["state"] == "RUNNING", what="first runs")
    assert server.proc is not None
    server.halt(how)
    gate.touch()  # the job goes on while no server listens: its reports wait
    time.sleep(1.0)
    server.start()
    row = server.wait_run(run_id)
    assert row["state"] == "SUCCEEDED", (row, server.output())
    jobs = jobs_by_name(row)
    assert jobs["first"]["attempt"] == 1  # not re-run: the agent kept it going
    assert "missed" not in server.output()  # a stopping server loses no agent
    lines = server.logs(run_id)
    expected = [f"line {i}" for i in range(1, 41)]
    assert lines.count("before") == 1  # nothing twice
    assert [x for x in lines if x.startswith("line ")] == expected  # nothing lost, in order
    assert "second ran" in lines and "third ran" in lines


def test_a_stopped_agent_leaves_and_hands_its_jobs_back(tmp_path: Path, procs: list[Proc]) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    leaving = start(procs, make_agent(tmp_path, server, "leaving", labels="pool"))
    wait_until(lambda: ready(server, "leaving"), what="agent registered")
    run_id = server.submit(
        "name: handback\njobs:\n  long:\n    runs-on: pool\n"
        "    steps:\n      - run: echo go; sleep 60\n"
    )
    wait_until(lambda: server.run(run_id)["jobs"][0]["state"] == "RUNNING", what="job runs")
    leaving.stop()
    assert leaving.proc is not None and leaving.proc.returncode == 0, leaving.output()
    # Gone from the listing at once, not a ghost that takes the job again.
    assert "leaving" not in {n["name"] for n in server.nodes()}
    job = server.run(run_id)["jobs"][0]
    assert job["state"] == "PENDING" and job["attempt"] == 2, job
    assert "registered again" not in leaving.output()
    start(procs, make_agent(tmp_path, server, "taker", labels="pool"))
    wait_until(lambda: server.run(run_id)["jobs"][0]["state"] == "RUNNING", what="taken")
    server.api("POST", f"/api/v1/pipelines/{run_id}/cancel")


def test_an_agent_with_a_bad_or_revoked_token_stops_with_a_clear_error(
    tmp_path: Path, procs: list[Proc]
) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    bad = make_agent(tmp_path, server, "bad")
    bad.args[bad.args.index("--token") + 1] = "not-a-token"
    start(procs, bad)
    assert bad.proc is not None
    assert bad.proc.wait(timeout=30) == 2
    assert "refuses this agent: SEC-TOK" in bad.output()
    assert "Traceback" not in bad.output()
    made = server.api("POST", "/api/v1/tokens", json={"name": "soon-gone", "kind": "agent"})
    revoked = make_agent(tmp_path, server, "revoked")
    revoked.args[revoked.args.index("--token") + 1] = made["token"]
    start(procs, revoked)
    wait_until(lambda: ready(server, "revoked"), what="agent registered")
    server.api("DELETE", f"/api/v1/tokens/{made['token_id']}")
    assert revoked.proc is not None
    assert revoked.proc.wait(timeout=30) == 2, revoked.output()
    assert "Traceback" not in revoked.output()


def test_agent_routes_need_an_agent_token_for_their_own_node(
    tmp_path: Path, procs: list[Proc]
) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    url = server.url + "/api/v1/agent/register"
    body = {"name": "x", "labels": ["a"], "slots": 1}
    assert httpx.post(url, json=body).status_code == 401
    bad = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["code"] == "SEC-TOK"
    reader = server.api("POST", "/api/v1/tokens", json={"name": "r", "scopes": ["job:read"]})
    denied = httpx.post(url, json=body, headers={"Authorization": f"Bearer {reader['token']}"})
    assert denied.status_code == 403 and denied.json()["code"] == "ORC-AUTH"
    first = {"Authorization": f"Bearer {server.agent_token('first')}"}
    second = {"Authorization": f"Bearer {server.agent_token('second')}"}
    node = httpx.post(url, json=body, headers=first).json()["node_id"]
    hb = server.url + "/api/v1/agent/heartbeat"
    assert httpx.post(hb, json={"node_id": node}, headers=first).status_code == 200
    stolen = httpx.post(hb, json={"node_id": node}, headers=second)
    assert stolen.status_code == 403 and stolen.json()["code"] == "ORC-AUTH"
    taken = httpx.post(url, json={**body, "node_id": node}, headers=second)
    assert taken.status_code == 403
    # An agent token can do nothing else.
    jobs = httpx.get(server.url + "/api/v1/pipelines", headers=first)
    assert jobs.status_code == 403
    wrong = {"kind": "step_started", "assignment_id": "a", "job_id": "r.1", "args": {"index": -1}}
    bogus = httpx.post(server.url + "/api/v1/agent/reports", headers=first,
                       json={"node_id": node, "reports": [wrong]})  # fmt: skip
    assert bogus.status_code == 422 and bogus.json()["code"] == "ORC-VALID"


def test_repeated_stale_and_out_of_order_agent_posts_change_nothing(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A hand-driven agent: what a flaky network or a confused agent can send."""
    quiet = make_server(tmp_path)
    quiet.env["FAENA_HEARTBEAT_INTERVAL"] = "60"  # this agent does not heartbeat
    server = start(procs, quiet)
    assert isinstance(server, Server)
    auth = {"Authorization": f"Bearer {server.agent_token('manual')}"}
    http = httpx.Client(base_url=server.url + "/api/v1/agent", headers=auth, timeout=30)
    node = http.post("/register", json={"name": "manual", "labels": ["manual"]}).json()
    node_id = node["node_id"]
    run_id = server.submit(
        "name: manual\njobs:\n  only:\n    runs-on: manual\n    steps:\n      - run: echo hi\n"
    )
    first = http.get("/work", params={"node_id": node_id, "wait": 10}).json()
    [offer] = first["messages"]
    assert offer["kind"] == "assign"
    # Not acknowledged (no cursor): the offer comes again; acknowledged: it is gone.
    again = http.get("/work", params={"node_id": node_id, "wait": 0}).json()
    assert again["messages"] == first["messages"]
    acked = http.get("/work", params={"node_id": node_id, "cursor": first["cursor"], "wait": 0})
    assert acked.json()["messages"] == []
    aid, job_id = offer["assignment_id"], offer["job_id"]
    accepted = http.post("/accept", json={"node_id": node_id, "assignment_id": aid,
                                          "job_id": job_id, "worker_id": "w1"})  # fmt: skip
    assert accepted.json()["assignment"]["job"]["steps"][0]["run"] == "echo hi"

    def report(kind: str, **args: object) -> dict[str, object]:
        return {"kind": kind, "assignment_id": aid, "job_id": job_id, "args": args}

    line = {"stream": "stdout", "text": "hi", "ts": time.time()}
    ok = {"outcome": "success", "exit_code": 0}
    batch = [
        report("worker_created", worker_id="w1", provider="local", info={}),
        report("step_started", index=0, attempt=1),
        report("logs", attempt=1, index=0, chunk=f"{job_id}:1:1", lines=[line]),
        report("step_finished", index=0, attempt=1, result=ok),
        report("worker_terminated", worker_id="w1", exit_code=0),
        report("job_finished", result={"outcome": "success"}),
    ]
    for _ in range(3):  # the answer was lost twice: sent three times
        answer = http.post("/reports", json={"node_id": node_id, "reports": batch})
        assert answer.status_code == 200 and answer.json()["revoke"] == []
    row = server.wait_run(run_id)
    assert row["state"] == "SUCCEEDED"
    assert server.logs(run_id).count("hi") == 1
    # Out of order and stale: a failure for the finished attempt, a step start after the
    # end, and reports for an assignment that is not the job's; none changes the run.
    late = [
        report("step_started", index=0, attempt=2),
        report("job_finished", result={"outcome": "failure", "message": "late"}),
    ]
    assert http.post("/reports", json={"node_id": node_id, "reports": late}).status_code == 200
    stale = [{**report("job_finished", result={"outcome": "failure"}), "assignment_id": "old"}]
    answer = http.post("/reports", json={"node_id": node_id, "reports": stale}).json()
    assert answer["revoke"] == ["old"]
    beat = http.post("/heartbeat", json={"node_id": node_id, "running": {"old": job_id}})
    assert beat.json()["revoke"] == ["old"]
    after = server.run(run_id)
    assert after["state"] == "SUCCEEDED" and after["jobs"][0]["state"] == "SUCCEEDED"
    assert after["jobs"][0]["attempt"] == 1


DEBUG_PIPELINE = """
name: debug
jobs:
  broken:
    debug:
      pause-on-failure: 60s
    env:
      HINT: from-the-env
    steps:
      - run: mkdir -p out && echo half-done > out/state.txt && exit 3
      - run: echo cleanup ran
        if: always()
"""


@pytest.mark.parametrize("where", ["server's own node", "remote agent"])
def test_a_paused_failed_job_takes_commands_then_resumes(
    tmp_path: Path, procs: list[Proc], where: str
) -> None:
    server = start(procs, make_server(tmp_path, with_agent=where == "server's own node"))
    assert isinstance(server, Server)
    if where == "remote agent":
        start(procs, make_agent(tmp_path, server, "debugger"))
        wait_until(lambda: ready(server, "debugger"), what="agent registered")
    run_id = server.submit(DEBUG_PIPELINE)
    job_id = f"{run_id}.1"

    def paused() -> bool:
        return bool(server.run(run_id)["jobs"][0].get("paused_until"))

    wait_until(paused, what="the job to pause")
    assert server.http is not None

    def exec_(command: str, exec_id: str) -> tuple[list[dict[str, object]], dict[str, object]]:
        assert server.http is not None
        body = {"run": run_id, "job": "broken", "command": command, "exec_id": exec_id}
        r = server.http.post("/api/v1/exec", json=body)
        assert r.status_code == 200, r.text
        items = [json.loads(x) for x in r.text.splitlines() if x]
        return items[:-1], items[-1]

    lines, end = exec_("cat out/state.txt; echo $HINT; echo oops >&2; exit 7", "x1")
    # stdout and stderr are two pipes: the order within each is kept, not across them.
    assert [x["text"] for x in lines if x["stream"] == "stdout"] == ["half-done", "from-the-env"]
    assert [x["text"] for x in lines if x["stream"] == "stderr"] == ["oops"]
    assert end["exit_code"] == 7
    # The same exec id again: the same answer, the command not run twice.
    again, end2 = exec_("cat out/state.txt; echo $HINT; echo oops >&2; exit 7", "x1")
    assert again == lines and end2 == end
    # Without exec:run, no exec.
    reader = server.api("POST", "/api/v1/tokens", json={"name": "r", "scopes": ["job:read"]})
    denied = httpx.post(server.url + "/api/v1/exec", json={"job": job_id, "command": "id"},
                        headers={"Authorization": f"Bearer {reader['token']}"})  # fmt: skip
    assert denied.status_code == 403
    resumed = server.http.post("/api/v1/exec", json={"job": job_id, "resume": True})
    assert resumed.status_code == 202
    row = server.wait_run(run_id)
    assert row["state"] == "FAILED" and row["jobs"][0]["error_code"] == "EXEC-FAILED"
    out = server.logs(run_id)
    assert "cleanup ran" in out and any("paused for debugging" in x for x in out)
    # Not paused any more: exec is refused with a clear reason.
    late = server.http.post("/api/v1/exec", json={"job": job_id, "command": "true"})
    assert late.status_code == 409 and "not paused" in late.json()["detail"]
    # The audit trail: who ran what, and how it ended, once.
    audit = []
    params = {"run": run_id, "subject": "ci.exec.>"}
    with server.http.stream("GET", "/api/v1/events", params=params) as events:
        for raw in events.iter_lines():
            if raw.startswith("data: "):
                audit.append(json.loads(raw[6:]))
            if len(audit) == 2:
                break
    started, finished = audit
    assert started["payload"]["by"] == "admin" and "exit 7" in started["payload"]["command"]
    assert finished["payload"]["exit_code"] == 7


def test_a_job_no_node_can_take_says_why_it_waits(tmp_path: Path, procs: list[Proc]) -> None:
    server = start(procs, make_server(tmp_path))
    assert isinstance(server, Server)
    run_id = server.submit(
        "name: gpu\njobs:\n  train:\n    runs-on: gpu\n    steps: [{run: 'true'}]\n"
    )

    def waiting() -> str | None:
        job = server.run(run_id)["jobs"][0]
        return job.get("waiting") if job["state"] == "PENDING" else None

    assert wait_until(waiting, what="the reason") == "no node has all the labels gpu"
    status = subprocess.run(
        [*FAENA_CMD, "status", run_id, "--server", server.url, "--token", ADMIN],
        env=clean_env(XDG_CONFIG_HOME=str(tmp_path / "xdg")), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert "waiting: no node has all the labels gpu" in status.stdout, status
