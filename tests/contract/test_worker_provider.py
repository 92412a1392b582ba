"""Contract suite for the WorkerProvider port: every adapter must pass all of it.

To add an adapter, write a ``Harness`` for it and add one entry to ``HARNESSES``. A harness
builds providers and lets the suite look at what the port hides: which processes still carry
a worker's id, and whether a worker's workspace still exists.

Timeouts here (``GUARD``) only stop a broken provider from hanging the suite; no test
asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from kubernetes_harness import KubernetesHarness

from components import missing
from docker_env import TOOLS_IMAGE, remove_containers, require_docker
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputLine,
    PathEscapeError,
    ProviderError,
    Stream,
    Worker,
    WorkerProvider,
    WorkerRequest,
)
from faena.workers.providers.docker import DockerProvider
from faena.workers.providers.local import LocalProvider, kill_worker_processes
from faena.workers.resilient import ResilientProvider
from process_probe import innermost_pid, processes_with_env

T = TypeVar("T")

GUARD = 60.0
KILL_GRACE = 1.0
MAX_LINE_BYTES = 64 * 1024
SKIP = 99  # a step exits with this when the worker lacks a tool the test needs


class Harness(Protocol):
    """An adapter under test, plus the probes the contract needs."""

    def provider(self, *, keep_workspace: bool = False) -> WorkerProvider:
        """A provider with a short kill grace, so tests that need SIGKILL stay quick."""
        ...

    def broken_provider(self) -> WorkerProvider:
        """A provider whose ``create`` fails with ProviderError (broken infrastructure)."""
        ...

    def live_processes(self, worker_id: str) -> list[int]:
        """Pids of live processes whose environment has FAENA_WORKER_ID=worker_id."""
        ...

    def workspace_exists(self, worker: Worker) -> bool:
        """Whether the worker's workspace is still there."""
        ...

    def cleanup(self, worker_id: str) -> None:
        """Last resort after a test, so a failing test does not leak processes."""
        ...


