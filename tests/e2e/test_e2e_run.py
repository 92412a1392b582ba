"""``faena run``: exit codes, live output, ``--json`` and the pipeline features users rely on."""

from __future__ import annotations

import re

import pytest

PASSING = """
    name: hello
    jobs:
      build:
        steps:
          - run: echo building
      test:
        needs: build
        steps:
          - run: echo testing
"""


def _lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- passing, failing, invalid ----------------------------------------------------------------


def test_run_a_passing_pipeline(faena, pipeline):
    pipeline(PASSING)
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "build" in out and "test" in out
    assert "succeeded" in out
    run = faena.last_run()
    assert run["state"] == "SUCCEEDED"
    assert run["pipeline"] == "hello"
    assert run["run_id"] in out
    assert run["interrupted"] is False


def test_run_a_file_given_by_path_from_another_directory(faena, pipeline):
    path = pipeline(
        """
        jobs:
          where:
            steps:
              - run: test -f "$FAENA_SOURCE_DIR/ci.yml" && echo found-source
        """,
        name="ci.yml",
    )
    result = faena("run", str(path), cwd=faena.tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = faena("logs", "last", "where")
    assert "found-source" in logs.stdout


def test_run_a_failing_pipeline(faena, pipeline):
    pipeline(
        """
        jobs:
          setup:
            steps:
              - run: echo ready
          broken:
            needs: setup
            steps:
              - name: noisy step
                run: |
                  for i in $(seq 1 40); do echo "line-$i"; done
                  exit 3
              - run: echo never-here
          deploy:
            needs: broken
            steps:
              - run: echo deploying
          notify:
            needs: deploy
            steps:
              - run: echo notifying
          independent:
            steps:
              - run: echo on-my-own
        """
    )
    result = faena("run")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout + result.stderr
    # The failing step is named and its last output lines are shown, in order.
    assert "noisy step" in out
    assert "exit code 3" in out
    last = [f"line-{i}" for i in range(31, 41)]
    positions = [out.find(f"{line}\n") for line in last]
    assert all(p >= 0 for p in positions), out
    assert positions == sorted(positions)
    assert "never-here" not in out
    # Its dependents, direct and indirect, are reported as skipped.
    assert re.search(r"deploy\b.*skipped", out), out
    assert re.search(r"notify\b.*skipped", out), out
    assert "deploying" not in out and "notifying" not in out

    run = faena.last_run()
    assert run["state"] == "FAILED"
    logs = faena("logs", run["run_id"], "independent")
    assert logs.returncode == 0, logs.stderr
    assert "on-my-own" in logs.stdout


def test_run_an_invalid_pipeline_records_nothing(faena, pipeline):
    pipeline(
        """
        jobs:
          a:
            needs: [nope]
            steps:
              - run: echo a
        """
    )
    result = faena("run")
    assert result.returncode == 2
    assert re.search(r"^faena\.yml:\d+:\d+ jobs\.a\.needs: .*nope", result.stderr, re.MULTILINE)
    assert faena.runs() == []


def test_run_a_missing_file(faena):
    result = faena("run", "nope.yml")
    assert result.returncode == 2
    assert "nope.yml" in result.stderr
    assert "not found" in result.stderr.lower()
    assert faena.runs() == []


# -- --json -----------------------------------------------------------------------------------


def test_run_json_output_is_one_json_object_per_line(faena, pipeline):
    pipeline(PASSING)
    result = faena("run", "--json")
    assert result.returncode == 0, result.stderr
    events = faena.json_lines(result.stdout)
    assert len(events) > 1
    final = events[-1]
    assert final["type"] == "result"
    assert final["state"] == "SUCCEEDED"
    assert final["run_id"] == faena.last_run()["run_id"]
    assert {j["name"]: j["state"] for j in final["jobs"]} == {
        "build": "SUCCEEDED",
        "test": "SUCCEEDED",
    }
    assert all(e.get("type") != "result" for e in events[:-1])


def test_run_json_of_a_failing_pipeline(faena, pipeline):
    pipeline(
        """
        jobs:
          a:
            steps:
              - run: echo to-stdout; exit 1
          b:
            needs: a
            steps:
              - run: echo b
        """
    )
    result = faena("run", "--json")
    assert result.returncode == 1
    events = faena.json_lines(result.stdout)
    final = events[-1]
    assert final["type"] == "result"
    assert final["state"] == "FAILED"
    assert faena.job(final, "a")["state"] == "FAILED"
    assert faena.job(final, "b")["state"] == "SKIPPED"


# -- parallelism ------------------------------------------------------------------------------

FAN_OUT = """
    jobs:
      setup:
        steps:
          - run: echo setup >> @TMP@/ran
      {leaves}
      join:
        needs: [{names}]
        steps:
          - run: echo join >> @TMP@/ran
"""

LEAF = """
      leaf{i}:
        needs: setup
        steps:
          - run: |
              mkdir -p @TMP@/running
              mkdir @TMP@/running/leaf{i}
              ls @TMP@/running | wc -l >> @TMP@/concurrency
              sleep 0.3
              ls @TMP@/running | wc -l >> @TMP@/concurrency
              rmdir @TMP@/running/leaf{i}
              echo leaf{i} >> @TMP@/ran
"""


def _fan_out(leaves: int) -> str:
    body = "".join(LEAF.format(i=i) for i in range(leaves)).strip("\n")
    names = ", ".join(f"leaf{i}" for i in range(leaves))
    return FAN_OUT.replace("{leaves}", body.strip()).replace("{names}", names)


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_fan_out_succeeds_with_any_parallelism(faena, pipeline, jobs):
    pipeline(_fan_out(6))
    result = faena("run", "-j", jobs, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = _lines(faena.tmp / "ran")
    assert ran[0] == "setup" and ran[-1] == "join"
    assert sorted(ran[1:-1]) == [f"leaf{i}" for i in range(6)]
    peak = max(int(n) for n in _lines(faena.tmp / "concurrency"))
    assert peak <= int(jobs)


BARRIER_JOB = """
  meet{i}:
    steps:
      - run: |
          mkdir -p @TMP@/arrived && touch @TMP@/arrived/meet{i}
          for _ in $(seq 1 300); do
            [ "$(ls @TMP@/arrived | wc -l)" -ge 4 ] && exit 0
            sleep 0.05
          done
          echo "only $(ls @TMP@/arrived | wc -l) of 4 jobs at the barrier"; exit 1
"""


def test_j4_runs_four_jobs_at_once(faena, pipeline):
    # Four jobs meet at a barrier: they can only all pass it if they run at the same time.
    pipeline("jobs:" + "".join(BARRIER_JOB.format(i=i) for i in range(4)))
    result = faena("run", "-j", "4", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- matrix -----------------------------------------------------------------------------------


def test_matrix_expands_with_include_and_exclude(faena, pipeline):
    pipeline(
        """
        jobs:
          test:
            strategy:
              matrix:
                py: ["3.11", "3.12"]
                os: [linux, mac]
                exclude:
                  - py: "3.11"
                    os: mac
                include:
                  - py: "3.13"
                    os: linux
            steps:
              - run: echo "testing on ${{ matrix.py }}/${{ matrix.os }}"
          single:
            strategy:
              matrix:
                py: ["3.12"]
            steps:
              - run: echo "python ${{ matrix.py }}"
        """
    )
    result = faena("run", "--json")
    assert result.returncode == 0, result.stderr
    final = faena.json_lines(result.stdout)[-1]
    names = sorted(j["name"] for j in final["jobs"])
    assert names == [
        "single (py=3.12)",
        "test (py=3.11, os=linux)",
        "test (py=3.12, os=linux)",
        "test (py=3.12, os=mac)",
        "test (py=3.13, os=linux)",
    ]
    assert all(j["state"] == "SUCCEEDED" for j in final["jobs"])
    logs = faena("logs", "last", "test (py=3.13, os=linux)")
    assert logs.returncode == 0, logs.stderr
    assert "testing on 3.13/linux" in logs.stdout
    assert "testing on 3.12" not in logs.stdout
    single = faena("logs", "last", "single (py=3.12)")
    assert "python 3.12" in single.stdout


def test_matrix_job_names_in_live_output(faena, pipeline):
    pipeline(
        """
        jobs:
          test:
            strategy:
              matrix:
                py: ["3.11", "3.12"]
            steps:
              - run: echo ok
        """
    )
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test (py=3.11)" in result.stdout
    assert "test (py=3.12)" in result.stdout


def test_matrix_fail_fast_cancels_the_other_legs(faena, pipeline):
    pipeline(
        """
        jobs:
          m:
            strategy:
              matrix:
                n: [1, 2]
            steps:
              - run: |
                  if [ "${{ matrix.n }}" = 1 ]; then
                    for _ in $(seq 1 200); do [ -e @TMP@/leg2-started ] && break; sleep 0.05; done
                    exit 1
                  fi
                  touch @TMP@/leg2-started
                  sleep 30
                  touch @TMP@/leg2-finished
        """
    )
    result = faena("run", "-j", "2", "--json", timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    final = faena.json_lines(result.stdout)[-1]
    assert faena.job(final, "m (n=1)")["state"] == "FAILED"
    assert faena.job(final, "m (n=2)")["state"] == "CANCELLED"
    assert not (faena.tmp / "leg2-finished").exists()


# -- outputs ----------------------------------------------------------------------------------


def test_job_outputs_flow_into_dependents(faena, pipeline):
    pipeline(
        """
        jobs:
          a:
            outputs: [x]
            steps:
              - run: echo "x=hello world" >> "$FAENA_OUTPUT"
          c:
            outputs:
              v: ${{ steps.ver.outputs.version }}
            steps:
              - id: ver
                run: echo "version=1.2.3" >> "$FAENA_OUTPUT"
          b:
            needs: [a, c]
            steps:
              - run: echo "inline=${{ needs.a.outputs.x }}"
              - env:
                  FROM_C: ${{ needs.c.outputs.v }}
                run: echo "from-env=$FROM_C"
        """
    )
    result = faena("run", "--json")
    assert result.returncode == 0, result.stderr
    final = faena.json_lines(result.stdout)[-1]
    assert faena.job(final, "a")["outputs"] == {"x": "hello world"}
    assert faena.job(final, "c")["outputs"] == {"v": "1.2.3"}
    logs = faena("logs", "last", "b")
    assert "inline=hello world" in logs.stdout
    assert "from-env=1.2.3" in logs.stdout


# -- conditions, continue-on-error ------------------------------------------------------------


def test_step_if_failure_and_always(faena, pipeline):
    pipeline(
        """
        jobs:
          bad:
            steps:
              - run: echo first; exit 1
              - run: echo skipped-after-failure
              - if: success()
                run: echo success-only
              - if: failure()
                run: echo on-failure
              - if: always()
                run: echo always-ran
          good:
            steps:
              - run: echo fine
              - if: failure()
                run: echo failure-handler-on-success
              - if: always()
                run: echo always-on-success
        """
    )
    result = faena("run", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    bad = faena("logs", "last", "bad").stdout
    assert "first" in bad
    assert "on-failure" in bad
    assert "always-ran" in bad
    assert "skipped-after-failure" not in bad
    assert "success-only" not in bad
    good = faena("logs", "last", "good").stdout
    assert "always-on-success" in good
    assert "failure-handler-on-success" not in good
    states = {j["name"]: j["state"] for j in faena.json_lines(result.stdout)[-1]["jobs"]}
    assert states == {"bad": "FAILED", "good": "SUCCEEDED"}


def test_job_if_always_and_failure_run_after_a_failed_need(faena, pipeline):
    pipeline(
        """
        jobs:
          broken:
            steps:
              - run: exit 1
          cleanup:
            needs: broken
            if: always()
            steps:
              - run: echo cleaning
          report:
            needs: broken
            if: failure()
            steps:
              - run: echo reporting
          deploy:
            needs: broken
            steps:
              - run: echo deploying
        """
    )
    result = faena("run", "--json")
    assert result.returncode == 1
    final = faena.json_lines(result.stdout)[-1]
    states = {j["name"]: j["state"] for j in final["jobs"]}
    assert states == {
        "broken": "FAILED",
        "cleanup": "SUCCEEDED",
        "report": "SUCCEEDED",
        "deploy": "SKIPPED",
    }


def test_step_continue_on_error(faena, pipeline):
    pipeline(
        """
        jobs:
          tolerant:
            steps:
              - run: echo trying; exit 5
                continue-on-error: true
              - run: echo carried-on
          next:
            needs: tolerant
            steps:
              - run: echo next-ran
        """
    )
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert faena.last_run()["state"] == "SUCCEEDED"
    logs = faena("logs", "last").stdout
    assert "trying" in logs and "carried-on" in logs and "next-ran" in logs


def test_job_continue_on_error(faena, pipeline):
    pipeline(
        """
        jobs:
          flaky:
            continue-on-error: true
            steps:
              - run: exit 1
          after:
            needs: flaky
            steps:
              - run: echo after-ran
        """
    )
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "after-ran" in faena("logs", "last", "after").stdout


# -- retries and timeouts ---------------------------------------------------------------------

COUNTER = """
n=$(cat @TMP@/{name} 2>/dev/null || echo 0); n=$((n+1)); echo $n > @TMP@/{name}
echo "attempt $n"
"""


def _counter_step(name: str, succeed_from: int) -> str:
    body = COUNTER.format(name=name).strip() + f'\n[ "$n" -ge {succeed_from} ]'
    return "\n".join("          " + line for line in body.splitlines())


def test_step_retry_then_success(faena, pipeline):
    pipeline(
        f"""
jobs:
  flaky:
    steps:
      - run: |
{_counter_step("step-count", 2)}
        retry:
          max_attempts: 3
          delay: 0s
      - run: echo after-retry
"""
    )
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (faena.tmp / "step-count").read_text().strip() == "2"
    logs = faena("logs", "last", "flaky").stdout
    assert "attempt 1" in logs and "attempt 2" in logs and "after-retry" in logs
    assert "attempt 3" not in logs


def test_step_retry_gives_up_after_max_attempts(faena, pipeline):
    pipeline(
        f"""
jobs:
  hopeless:
    steps:
      - run: |
{_counter_step("step-count", 99)}
        retry:
          max_attempts: 2
          delay: 0s
"""
    )
    result = faena("run")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (faena.tmp / "step-count").read_text().strip() == "2"


def test_job_retry_then_success(faena, pipeline):
    pipeline(
        f"""
jobs:
  flaky:
    retry:
      max_attempts: 3
    steps:
      - run: echo first-step
      - run: |
{_counter_step("job-count", 2)}
  after:
    needs: flaky
    steps:
      - run: echo after-ran
"""
    )
    result = faena("run", "--json")
    assert result.returncode == 0, result.stderr
    assert (faena.tmp / "job-count").read_text().strip() == "2"
    final = faena.json_lines(result.stdout)[-1]
    assert faena.job(final, "flaky")["attempt"] == 2
    assert faena.job(final, "after")["state"] == "SUCCEEDED"
    logs = faena("logs", "last", "flaky").stdout
    assert "attempt 1" in logs and "attempt 2" in logs


def test_job_without_retry_runs_once(faena, pipeline):
    pipeline(
        f"""
jobs:
  once:
    steps:
      - run: |
{_counter_step("count", 2)}
"""
    )
    result = faena("run")
    assert result.returncode == 1
    assert (faena.tmp / "count").read_text().strip() == "1"


@pytest.mark.timeout(60)
def test_step_timeout(faena, pipeline):
    pidfile = faena.watch_pid_file(faena.tmp / "sleep.pid")
    pipeline(
        """
        jobs:
          slow:
            steps:
              - run: |
                  echo before-sleep
                  sleep 30 &
                  echo $! > @TMP@/sleep.pid
                  wait
                timeout: 1s
              - run: echo not-reached
          fast:
            steps:
              - run: echo fast-done
        """
    )
    result = faena("run", "--json", timeout=25)
    assert result.returncode == 1, result.stdout + result.stderr
    final = faena.json_lines(result.stdout)[-1]
    slow = faena.job(final, "slow")
    assert slow["state"] == "FAILED"
    assert "timed out" in slow["message"]
    assert faena.job(final, "fast")["state"] == "SUCCEEDED"
    logs = faena("logs", "last", "slow").stdout
    assert "before-sleep" in logs and "not-reached" not in logs
    pid = faena.read_pid(pidfile)
    assert pid is not None
    assert faena.wait_for(lambda: not faena.pid_alive(pid), timeout=10), (
        f"the timed-out step's process {pid} is still running"
    )


@pytest.mark.timeout(60)
def test_job_timeout(faena, pipeline):
    pipeline(
        """
        jobs:
          slow:
            timeout: 1s
            steps:
              - run: echo started
              - run: sleep 30
        """
    )
    result = faena("run", timeout=25)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "timed out" in result.stdout + result.stderr


# -- workspaces -------------------------------------------------------------------------------

WORKSPACE_PIPELINE = """
    jobs:
      make:
        steps:
          - run: echo data > artifact.txt; echo "ws=$FAENA_WORKSPACE"
"""


def test_workspace_is_removed_after_the_run(faena, pipeline):
    pipeline(WORKSPACE_PIPELINE)
    result = faena("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (faena.project / "artifact.txt").exists()
    assert list(faena.home.rglob("artifact.txt")) == []
    assert faena.workspaces() == []


def test_keep_workspace(faena, pipeline):
    pipeline(WORKSPACE_PIPELINE)
    result = faena("run", "--keep-workspace")
    assert result.returncode == 0, result.stdout + result.stderr
    logs = faena("logs", "last", "make").stdout
    match = re.search(r"^ws=(\S+)$", logs, re.MULTILINE)
    assert match, logs
    kept = faena.home.rglob("artifact.txt")
    found = list(kept)
    assert len(found) == 1
    assert found[0].read_text() == "data\n"
    assert str(found[0].parent) == match[1]


def test_workspace_is_removed_after_a_failure_too(faena, pipeline):
    pipeline(
        """
        jobs:
          make:
            steps:
              - run: echo data > artifact.txt; exit 1
        """
    )
    result = faena("run")
    assert result.returncode == 1
    assert list(faena.home.rglob("artifact.txt")) == []


# -- step environment -------------------------------------------------------------------------


def test_env_precedence_shell_and_working_directory(faena, pipeline):
    pipeline(
        """
        env:
          LEVEL: pipeline
          ONLY_PIPELINE: p
        jobs:
          a:
            env:
              LEVEL: job
              ONLY_JOB: j
            outputs: [multi]
            steps:
              - env:
                  LEVEL: step
                run: echo "first level=$LEVEL p=$ONLY_PIPELINE j=$ONLY_JOB"
              - run: echo "second level=$LEVEL"
              - shell: python
                run: |
                  import os
                  print("python sees", os.environ["ONLY_PIPELINE"])
              - working-directory: sub/dir
                run: echo "cwd=$(pwd)"
              - run: |
                  {
                    echo "multi<<EOF"
                    echo "line one"
                    echo "line two"
                    echo "EOF"
                  } >> "$FAENA_OUTPUT"
          b:
            needs: a
            steps:
              - env:
                  MULTI: ${{ needs.a.outputs.multi }}
                run: printf '[%s]\\n' "$MULTI"
        """
    )
    result = faena("run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    final = faena.json_lines(result.stdout)[-1]
    assert faena.job(final, "a")["outputs"] == {"multi": "line one\nline two"}
    logs = faena("logs", "last").stdout
    assert "first level=step p=p j=j" in logs
    assert "second level=job" in logs
    assert "python sees p" in logs
    assert re.search(r"^cwd=/\S+/sub/dir$", logs, re.MULTILINE), logs
    assert "[line one\nline two]" in logs
