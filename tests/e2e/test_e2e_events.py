"""`faena events replay`: run and job rows rebuilt from the event log."""

from __future__ import annotations

import json
import sqlite3


def test_replay_rebuilds_rows_that_went_wrong(faena):
    faena.write(
        "jobs:\n  a:\n    steps: [{run: echo hi}]\n  b:\n    needs: a\n    steps: [{run: 'true'}]\n"
    )
    assert faena("run").returncode == 0
    [run] = faena.runs()
    # A projection gone wrong: the jobs' rows lost, the run's state wrong.
    with sqlite3.connect(faena.home / "faena.db") as db:
        db.execute("DELETE FROM jobs")
        db.execute("UPDATE runs SET state = 'RUNNING'")
    assert faena("runs", "--json").returncode == 0
    replay = faena("events", "replay", "--json")
    assert replay.returncode == 0, replay.stderr
    report = json.loads(replay.stdout)
    assert report["changed"] == [run["run_id"]] and report["events"] > 0
    [again] = faena.runs()
    assert again["state"] == "SUCCEEDED"
    status = faena("logs", run["run_id"])
    assert "=== a [SUCCEEDED]" in status.stdout and "=== b [SUCCEEDED]" in status.stdout
    # Nothing left to fix: a second replay changes nothing; a later --since sees nothing.
    assert json.loads(faena("events", "replay", "--json").stdout)["changed"] == []
    late = json.loads(faena("events", "replay", "--since", "2999-01-01T00:00", "--json").stdout)
    assert late == {"events": 0, "runs": [], "changed": [], "in_flight": []}
    bad = faena("events", "replay", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr


def test_replay_leaves_unfinished_runs_to_their_orchestrator_unless_asked(faena):
    faena.write("jobs:\n  a:\n    steps: [{run: 'true'}]\n")
    assert faena("run").returncode == 0
    [run] = faena.runs()
    # The log of a run that has not finished: its completion event taken out.
    with sqlite3.connect(faena.home / "faena.db") as db:
        db.execute("DELETE FROM events WHERE subject = 'ci.run.v1.completed'")
        db.execute("UPDATE runs SET state = 'PENDING'")
    report = json.loads(faena("events", "replay", "--json").stdout)
    assert report["in_flight"] == [run["run_id"]] and report["changed"] == []
    assert state_of(faena, run["run_id"]) == "PENDING"  # untouched
    report = json.loads(faena("events", "replay", "--in-flight", "--json").stdout)
    assert report["changed"] == [run["run_id"]] and report["in_flight"] == []
    assert state_of(faena, run["run_id"]) == "RUNNING"


def state_of(faena, run_id: str) -> str:
    with sqlite3.connect(faena.home / "faena.db") as db:
        return str(db.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0])
