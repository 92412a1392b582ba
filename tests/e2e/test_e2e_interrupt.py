"""Interrupting ``faena run``: Ctrl-C cancels cleanly; after kill -9, ``faena resume`` continues."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

LONG_STEP = """
    jobs:
      quick:
        steps:
          - run: echo quick-done
      long:
        needs: quick
        steps:
          - run: |
              echo $$ > @TMP@/shell.pid
              sleep 30 &
              echo $! > @TMP@/sleep.pid
              echo waiting
              wait
      after:
        needs: long
        steps:
          - run: echo after-ran >> @TMP@/after
"""


def _start_and_wait_for_pid(faena, *args: str) -> tuple[subprocess.Popen[str], int]:
    pidfile = faena.watch_pid_file(faena.tmp / "sleep.pid")
    faena.watch_pid_file(faena.tmp / "shell.pid")
    proc = faena.popen("run", *args)
    started = faena.wait_for(lambda: faena.read_pid(pidfile) is not None or proc.poll() is not None)
    if not started or proc.poll() is not None:
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the long step never started (exit {proc.returncode}):\n{out}\n{err}")
    pid = faena.read_pid(pidfile)
    assert pid is not None
    assert faena.pid_alive(pid)
    return proc, pid


def _step_pids(faena) -> list[int]:
    pids = [faena.read_pid(faena.tmp / name) for name in ("shell.pid", "sleep.pid")]
    return [p for p in pids if p is not None]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_cancels_the_run_and_its_processes(faena, pipeline, sig):
    pipeline(LONG_STEP)
    proc, _ = _start_and_wait_for_pid(faena)
    os.kill(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("faena run did not exit within 30 s of SIGINT")
    assert proc.returncode == 130, out + err
    assert "cancel" in (out + err).lower()
    assert "Traceback" not in err

    for pid in _step_pids(faena):
        assert faena.wait_for(lambda pid=pid: not faena.pid_alive(pid), timeout=5), (
            f"process {pid} of the cancelled step is still running"
        )
    assert not (faena.tmp / "after").exists()

    run = faena.last_run()
    assert run["state"] == "CANCELLED"
    assert run["interrupted"] is False
    logs = faena("logs", run["run_id"], "quick")
    assert "quick-done" in logs.stdout


@pytest.mark.timeout(60)
def test_sigint_with_json_ends_with_a_cancelled_result(faena, pipeline):
    pipeline(LONG_STEP)
    proc, _ = _start_and_wait_for_pid(faena, "--json")
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    events = faena.json_lines(out)
    final = events[-1]
    assert final["type"] == "result"
    assert final["state"] == "CANCELLED"
    assert faena.job(final, "quick")["state"] == "SUCCEEDED"
    assert faena.job(final, "long")["state"] == "CANCELLED"
    assert faena.job(final, "after")["state"] in ("CANCELLED", "SKIPPED")


@pytest.mark.timeout(60)
def test_resume_refuses_a_run_that_is_still_running(faena, pipeline):
    pipeline(LONG_STEP)
    proc, _ = _start_and_wait_for_pid(faena)
    run_id = faena.last_run()["run_id"]
    assert faena.last_run()["interrupted"] is False  # its process is alive
    result = faena("resume", run_id)
    assert result.returncode == 2
    assert run_id in result.stderr
    assert "Traceback" not in result.stderr
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130


KILLED = """
    jobs:
      first:
        steps:
          - run: echo ran >> @TMP@/first-count
      second:
        needs: first
        steps:
          - run: |
              n=$(cat @TMP@/second-count 2>/dev/null || echo 0); n=$((n+1))
              echo $n > @TMP@/second-count
              if [ "$n" -eq 1 ]; then
                echo $$ > @TMP@/shell.pid
                sleep 30 &
                echo $! > @TMP@/sleep.pid
                wait
              fi
              echo "second run $n"
      third:
        needs: second
        steps:
          - run: echo third-ran >> @TMP@/third-count