class LocalHarness:
    """LocalProvider under a temp root; processes found through /proc."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._root = tmp_path / "workers"

    def provider(self, *, keep_workspace: bool = False) -> WorkerProvider:
        return LocalProvider(self._root, keep_workspace=keep_workspace, kill_grace=KILL_GRACE)

    def broken_provider(self) -> WorkerProvider:
        blocker = self._tmp_path / "not-a-directory"
        blocker.write_text("")
        return LocalProvider(blocker, kill_grace=KILL_GRACE)

    def live_processes(self, worker_id: str) -> list[int]:
        if not Path("/proc/self/environ").exists():
            missing("needs /proc to find a worker's processes")
        return processes_with_env(f"FAENA_WORKER_ID={worker_id}")

    def workspace_exists(self, worker: Worker) -> bool:
        return Path(worker.workspace).exists()

    def cleanup(self, worker_id: str) -> None:
        kill_worker_processes(worker_id, grace=0.5)


class DockerHarness:
    """DockerProvider against the real daemon, in the busybox + bash + python3 test image.

    Steps run in containers of this host's kernel, so their processes (which carry
    FAENA_WORKER_ID) are found through this host's /proc as the local provider's are.
    """

    def __init__(self, tmp_path: Path) -> None:
        require_docker()
        self._tmp_path = tmp_path
        self._root = tmp_path / "workers"
        self.owner = f"test-{uuid.uuid4().hex[:8]}"

    def provider(self, *, keep_workspace: bool = False) -> WorkerProvider:
        return DockerProvider(
            self._root,
            image=TOOLS_IMAGE,
            owner=self.owner,
            network="none",
            keep_workspace=keep_workspace,
            kill_grace=KILL_GRACE,
        )

    def broken_provider(self) -> WorkerProvider:
        return DockerProvider(
            self._root, image=TOOLS_IMAGE, owner=self.owner, url="unix:///nonexistent.sock"
        )

    def live_processes(self, worker_id: str) -> list[int]:
        # As the steps see them ($$ in a container is its pid namespace's number).
        return [innermost_pid(p) for p in processes_with_env(f"FAENA_WORKER_ID={worker_id}")]

    def workspace_exists(self, worker: Worker) -> bool:
        return Path(worker.workspace).exists()

    def cleanup(self, worker_id: str) -> None:
        remove_containers(f"faena.worker={worker_id}")


class ResilientLocalHarness(LocalHarness):
    """LocalProvider behind a ResilientProvider: timeouts, retries and a breaker change
    nothing the port promises (quick back-off, so the broken provider fails soon)."""

    def provider(self, *, keep_workspace: bool = False) -> WorkerProvider:
        return ResilientProvider(super().provider(keep_workspace=keep_workspace),
                                 backoff_base=0.01)  # fmt: skip

    def broken_provider(self) -> WorkerProvider:
        return ResilientProvider(super().broken_provider(), backoff_base=0.01)


HARNESSES: dict[str, Callable[[Path], Harness]] = {
    "local": LocalHarness,
    "docker": DockerHarness,
    "resilient-local": ResilientLocalHarness,
    "kubernetes": KubernetesHarness,
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=[pytest.param(name, id=name) for name in HARNESSES])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    factory = HARNESSES[request.param]
    return factory(tmp_path)


@pytest.fixture
def provider(harness: Harness) -> WorkerProvider:
    return harness.provider()


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(harness: Harness, provider: WorkerProvider) -> AsyncIterator[WorkerFactory]:
    """Create workers that are destroyed (and swept) after the test, whatever happened."""
    made: list[tuple[WorkerProvider, Worker]] = []

    async def make(using: WorkerProvider | None = None, worker_id: str | None = None) -> Worker:
        chosen = using or provider
        request = WorkerRequest(worker_id=worker_id or new_id(), run_id="run-1", job_id="job-1")
        worker = await guard(chosen.create(request))
        made.append((chosen, worker))
        return worker

    yield make
    for chosen, worker in made:
        try:
            await guard(chosen.destroy(worker))
        finally:
            harness.cleanup(worker.worker_id)


@pytest.fixture
async def worker(make_worker: WorkerFactory) -> Worker:
    return await make_worker()


# --------------------------------------------------------------------------- helpers

_exec_ids = itertools.count(1)


def new_id() -> str:
    return f"w-{uuid.uuid4().hex[:12]}"


async def guard(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, GUARD)


class Sink:
    """Collects output lines, as an agent's sink would."""

    def __init__(self) -> None:
        self.lines: list[OutputLine] = []

    async def __call__(self, line: OutputLine) -> None:
        self.lines.append(line)

    def texts(self, stream: Stream = "stdout") -> list[str]:
        return [line.text for line in self.lines if line.stream == stream]


async def run(
    provider: WorkerProvider, worker: Worker, script: str, **options: Any
) -> tuple[ExecResult, Sink]:
    sink = Sink()
    request = ExecRequest(exec_id=f"step-{next(_exec_ids)}", script=script, **options)
    result = await guard(provider.exec(worker, request, sink))
    return result, sink


async def stdout_of(provider: WorkerProvider, worker: Worker, script: str) -> list[str]:
    result, sink = await run(provider, worker, script)
    assert result.exit_code == 0, sink.lines
    return sink.texts()


def skip_if_missing_tool(result: ExecResult, tool: str) -> None:
    if result.exit_code == SKIP:
        missing(f"the worker has no {tool}")


# --------------------------------------------------------------------------- lifecycle


async def test_create_exec_destroy_lifecycle(harness: Harness, provider: WorkerProvider) -> None:
    request = WorkerRequest(worker_id=new_id(), run_id="run-1", job_id="job-1")
    worker = await guard(provider.create(request))
    try:
        assert worker.worker_id == request.worker_id
        assert worker.provider == provider.name
        assert harness.workspace_exists(worker)

        result, sink = await run(provider, worker, "echo hello")

        assert result.exit_code == 0
        assert not result.timed_out
        assert not result.cancelled
        assert result.duration_ms >= 0
        assert [(line.stream, line.text) for line in sink.lines] == [("stdout", "hello")]
    finally:
        await guard(provider.destroy(worker))
    assert not harness.workspace_exists(worker)
    assert harness.live_processes(worker.worker_id) == []


