"""Runs through the whole embedded system: orchestrator, scheduler, agent, local workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from embedded_harness import Harness, normalise

from faena.app import App
from faena.domain.run import rebuild
from faena.domain.states import JobState, RunState, StepState
from faena.settings import Settings
from faena.workers.port import ProviderError
from faena.workers.providers.local import LocalProvider


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_dag_respects_needs_and_passes_outputs(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  a:
    outputs: [version]
    steps:
      - run: echo "version=1.2.3" >> "$FAENA_OUTPUT"
  b:
    needs: a
    steps:
      - run: echo "got ${{ needs.a.outputs.version }}"
  c:
    needs: [a, b]
    steps:
      - run: test "${{ needs.b.result }}" = success
"""
    )
    assert run.state is RunState.SUCCEEDED
    assert harness.job(run, "a").outputs == {"version": "1.2.3"}
    assert "got 1.2.3" in await harness.logs(run, "b")
    order = [
        (e.subject, e.payload["job_id"])
        for e in harness.events
        if e.subject in ("ci.job.v1.started", "ci.job.v1.completed")
    ]
    ids = {j.name: j.job_id for j in run.jobs.values()}
    assert order.index(("ci.job.v1.completed", ids["a"])) < order.index(
        ("ci.job.v1.started", ids["b"])
    )
    assert order.index(("ci.job.v1.completed", ids["b"])) < order.index(
        ("ci.job.v1.started", ids["c"])
    )


async def test_failure_skips_dependents_but_runs_failure_handlers(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  build:
    steps:
      - run: echo compiling; echo "boom" >&2; exit 3
      - name: never
        run: echo never
      - name: report
        if: failure()
        run: echo reporting
  deploy:
    needs: build
    steps: [{run: echo deploying}]
  notify:
    needs: build
    if: failure()
    steps:
      - run: echo "build was ${{ needs.build.result }}"
  cleanup:
    needs: deploy
    if: always()
    steps: [{run: echo cleaning}]
"""
    )
    assert run.state is RunState.FAILED
    build = harness.job(run, "build")
    assert build.state is JobState.FAILED
    assert [s.state for s in build.steps] == [
        StepState.FAILED,
        StepState.SKIPPED,
        StepState.SUCCEEDED,
    ]
    assert build.steps[0].exit_code == 3
    assert harness.job(run, "deploy").state is JobState.SKIPPED
    assert harness.job(run, "notify").state is JobState.SUCCEEDED
    assert "build was failure" in await harness.logs(run, "notify")
    assert harness.job(run, "cleanup").state is JobState.SUCCEEDED
    logs = await harness.logs(run, "build")
    assert "boom" in logs and "reporting" in logs and "never" not in logs


async def test_step_retry_keeps_the_job_running(harness: Harness, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    run = await harness.run(
        f"""
jobs:
  flaky:
    steps:
      - run: |
          n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
          test $n -ge 3
        retry: {{max_attempts: 3, backoff: exponential, delay: 10ms}}
"""
    )
    assert run.state is RunState.SUCCEEDED
    job = harness.job(run, "flaky")
    assert job.attempt == 1 and job.steps[0].attempt == 3
    subjects = harness.subjects(run.run_id, "ci.step.")
    assert subjects.count("ci.step.v1.failed") == 2
    assert subjects.count("ci.step.v1.completed") == 1
    assert counter.read_text().strip() == "3"


async def test_job_retry_is_a_new_attempt_in_a_fresh_worker(
    harness: Harness, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    run = await harness.run(
        f"""
jobs:
  flaky:
    retry: {{max_attempts: 3, delay: 10ms}}
    steps:
      - run: |
          test ! -e leftover   # each attempt gets an empty workspace
          touch leftover
          n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
          test $n -ge 2
"""
    )
    assert run.state is RunState.SUCCEEDED
    job = harness.job(run, "flaky")
    assert job.attempt == 2 and job.retries_used == 1
    failed = [e for e in harness.events if e.subject == "ci.job.v1.failed"]
    assert failed[0].payload["will_retry"] is True
    requested = [e for e in harness.events if e.subject == "ci.job.v1.requested"]
    assert [e.idempotency_key.rsplit(":", 1)[1] for e in requested] == ["1", "2"]


async def test_job_retry_exhausted_fails(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  bad:
    retry: {max_attempts: 2, backoff: linear, delay: 10ms}
    steps: [{run: exit 1}]
"""
    )
    assert run.state is RunState.FAILED
    job = harness.job(run, "bad")
    assert job.state is JobState.FAILED and job.attempt == 2
    assert job.error_code == "EXEC-FAILED"


