"""``faena runs`` and ``faena logs``: what a user reads after a run."""

from __future__ import annotations

import pytest

TWO_JOBS = """
    name: logged
    jobs:
      alpha:
        steps:
          - name: say hello
            run: echo "hello from alpha"; echo "to stderr" >&2
      beta:
        needs: alpha
        steps:
          - run: echo "hello from beta"
"""


@pytest.fixture
def finished_run(faena, pipeline) -> str:
    pipeline(TWO_JOBS)
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    return faena.last_run()["run_id"]


def test_runs_without_any_run(faena):
    result = faena("runs")
    assert result.returncode == 0, result.stderr
    assert "no runs" in result.stdout.lower()
    assert faena.runs() == []


def test_runs_lists_newest_first(faena, pipeline):
    pipeline(TWO_JOBS)
    assert faena("run").returncode == 0
    pipeline(
        """
        name: failing
        jobs:
          a:
            steps:
              - run: exit 1
        """,
        name="failing.yml",
    )
    assert faena("run", "failing.yml").returncode == 1
    runs = faena.runs()
    assert [(r["pipeline"], r["state"]) for r in runs] == [
        ("failing", "FAILED"),
        ("logged", "SUCCEEDED"),
    ]
    table = faena("runs")
    assert table.returncode == 0
    assert runs[0]["run_id"] in table.stdout and runs[1]["run_id"] in table.stdout
    assert table.stdout.index(runs[0]["run_id"]) < table.stdout.index(runs[1]["run_id"])
    assert "FAILED" in table.stdout and "SUCCEEDED" in table.stdout


def test_logs_last_prints_every_job(faena, finished_run):
    result = faena("logs", "last")
    assert result.returncode == 0, result.stderr
    assert "alpha" in result.stdout and "beta" in result.stdout
    assert "say hello" in result.stdout
    assert "hello from alpha" in result.stdout
    assert "to stderr" in result.stdout
    assert "hello from beta" in result.stdout
    assert result.stdout.index("hello from alpha") < result.stdout.index("hello from beta")


def test_logs_of_one_job_by_run_id(faena, finished_run):
    result = faena("logs", finished_run, "beta")
    assert result.returncode == 0, result.stderr
    assert "hello from beta" in result.stdout
    assert "hello from alpha" not in result.stdout


def test_logs_by_run_id_prefix(faena, finished_run):
    result = faena("logs", finished_run[:8], "alpha")
    assert result.returncode == 0, result.stderr
    assert "hello from alpha" in result.stdout
    assert "hello from beta" not in result.stdout


def test_logs_json(faena, finished_run):
    result = faena("logs", finished_run, "alpha", "--json")
    assert result.returncode == 0, result.stderr
    lines = faena.json_lines(result.stdout)
    texts = {(ln["stream"], ln["text"]) for ln in lines}
    assert ("stdout", "hello from alpha") in texts
    assert ("stderr", "to stderr") in texts
    assert all(ln["job"] == "alpha" for ln in lines)


def test_logs_of_an_unknown_run(faena, finished_run):
    result = faena("logs", "zzzzzzzz")
    assert result.returncode == 2
    assert "zzzzzzzz" in result.stderr
    assert "no run" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_logs_of_an_unknown_job(faena, finished_run):
    result = faena("logs", finished_run, "gamma")
    assert result.returncode == 2
    assert "gamma" in result.stderr
    # The message helps: it names the jobs that do exist.
    assert "alpha" in result.stderr and "beta" in result.stderr
    assert "Traceback" not in result.stderr


def test_logs_last_without_any_run(faena):
    result = faena("logs", "last")
    assert result.returncode == 2
    assert "no run" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_resume_of_an_unknown_run(faena, finished_run):
    result = faena("resume", "zzzzzzzz")
    assert result.returncode == 2
    assert "zzzzzzzz" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_of_a_finished_run(faena, finished_run):
    result = faena("resume", finished_run)
    assert result.returncode == 2
    assert "finished" in result.stderr.lower()
    assert faena.last_run()["state"] == "SUCCEEDED"