async def test_create_is_idempotent(provider: WorkerProvider, make_worker: WorkerFactory) -> None:
    first = await make_worker()
    await stdout_of(provider, first, "echo data > kept.txt")

    again = await make_worker(worker_id=first.worker_id)

    assert again == first
    assert await stdout_of(provider, again, "cat kept.txt") == ["data"]


async def test_workspace_starts_empty(provider: WorkerProvider, worker: Worker) -> None:
    assert await stdout_of(provider, worker, "ls -A | wc -l | tr -d ' '") == ["0"]


async def test_destroy_twice_is_fine(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    await guard(provider.destroy(worker))
    await guard(provider.destroy(worker))
    assert not harness.workspace_exists(worker)


async def test_destroy_without_create_is_fine(provider: WorkerProvider) -> None:
    never_created = Worker(worker_id=new_id(), provider=provider.name, workspace="/nonexistent")
    await guard(provider.destroy(never_created))
    await guard(provider.destroy(never_created))


async def test_destroy_after_failed_create_is_fine(harness: Harness) -> None:
    broken = harness.broken_provider()
    request = WorkerRequest(worker_id=new_id(), run_id="run-1", job_id="job-1")
    with pytest.raises(ProviderError):
        await guard(broken.create(request))

    half_made = Worker(worker_id=request.worker_id, provider=broken.name, workspace="")
    await guard(broken.destroy(half_made))
    await guard(broken.destroy(half_made))


async def test_workspace_is_kept_after_destroy_when_asked(
    harness: Harness, make_worker: WorkerFactory
) -> None:
    keeping = harness.provider(keep_workspace=True)
    worker = await make_worker(keeping)
    await stdout_of(keeping, worker, "echo kept > result.txt\nsleep 1000 &")

    await guard(keeping.destroy(worker))

    assert harness.workspace_exists(worker)
    assert harness.live_processes(worker.worker_id) == []


async def test_exec_after_destroy_raises_provider_error(
    provider: WorkerProvider, worker: Worker
) -> None:
    await guard(provider.destroy(worker))
    with pytest.raises(ProviderError):
        await run(provider, worker, "echo too late")


# --------------------------------------------------------------------------- output


async def test_stdout_and_stderr_arrive_in_order_with_timestamps(
    provider: WorkerProvider, worker: Worker
) -> None:
    script = "\n".join(f"echo out{i}\necho err{i} >&2" for i in range(50))
    before = time.time()
    result, sink = await run(provider, worker, script)
    after = time.time()

    assert result.exit_code == 0
    assert sink.texts("stdout") == [f"out{i}" for i in range(50)]
    assert sink.texts("stderr") == [f"err{i}" for i in range(50)]
    for stream in ("stdout", "stderr"):
        stamps = [line.ts for line in sink.lines if line.stream == stream]
        assert stamps == sorted(stamps)
        # Epoch seconds, taken while the step ran (slack only for clock granularity).
        assert before - 1 <= stamps[0] and stamps[-1] <= after + 1


async def test_big_output_arrives_complete(provider: WorkerProvider, worker: Worker) -> None:
    result, sink = await run(provider, worker, "seq 1 20000\nseq 1 20000 >&2")

    expected = [str(i) for i in range(1, 20001)]
    assert result.exit_code == 0
    assert sink.texts("stdout") == expected
    assert sink.texts("stderr") == expected


async def test_line_longer_than_64_kib_is_split(provider: WorkerProvider, worker: Worker) -> None:
    script = "head -c 100000 /dev/zero | tr '\\0' x\necho\necho after"
    texts = await stdout_of(provider, worker, script)

    pieces, last = texts[:-1], texts[-1]
    assert last == "after"
    assert len(pieces) >= 2
    assert all(len(piece.encode()) <= MAX_LINE_BYTES for piece in pieces)
    assert "".join(pieces) == "x" * 100_000


async def test_split_never_cuts_a_utf8_character(provider: WorkerProvider, worker: Worker) -> None:
    # 1 + 2**16 two-byte characters: a cut at 64 KiB would land inside one.
    script = 's=é; i=0\nwhile [ $i -lt 16 ]; do s="$s$s"; i=$((i+1)); done\nprintf "x%s\\n" "$s"'
    texts = await stdout_of(provider, worker, script)

    assert len(texts) >= 3
    assert all(len(piece.encode()) <= MAX_LINE_BYTES for piece in texts)
    assert "".join(texts) == "x" + "é" * 2**16


async def test_invalid_utf8_is_replaced_not_fatal(provider: WorkerProvider, worker: Worker) -> None:
    texts = await stdout_of(provider, worker, "printf 'ok\\377\\376end\\n'\necho next")
    assert texts == ["ok\ufffd\ufffdend", "next"]


async def test_crlf_and_missing_final_newline(provider: WorkerProvider, worker: Worker) -> None:
    texts = await stdout_of(provider, worker, "printf 'crlf\\r\\nplain\\nno newline'")
    assert texts == ["crlf", "plain", "no newline"]


async def test_stdin_is_empty(provider: WorkerProvider, worker: Worker) -> None:
    texts = await stdout_of(provider, worker, "cat\nif read line; then echo got; else echo eof; fi")
    assert texts == ["eof"]


async def test_sink_error_propagates_and_kills_the_step(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    async def broken_sink(line: OutputLine) -> None:
        raise RuntimeError("sink is gone")

    request = ExecRequest(exec_id="broken-sink", script="echo first\nsleep 1000")
    with pytest.raises(RuntimeError, match="sink is gone"):
        await guard(provider.exec(worker, request, broken_sink))
    assert await eventually(lambda: harness.live_processes(worker.worker_id) == [])


async def eventually(condition: Callable[[], bool]) -> bool:
    """Poll for things the kernel does asynchronously (SIGKILL, execve) without timing them."""
    for _ in range(600):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("script", "exit_code"),
    [
        pytest.param("exit 0", 0, id="zero"),
        pytest.param("exit 3", 3, id="three"),
        pytest.param("echo before\nfalse\necho after", 1, id="errexit"),
        pytest.param("kill -TERM $$", 128 + signal.SIGTERM, id="sigterm"),
        pytest.param("kill -KILL $$", 128 + signal.SIGKILL, id="sigkill"),
    ],
)
async def test_exit_codes(
    provider: WorkerProvider, worker: Worker, script: str, exit_code: int
) -> None:
    result, sink = await run(provider, worker, script)
    assert result.exit_code == exit_code
    assert "after" not in sink.texts()


# --------------------------------------------------------------------------- shells


@pytest.mark.parametrize(
    ("shell", "script", "expected"),
    [
        pytest.param(None, "echo default", ["default"], id="default"),
        pytest.param("bash", 'echo "${BASH_VERSION:+bash}"', ["bash"], id="bash"),
        pytest.param("sh", "echo sh", ["sh"], id="sh"),
        pytest.param("python", "import sys\nprint('py', sys.version_info[0])", ["py 3"], id="py"),
        pytest.param("sh -e {0}", "echo custom", ["custom"], id="template"),
        pytest.param("sh -c 'echo wrapped; . {0}'", "echo inner", ["wrapped", "inner"], id="token"),
        pytest.param("cat", "shown as is", ["shown as is"], id="bare-command"),
    ],
)
async def test_shells(
    provider: WorkerProvider, worker: Worker, shell: str | None, script: str, expected: list[str]
) -> None:
    result, sink = await run(provider, worker, script, shell=shell)
    assert result.exit_code == 0, sink.lines
    assert sink.texts() == expected


async def test_bash_uses_pipefail(provider: WorkerProvider, worker: Worker) -> None:
    result, sink = await run(provider, worker, "false | true\necho unreachable", shell="bash")
    assert result.exit_code == 1
    assert sink.texts() == []


async def test_sh_uses_errexit(provider: WorkerProvider, worker: Worker) -> None:
    result, sink = await run(provider, worker, "false\necho unreachable", shell="sh")
    assert result.exit_code == 1
    assert sink.texts() == []


async def test_missing_shell_fails_the_step_with_127(
    provider: WorkerProvider, worker: Worker
) -> None:
    result, sink = await run(provider, worker, "echo never", shell="no-such-shell-xyz")
    assert result.exit_code == 127
    assert any("no-such-shell-xyz" in text for text in sink.texts("stderr"))
    assert sink.texts() == []


# --------------------------------------------------------------------------- environment


async def test_env_is_passed_with_faena_variables(provider: WorkerProvider, worker: Worker) -> None:
    script = f"""
echo "$GREETING"
echo "$FAENA_WORKER_ID"
test "$FAENA_WORKSPACE" = '{worker.workspace}' && echo workspace-ok
test -f "$FAENA_OUTPUT" && test ! -s "$FAENA_OUTPUT" && echo output-empty
case "$FAENA_OUTPUT" in "$FAENA_WORKSPACE"/*) echo output-inside;; *) echo output-outside;; esac
"""
    # The worker id cannot be overridden: destroy finds a worker's processes by it.
    env = {"GREETING": "hola mundo", "FAENA_WORKER_ID": "spoofed"}
    result, sink = await run(provider, worker, script, env=env)

    assert result.exit_code == 0, sink.lines
    assert sink.texts() == [
        "hola mundo",
        worker.worker_id,
        "workspace-ok",
        "output-empty",
        "output-outside",
    ]


# --------------------------------------------------------------------------- working directory

AT = 'test "$(pwd -P)" = "$(cd "$FAENA_WORKSPACE" && pwd -P){suffix}" && echo here'


async def test_default_working_directory_is_the_workspace(
    provider: WorkerProvider, worker: Worker
) -> None:
    assert await stdout_of(provider, worker, AT.format(suffix="")) == ["here"]


@pytest.mark.parametrize(
    ("working_directory", "suffix"),
    [
        pytest.param(".", "", id="dot"),
        pytest.param("sub/dir", "/sub/dir", id="created"),
        pytest.param("a/../b", "/b", id="dotdot-inside"),
    ],
)
async def test_working_directory_inside_the_workspace(
    provider: WorkerProvider, worker: Worker, working_directory: str, suffix: str
) -> None:
    script = AT.format(suffix=suffix)
    result, sink = await run(provider, worker, script, working_directory=working_directory)
    assert result.exit_code == 0, sink.lines
    assert sink.texts() == ["here"]


async def test_absolute_working_directory_inside_the_workspace(
    provider: WorkerProvider, worker: Worker
) -> None:
    inside = f"{worker.workspace}/abs"
    result, sink = await run(provider, worker, AT.format(suffix="/abs"), working_directory=inside)
    assert result.exit_code == 0, sink.lines
    assert sink.texts() == ["here"]


@pytest.mark.parametrize(
    "working_directory",
    ["..", "../..", "sub/../../..", "/", "/etc", "/tmp/elsewhere"],
)
async def test_working_directory_escape_raises(
    provider: WorkerProvider, worker: Worker, working_directory: str
) -> None:
    with pytest.raises(PathEscapeError):
        await run(
            provider, worker, 'touch "$FAENA_WORKSPACE/ran"', working_directory=working_directory
        )
    assert await stdout_of(provider, worker, "test -e ran && echo ran || echo not-run") == [
        "not-run"
    ]


async def test_symlink_out_of_the_workspace_is_an_escape(
    provider: WorkerProvider, worker: Worker
) -> None:
    await stdout_of(provider, worker, "ln -s / outside\nmkdir real\nln -s real inside")

    for escape in ("outside", "outside/tmp", "inside/../outside"):
        with pytest.raises(PathEscapeError):
            await run(provider, worker, "echo never", working_directory=escape)
    result, sink = await run(
        provider, worker, AT.format(suffix="/real"), working_directory="inside"
    )
    assert sink.texts() == ["here"]
    assert result.exit_code == 0


# --------------------------------------------------------------------------- outputs


async def test_outputs_single_and_multiline(provider: WorkerProvider, worker: Worker) -> None:
    script = """
echo "single=hello world" >> "$FAENA_OUTPUT"
{
  echo "multi<<EOF"
  echo "line 1"
  echo ""
  echo "line 3"
  echo "EOF"
} >> "$FAENA_OUTPUT"
"""
    result, _ = await run(provider, worker, script)
    assert result.exit_code == 0
    assert result.outputs == {"single": "hello world", "multi": "line 1\n\nline 3"}


async def test_each_exec_gets_a_fresh_output_file(provider: WorkerProvider, worker: Worker) -> None:
    first, _ = await run(
        provider, worker, 'echo a=1 >> "$FAENA_OUTPUT"\necho "$FAENA_OUTPUT" > path'
    )
    second, sink = await run(
        provider,
        worker,
        'test ! -s "$FAENA_OUTPUT" && echo fresh\n'
        'test "$FAENA_OUTPUT" != "$(cat path)" && echo other',
    )
    assert first.outputs == {"a": "1"}
    assert second.outputs == {}
    assert sink.texts() == ["fresh", "other"]


async def test_malformed_outputs_fail_a_successful_step(
    provider: WorkerProvider, worker: Worker
) -> None:
    result, sink = await run(provider, worker, 'echo "not an output" >> "$FAENA_OUTPUT"')
    assert result.exit_code == 1
    assert result.outputs == {}
    assert any("FAENA_OUTPUT" in text for text in sink.texts("stderr"))


async def test_malformed_outputs_keep_a_failed_steps_exit_code(
    provider: WorkerProvider, worker: Worker
) -> None:
    script = 'printf "body<<EOF\\nunterminated\\n" >> "$FAENA_OUTPUT"\nexit 3'
    result, sink = await run(provider, worker, script)
    assert result.exit_code == 3
    assert any("FAENA_OUTPUT" in text for text in sink.texts("stderr"))


# --------------------------------------------------------------------------- timeout and cancel

TREE = """
sleep 1000 &
echo $! >> pids
( sleep 1000 & echo $! >> pids; wait ) &
echo $! >> pids
echo ready
sleep 1000
"""


async def test_timeout_kills_the_whole_tree(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    result, sink = await run(provider, worker, TREE, timeout=3.0)

    assert result.timed_out
    assert not result.cancelled
    assert result.exit_code == 124
    assert sink.texts() == ["ready"]
    assert harness.live_processes(worker.worker_id) == []
    assert await stdout_of(provider, worker, "wc -l < pids | tr -d ' '") == ["3"]


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    script = "trap '' TERM\n" + TREE
    result, _ = await run(provider, worker, script, timeout=3.0)

    assert result.timed_out
    assert result.exit_code == 124
    assert harness.live_processes(worker.worker_id) == []


async def test_timeout_kills_processes_that_left_the_process_group(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    # timeout(1) moves itself into a group of its own (same session).
    script = (
        "command -v timeout >/dev/null || exit 99\n"
        "timeout 1000 sleep 1000 &\necho ready\nsleep 1000"
    )
    result, _ = await run(provider, worker, script, timeout=3.0)

    skip_if_missing_tool(result, "timeout")
    assert result.timed_out
    assert harness.live_processes(worker.worker_id) == []


async def test_no_timeout_when_the_step_is_quick(provider: WorkerProvider, worker: Worker) -> None:
    result, _ = await run(provider, worker, "echo quick", timeout=GUARD)
    assert not result.timed_out
    assert result.exit_code == 0


async def test_cancel_from_another_task(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    ready = asyncio.Event()
    sink = Sink()

    async def watching_sink(line: OutputLine) -> None:
        await sink(line)
        if line.text == "ready":
            ready.set()

    request = ExecRequest(exec_id="to-cancel", script=TREE)
    step = asyncio.create_task(provider.exec(worker, request, watching_sink))
    await guard(ready.wait())
    await guard(provider.cancel(worker, "to-cancel"))
    result = await guard(step)

    assert result.cancelled
    assert not result.timed_out
    assert result.exit_code == 130
    assert harness.live_processes(worker.worker_id) == []


async def test_cancel_from_inside_the_sink_does_not_deadlock(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    async def cancelling_sink(line: OutputLine) -> None:
        if line.text == "ready":
            await provider.cancel(worker, "self-cancel")

    request = ExecRequest(exec_id="self-cancel", script=TREE)
    result = await guard(provider.exec(worker, request, cancelling_sink))

    assert result.cancelled
    assert harness.live_processes(worker.worker_id) == []


async def test_cancel_is_a_no_op_when_nothing_runs(
    provider: WorkerProvider, worker: Worker
) -> None:
    await guard(provider.cancel(worker, "never-started"))
    result, _ = await run(provider, worker, "echo done")
    await guard(provider.cancel(worker, "step-already-finished"))
    assert not result.cancelled


# --------------------------------------------------------------------------- background processes


async def test_background_process_survives_between_execs_but_not_destroy(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    await stdout_of(provider, worker, "sleep 1000 &\necho $! > bg.pid")

    alive = await stdout_of(provider, worker, 'kill -0 "$(cat bg.pid)" && echo alive')
    assert alive == ["alive"]
    assert await eventually(lambda: harness.live_processes(worker.worker_id) != [])

    await guard(provider.destroy(worker))
    assert harness.live_processes(worker.worker_id) == []


async def test_background_output_never_blocks_the_process(
    provider: WorkerProvider, worker: Worker
) -> None:
    # Far more than a pipe buffer holds, written after its step has ended.
    line = "background noise " + "." * 80
    script = (
        f"( sleep 0.5; i=0; while [ $i -lt 5000 ]; do echo '{line}'; echo '{line}' >&2;"
        " i=$((i+1)); done; touch bg.done ) &"
    )
    await stdout_of(provider, worker, script)

    wait = "i=0\nwhile [ ! -e bg.done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
    assert await stdout_of(provider, worker, wait + "test -e bg.done && echo finished") == [
        "finished"
    ]


async def test_destroy_kills_a_setsid_escapee(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    script = (
        "command -v setsid >/dev/null || exit 99\n"
        "setsid sh -c 'echo $$ > escapee.pid; exec sleep 1000' &\n"
        "while [ ! -s escapee.pid ]; do sleep 0.05; done"
    )
    result, _ = await run(provider, worker, script)
    skip_if_missing_tool(result, "setsid")
    assert result.exit_code == 0
    escapee = int((await stdout_of(provider, worker, "cat escapee.pid"))[0])
    assert await eventually(lambda: escapee in harness.live_processes(worker.worker_id))

    await guard(provider.destroy(worker))

    assert harness.live_processes(worker.worker_id) == []


async def test_destroy_kills_a_running_exec(
    harness: Harness, provider: WorkerProvider, worker: Worker
) -> None:
    ready = asyncio.Event()

    async def sink(line: OutputLine) -> None:
        if line.text == "ready":
            ready.set()

    step = asyncio.create_task(provider.exec(worker, ExecRequest("running", TREE), sink))
    await guard(ready.wait())
    await guard(provider.destroy(worker))
    result = await guard(step)

    assert result.exit_code != 0
    assert harness.live_processes(worker.worker_id) == []


# ------------------------------------------------------------------------ LocalProvider specifics
# Behaviour of the local adapter that other adapters configure differently.


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    return tmp_path / "local-workers"


async def local_worker(local: LocalProvider) -> Worker:
    return await guard(local.create(WorkerRequest(worker_id=new_id(), run_id="r", job_id="j")))


async def test_local_worker_info_and_private_temp_dir(local_root: Path) -> None:
    local = LocalProvider(local_root, kill_grace=KILL_GRACE)
    worker = await local_worker(local)
    try:
        assert worker.provider == "local"
        assert Path(worker.workspace) == local_root / worker.worker_id / "workspace"
        temp = Path(worker.info["temp"])
        assert Path(worker.workspace) not in temp.parents
        assert await stdout_of(local, worker, f"test -d '{temp}' && echo temp-ok") == ["temp-ok"]
        assert Path(worker.info["root"]) == local_root / worker.worker_id
    finally:
        await guard(local.destroy(worker))
    assert not (local_root / worker.worker_id).exists()


async def test_local_default_shell_is_bash_when_on_path(local_root: Path) -> None:
    if shutil.which("bash") is None:
        missing("no bash")
    local = LocalProvider(local_root, kill_grace=KILL_GRACE)
    worker = await local_worker(local)
    try:
        assert await stdout_of(local, worker, 'echo "${BASH_VERSION:+bash}"') == ["bash"]
    finally:
        await guard(local.destroy(worker))


async def test_local_base_env_replaces_os_environ(local_root: Path) -> None:
    local = LocalProvider(local_root, base_env={"PATH": os.defpath, "ONLY_HERE": "1"})
    worker = await local_worker(local)
    try:
        assert await stdout_of(local, worker, 'echo "${HOME-unset} $ONLY_HERE"') == ["unset 1"]
    finally:
        await guard(local.destroy(worker))


async def test_local_base_env_defaults_to_os_environ_at_exec_time(
    local_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = LocalProvider(local_root)
    worker = await local_worker(local)
    try:
        monkeypatch.setenv("FAENA_TEST_LATE", "late")
        assert await stdout_of(local, worker, 'echo "$FAENA_TEST_LATE"') == ["late"]
    finally:
        await guard(local.destroy(worker))


async def test_local_python_falls_back_to_sys_executable(local_root: Path) -> None:
    empty = local_root.parent / "empty-bin"
    empty.mkdir()
    local = LocalProvider(local_root, base_env={"PATH": str(empty)})
    worker = await local_worker(local)
    try:
        script = "import sys\nprint('fallback')"
        assert await stdout_of_shell(local, worker, script, "python") == ["fallback"]
    finally:
        await guard(local.destroy(worker))


async def test_local_pwsh_invocation(local_root: Path, tmp_path: Path) -> None:
    # PowerShell is not packaged for Debian: a stand-in `pwsh` on PATH checks the command
    # line GitHub uses (`pwsh -command ". '{0}'"`) and runs the script file it names.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pwsh"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "-command" ] || { echo "bad args: $*" >&2; exit 9; }\n'
        'script=$(printf %s "$2" | sed "s/^\\. \'//; s/\'$//")\n'
        'echo "pwsh ran $(basename "$script")"\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    local = LocalProvider(local_root, base_env=env)
    worker = await local_worker(local)
    try:
        lines = await stdout_of_shell(local, worker, "Write-Output 'x'", "pwsh")
        assert len(lines) == 1 and lines[0].startswith("pwsh ran "), lines
    finally:
        await guard(local.destroy(worker))


async def stdout_of_shell(
    provider: WorkerProvider, worker: Worker, script: str, shell: str
) -> list[str]:
    result, sink = await run(provider, worker, script, shell=shell)
    assert result.exit_code == 0, sink.lines
    return sink.texts()


@pytest.mark.parametrize("worker_id", ["", ".", "..", "a/b", "../escape"])
async def test_local_rejects_worker_ids_that_are_not_plain_names(
    local_root: Path, worker_id: str
) -> None:
    local = LocalProvider(local_root)
    with pytest.raises(PathEscapeError):
        await local.create(WorkerRequest(worker_id=worker_id, run_id="r", job_id="j"))


async def test_local_destroy_removes_read_only_directories(local_root: Path) -> None:
    local = LocalProvider(local_root)
    worker = await local_worker(local)
    await stdout_of(local, worker, "mkdir -p cache/mod\ntouch cache/mod/f\nchmod -R a-w cache")
    await guard(local.destroy(worker))
    assert not (local_root / worker.worker_id).exists()


def test_kill_worker_processes_finds_processes_by_environment() -> None:
    if not Path("/proc/self/environ").exists():
        missing("needs /proc")
    worker_id = new_id()
    env = {**os.environ, "FAENA_WORKER_ID": worker_id}
    process = subprocess.Popen(["sleep", "1000"], env=env, start_new_session=True)
    try:
        wait_until_visible(process.pid, worker_id)
        assert kill_worker_processes(new_id(), grace=1.0) == 0
        assert kill_worker_processes(worker_id, grace=1.0) == 1
        assert process.wait(timeout=GUARD) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()


def test_kill_worker_processes_sigkills_after_grace() -> None:
    if not Path("/proc/self/environ").exists():
        missing("needs /proc")
    worker_id = new_id()
    env = {**os.environ, "FAENA_WORKER_ID": worker_id}
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(1000)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # SIGTERM is ignored from here on
        wait_until_visible(process.pid, worker_id)
        assert kill_worker_processes(worker_id, grace=0.2) == 1
        assert process.wait(timeout=GUARD) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def wait_until_visible(pid: int, worker_id: str) -> None:
    """Right after exec a process's environment reads empty for a moment."""
    for _ in range(1000):
        if pid in processes_with_env(f"FAENA_WORKER_ID={worker_id}"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never showed FAENA_WORKER_ID={worker_id}")


def test_kill_worker_processes_rejects_an_empty_id() -> None:
    with pytest.raises(ValueError):
        kill_worker_processes("", grace=0.1)