async def test_continue_on_error(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  lenient:
    steps:
      - run: exit 1
        continue-on-error: true
      - run: echo after
  optional:
    continue-on-error: true
    steps: [{run: exit 1}]
  after:
    needs: optional
    steps: [{run: echo ran}]
"""
    )
    assert run.state is RunState.SUCCEEDED
    lenient = harness.job(run, "lenient")
    assert lenient.state is JobState.SUCCEEDED
    assert lenient.steps[0].state is StepState.FAILED
    assert lenient.steps[0].continue_on_error
    assert harness.job(run, "optional").state is JobState.FAILED
    assert harness.job(run, "after").state is JobState.SUCCEEDED


async def test_step_and_job_timeouts_kill_the_process_tree(
    harness: Harness, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    run = await harness.run(
        f"""
jobs:
  step-timeout:
    steps:
      - run: (sleep 300 & echo $! >> {pids}; wait)
        timeout: 300ms
  job-timeout:
    timeout: 500ms
    steps:
      - run: echo first
      - run: (sleep 300 & echo $! >> {pids}; wait)
      - run: echo never
"""
    )
    assert run.state is RunState.FAILED
    step = harness.job(run, "step-timeout")
    assert step.state is JobState.FAILED and step.error_code == "EXEC-TIMEOUT"
    job = harness.job(run, "job-timeout")
    assert job.state is JobState.FAILED and job.error_code == "EXEC-TIMEOUT"
    assert "job timed out" in (job.message or "")
    assert job.steps[2].state is StepState.SKIPPED
    for pid in map(int, pids.read_text().split()):
        assert not pid_alive(pid), f"sleep {pid} survived the timeout"


async def test_cancel_stops_running_and_queued_jobs(harness: Harness, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    run_id = await harness.submit(
        f"""
jobs:
  long:
    steps:
      - run: echo $$ > {pid_file}; sleep 300
      - name: cleanup
        if: cancelled()
        run: echo cleaning up
  later:
    needs: long
    steps: [{{run: echo never}}]
"""
    )
    async with asyncio.timeout(20):
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.02)
    await harness.app.orchestrator.cancel(run_id)
    await harness.app.orchestrator.cancel(run_id)  # idempotent
    async with asyncio.timeout(20):
        run = await harness.app.orchestrator.wait(run_id)
    assert run.state is RunState.CANCELLED
    long = harness.job(run, "long")
    assert long.state is JobState.CANCELLED
    assert long.steps[0].state is StepState.CANCELLED
    assert long.steps[1].state is StepState.SUCCEEDED
    assert harness.job(run, "later").state is JobState.CANCELLED
    assert not pid_alive(int(pid_file.read_text()))


async def test_static_matrix_fail_fast_and_max_parallel(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  test:
    strategy:
      fail-fast: true
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    steps:
      - run: test ${{ matrix.n }} -ne 2
"""
    )
    assert run.state is RunState.FAILED
    states = {j.name: j.state for j in run.jobs.values()}
    assert states == {
        "test (n=1)": JobState.SUCCEEDED,
        "test (n=2)": JobState.FAILED,
        "test (n=3)": JobState.CANCELLED,
    }
    running = 0
    for e in harness.events:
        if e.subject == "ci.job.v1.started":
            running += 1
            assert running <= 1, "max-parallel: 1 ran two jobs at once"
        elif e.subject in ("ci.job.v1.completed", "ci.job.v1.failed"):
            running -= 1