"""


@pytest.mark.timeout(90)
def test_kill_9_then_resume(faena, pipeline):
    pipeline(KILLED)
    proc, sleep_pid = _start_and_wait_for_pid(faena)
    assert (faena.tmp / "first-count").read_text().split() == ["ran"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    run = faena.last_run()
    run_id = run["run_id"]
    assert run["state"] in ("PENDING", "RUNNING"), run
    assert run["interrupted"] is True
    table = faena("runs")
    assert "interrupted" in table.stdout and "resume" in table.stdout

    result = faena("resume", run_id, timeout=45)
    assert result.returncode == 0, result.stdout + result.stderr

    # The finished job did not run again; the interrupted one did; the rest followed.
    assert (faena.tmp / "first-count").read_text().split() == ["ran"]
    assert (faena.tmp / "second-count").read_text().strip() == "2"
    assert (faena.tmp / "third-count").read_text().split() == ["third-ran"]

    # The killed run's sleeping process does not outlive the resume.
    assert faena.wait_for(lambda: not faena.pid_alive(sleep_pid), timeout=5), (
        f"the killed run's step process {sleep_pid} is still running after resume"
    )

    after = faena.last_run()
    assert after["run_id"] == run_id
    assert after["state"] == "SUCCEEDED"
    assert after["interrupted"] is False
    logs = faena("logs", run_id, "second")
    assert "second run 2" in logs.stdout
    assert len(faena.runs()) == 1


@pytest.mark.timeout(90)
def test_resume_last_after_kill_9(faena, pipeline):
    pipeline(KILLED)
    proc, _ = _start_and_wait_for_pid(faena)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    result = faena("resume", "last", "--json", timeout=45)
    assert result.returncode == 0, result.stdout + result.stderr
    final = faena.json_lines(result.stdout)[-1]
    assert final["type"] == "result"
    assert final["state"] == "SUCCEEDED"
    assert (faena.tmp / "first-count").read_text().split() == ["ran"]


STUBBORN = """
    jobs:
      stubborn:
        steps:
          - run: |
              n=$(cat @TMP@/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > @TMP@/count
              if [ "$n" -eq 1 ]; then
                trap '' TERM
                sh -c 'trap "" TERM; echo $$ > @TMP@/deaf.pid; while true; do sleep 0.2; done' &
                setsid sh -c 'echo $$ > @TMP@/escaped.pid; exec sleep 30' &
                echo $! > @TMP@/sleep.pid
                wait
              fi
              echo "attempt $n done"
"""


def _stubborn_pids(faena) -> list[int]:
    for name in ("deaf.pid", "escaped.pid"):
        faena.watch_pid_file(faena.tmp / name)
    assert faena.wait_for(
        lambda: all(faena.read_pid(faena.tmp / n) for n in ("deaf.pid", "escaped.pid"))
    )
    pids = [faena.read_pid(faena.tmp / n) for n in ("deaf.pid", "escaped.pid", "sleep.pid")]
    assert all(pids)
    return [p for p in pids if p is not None]


@pytest.mark.timeout(90)
def test_sigint_kills_step_processes_that_ignore_sigterm_or_escape_the_group(faena, pipeline):
    pipeline(STUBBORN)
    proc, _ = _start_and_wait_for_pid(faena)
    pids = _stubborn_pids(faena)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 130, out + err
    for pid in pids:
        assert faena.wait_for(lambda pid=pid: not faena.pid_alive(pid), timeout=5), (
            f"process {pid} of the cancelled step is still running"
        )
    assert faena.last_run()["state"] == "CANCELLED"


@pytest.mark.timeout(90)
def test_resume_kills_escaped_processes_of_the_killed_run(faena, pipeline):
    pipeline(STUBBORN)
    proc, _ = _start_and_wait_for_pid(faena)
    pids = _stubborn_pids(faena)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    result = faena("resume", "last", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (faena.tmp / "count").read_text().strip() == "2"
    for pid in pids:
        assert faena.wait_for(lambda pid=pid: not faena.pid_alive(pid), timeout=5), (
            f"process {pid} of the killed run is still running after resume"
        )
    assert faena.last_run()["state"] == "SUCCEEDED"