async def test_dynamic_matrix_grows_the_graph(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  plan:
    outputs: [targets]
    steps:
      - run: echo 'targets={"target":["linux","mac"]}' >> "$FAENA_OUTPUT"
  build:
    needs: plan
    strategy:
      matrix: ${{ fromJSON(needs.plan.outputs.targets) }}
    steps:
      - run: echo "building ${{ matrix.target }}"
  ship:
    needs: build
    steps: [{run: echo shipping}]
"""
    )
    assert run.state is RunState.SUCCEEDED, [(j.name, j.message) for j in run.jobs.values()]
    names = [j.name for j in run.jobs.values()]
    assert "build (target=linux)" in names and "build (target=mac)" in names
    assert "building mac" in await harness.logs(run, "build (target=mac)")
    assert "ci.job.v1.expanded" in harness.subjects(run.run_id)
    assert harness.job(run, "ship").state is JobState.SUCCEEDED


async def test_projection_rebuilt_from_the_event_log_is_identical(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  a:
    strategy: {matrix: {x: [1, 2]}}
    steps: [{run: "true"}, {run: "false", continue-on-error: true}]
  b:
    needs: a
    retry: {max_attempts: 2, delay: 0s}
    steps: [{run: exit 1}]
  c:
    needs: b
    steps: [{run: "true"}]
"""
    )
    stored = await harness.app.store.get_run(run.run_id)
    events = [s.event for s in await harness.app.store.run_events(run.run_id)]
    rebuilt = rebuild(run.run_id, events)
    expected = rebuilt.to_row()
    expected["jobs"] = [
        {**j.to_row(), "run_id": run.run_id, "position": int(j.job_id.rsplit(".", 1)[1])}
        for j in rebuilt.jobs.values()
    ]
    assert stored is not None
    stored_n, expected_n = normalise(stored), normalise(expected)
    for key in set(stored_n) | set(expected_n):
        if key != "jobs":
            assert stored_n.get(key) == expected_n.get(key), key
    for got, want in zip(stored_n["jobs"], expected_n["jobs"], strict=True):
        for key in set(got) | set(want):
            assert got.get(key) == want.get(key), (got["name"], key)
    assert normalise(rebuilt.to_row()) == normalise(run.to_row())


async def test_step_env_working_directory_and_shells(harness: Harness) -> None:
    run = await harness.run(
        """
env: {LEVEL: pipeline, KEEP: p}
jobs:
  envs:
    env: {LEVEL: job}
    steps:
      - env: {LEVEL: step}
        run: test "$LEVEL" = step && test "$KEEP" = p
      - run: test "$LEVEL" = job
      - run: mkdir -p sub && touch sub/here
      - working-directory: sub
        run: test -e here
      - shell: python
        run: |
          import os
          assert os.environ["LEVEL"] == "job"
      - shell: sh
        run: echo "$FAENA_WORKSPACE" | grep -q workspace
"""
    )
    assert run.state is RunState.SUCCEEDED, await harness.logs(run, "envs")


async def test_path_escape_fails_the_step(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  escape:
    steps:
      - working-directory: ../../..
        run: "true"
"""
    )
    assert run.state is RunState.FAILED
    assert harness.job(run, "escape").error_code == "ORC-VALID"


async def test_many_jobs_all_finish(harness: Harness) -> None:
    jobs = "\n".join(f"  j{i}:\n    steps: [{{run: 'true'}}]" for i in range(40))
    run = await harness.run(f"jobs:\n{jobs}\n")
    assert run.state is RunState.SUCCEEDED
    assert len(run.jobs) == 40
    left = [p for p in Path(harness.app.settings.workspaces).iterdir() if p.name != ".trash"]
    assert left == []


async def test_hash_files_reads_the_workspace(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  cache:
    steps:
      - run: mkdir -p deps && echo a > deps/one.lock && echo b > two.lock
      - run: |
          test -n "${{ hashFiles('**/*.lock') }}"
          test "${{ hashFiles('none/*.x') }}" = ""
      - run: echo ${{ hashFiles('../outside') }}
"""
    )
    job = harness.job(run, "cache")
    assert [s.state for s in job.steps] == [
        StepState.SUCCEEDED,
        StepState.SUCCEEDED,
        StepState.FAILED,
    ]
    assert "must stay inside the workspace" in " ".join(await harness.logs(run, "cache"))


async def test_steps_do_not_inherit_faena_settings(harness: Harness) -> None:
    from faena.app import step_env

    env = step_env({"PATH": "/bin", "FAENA_DATABASE_URL": "postgresql://u:secret@h/db"})
    assert env == {"PATH": "/bin"}
    run = await harness.run(
        """
jobs:
  peek:
    steps:
      - run: env | grep '^FAENA_' | cut -d= -f1 | sort
"""
    )
    names = set(await harness.logs(run, "peek"))
    assert "FAENA_DATABASE_URL" not in names and "FAENA_HOME" not in names
    assert {"FAENA_WORKSPACE", "FAENA_OUTPUT", "FAENA_RUN_ID"} <= names


class BrokenProvider:
    """A provider whose exec hits a bug (not a ProviderError) or whose create fails."""

    name = "broken"
    enforces: frozenset[str] = frozenset()

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner = inner
        self.mode = mode
        self.creates = 0

    async def create(self, request: Any) -> Any:
        self.creates += 1
        if self.mode == "create":
            raise ProviderError("no capacity on the host")
        return await self.inner.create(request)

    async def exec(self, worker: Any, request: Any, sink: Any) -> Any:
        raise RuntimeError("provider bug")

    async def cancel(self, worker: Any, exec_id: str) -> None:
        await self.inner.cancel(worker, exec_id)

    async def destroy(self, worker: Any, keep_for: float | None = None) -> None:
        await self.inner.destroy(worker, keep_for)


async def run_with(tmp_path: Path, mode: str) -> tuple[Any, BrokenProvider]:
    broken = BrokenProvider(LocalProvider(tmp_path / "workers"), mode)
    app = App(Settings(home=tmp_path / "home", jobs=1), provider=broken)
    await app.start()
    try:
        h = Harness(app, tmp_path)
        run = await h.run("jobs:\n  a:\n    steps: [{run: 'true'}]\n", timeout=30)
        return run, broken
    finally:
        await app.close()


async def test_an_agent_bug_fails_the_job_instead_of_hanging(tmp_path: Path) -> None:
    run, _ = await run_with(tmp_path, "exec")
    job = next(iter(run.jobs.values()))
    assert run.state is RunState.FAILED
    assert job.state is JobState.FAILED


async def test_provider_errors_are_retried_by_the_platform_then_fail(tmp_path: Path) -> None:
    run, broken = await run_with(tmp_path, "create")
    job = next(iter(run.jobs.values()))
    assert job.state is JobState.FAILED and job.error_code == "WKM-PROV"
    assert broken.creates == 4  # first try + 3 platform retries; no job retry configured
    assert job.retries_used == 0


async def test_retry_back_off_ends_at_the_job_timeout(harness: Harness) -> None:
    run = await harness.run(
        """
jobs:
  slow-retry:
    timeout: 1s
    steps:
      - run: exit 1
        retry: {max_attempts: 5, delay: 1h}
"""
    )
    job = harness.job(run, "slow-retry")
    assert job.state is JobState.FAILED and job.error_code == "EXEC-TIMEOUT"
    assert job.steps[0].attempt == 1


async def test_cancel_ends_a_retry_back_off(harness: Harness) -> None:
    run_id = await harness.submit(
        """
jobs:
  waiting:
    steps:
      - run: exit 1
        retry: {max_attempts: 3, delay: 1h}
"""
    )
    async with asyncio.timeout(20):
        while not any(
            e.subject == "ci.step.v1.failed" and e.correlation_id == run_id for e in harness.events
        ):
            await asyncio.sleep(0.02)
    await harness.app.orchestrator.cancel(run_id)
    async with asyncio.timeout(20):
        run = await harness.app.orchestrator.wait(run_id)
    assert run.state is RunState.CANCELLED
    assert harness.job(run, "waiting").state is JobState.CANCELLED


async def test_output_is_recorded_while_a_step_is_silent(harness: Harness) -> None:
    run_id = await harness.submit(
        """
jobs:
  quiet:
    steps:
      - run: echo "line one"; sleep 30
"""
    )
    run = harness.app.orchestrator.snapshot(run_id)
    assert run is not None
    job_id = next(iter(run.jobs))
    async with asyncio.timeout(20):
        while not [
            ln for ln in await harness.app.store.read_logs(run_id, job_id) if ln.text == "line one"
        ]:
            await asyncio.sleep(0.05)
    await harness.app.orchestrator.cancel(run_id)
    async with asyncio.timeout(20):
        await harness.app.orchestrator.wait(run_id)
