"""Local-process workers: a directory on this host per worker, each step a process group.

Layout: ``root/<worker_id>/workspace`` (the job's files) and ``root/<worker_id>/temp``
(scripts and ``$FAENA_OUTPUT`` files, private to the provider, outside the workspace).

Exit codes in ``ExecResult`` follow the shells' conventions:

- the step's own exit status; ``128 + signum`` when a signal killed it;
- ``EXIT_TIMED_OUT`` (124, as ``timeout(1)``) with ``timed_out=True``;
- ``EXIT_CANCELLED`` (130, as Ctrl-C) with ``cancelled=True``;
- ``EXIT_NOT_FOUND`` (127) when the shell is not on ``PATH`` or its template cannot be parsed,
  ``EXIT_NOT_EXECUTABLE`` (126) when it cannot be executed, and 1 when the working directory
  cannot be created: user errors, so a failed step with a ``faena:`` line on stderr, not a
  ``ProviderError`` (which the platform would retry forever);
- 1 instead of 0 when ``$FAENA_OUTPUT`` is malformed (a ``faena:`` stderr line says why;
  ``outputs`` is then empty). Outputs are parsed after timeouts and cancels too.

A step ends when its main process exits. Background processes it leaves (``server &``) keep
running for the next steps, as in GitHub Actions; output they write after that is drained
and discarded, so they never block on a full pipe nor die of SIGPIPE. ``destroy`` kills
every process group the worker started and, since ``setsid`` escapes a group, every process
whose environment carries ``FAENA_WORKER_ID=<worker_id>`` (see ``kill_worker_processes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    ProviderError,
    Worker,
    WorkerRequest,
)
from faena.workers.providers.exit_codes import (
    EXIT_CANCELLED,
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_TIMED_OUT,
)
from faena.workers.providers.output_pipe import (
    MAX_LINE_BYTES,
    OutputPipe,
    PipeDrainer,
    close_fds,
    wait_for_exit,
)
from faena.workers.providers.process_tree import (
    SIGKILL_WAIT,
    group_empty,
    kill_tree,
    kill_worker_processes,
    signal_tree,
    tree_alive,
)
from faena.workers.providers.shells import ShellError, fill_template, shell_template
from faena.workers.providers.step_result import (
    RunningStep,
    cancel_step,
    emitter,
    failed_to_start,
    result_of,
)
from faena.workers.providers.worker_dirs import (
    WorkerPaths,
    inside,
    mark_kept,
    reap_after,
    rmtree,
    rmtree_quietly,
    worker_paths,
    write_step_files,
)

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "EXIT_TIMED_OUT",
    "MAX_LINE_BYTES",
    "LocalProvider",
    "kill_worker_processes",
]

_TRASH = ".trash"  # destroyed workspaces wait here to be deleted; ids never start with "."


class LocalProvider:
    """Runs workers as directories and steps as local process groups."""

    name = "local"
    # Limits are not enforced on bare processes: the docker and kubernetes providers do.
    enforces: frozenset[str] = frozenset()

    def __init__(
        self,
        root: Path,
        keep_workspace: bool = False,
        base_env: Mapping[str, str] | None = None,
        kill_grace: float = 5.0,
    ) -> None:
        self._root = Path(root).absolute()
        self._keep_workspace = keep_workspace
        self._base_env = base_env  # None: os.environ, read at each exec
        self._kill_grace = kill_grace
        self._workers: dict[str, _WorkerState] = {}
        self._removals: set[asyncio.Future[None]] = set()

    async def create(self, request: WorkerRequest) -> Worker:
        """Make the worker's workspace and private temp dir; idempotent by ``worker_id``."""
        paths = worker_paths(self._root, request.worker_id)
        try:
            paths.workspace.mkdir(parents=True, exist_ok=True)
            paths.temp.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ProviderError(f"cannot create worker {request.worker_id!r}: {exc}") from exc
        self._workers.setdefault(request.worker_id, _WorkerState())
        return self._worker(request.worker_id, paths)

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        """Run one step as a new process group, streaming its lines to ``sink``."""
        started = time.monotonic()
        paths = worker_paths(self._root, worker.worker_id)
        if not paths.workspace.is_dir() or not paths.temp.is_dir():
            raise ProviderError(f"worker {worker.worker_id!r} does not exist or was destroyed")
        cwd = inside(paths.workspace, request.working_directory)
        emit = emitter(sink)

        async def fail(exit_code: int, message: str) -> ExecResult:
            return await failed_to_start(emit, started, exit_code, message)

        try:
            cwd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return await fail(1, f"cannot create working directory: {exc}")
        cwd = inside(paths.workspace, str(cwd))  # a racing step may have planted a symlink

        shell = request.shell if request.shell and request.shell.strip() else None
        base = os.environ if self._base_env is None else self._base_env
        search_path = request.env.get("PATH", base.get("PATH", os.defpath))
        try:
            template, suffix = shell_template(shell, search_path)
        except ShellError as exc:
            return await fail(exc.exit_code, str(exc))
        script, output = write_step_files(paths, request.exec_id, request.script, suffix)
        env = {
            **base,
            **request.env,
            # Set last so a step cannot hide from destroy's FAENA_WORKER_ID scan.
            "FAENA_WORKSPACE": str(paths.workspace),
            "FAENA_WORKER_ID": worker.worker_id,
            "FAENA_OUTPUT": str(output),
        }
        argv = fill_template(template, script, pwsh=shell == "pwsh")

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            close_fds(out_r, err_r)
            code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            return await fail(code, f"cannot run shell {argv[0]!r}: {exc.strerror}")
        except OSError as exc:
            close_fds(out_r, err_r)
            raise ProviderError(f"cannot start step {request.exec_id!r}: {exc}") from exc
        finally:
            close_fds(out_w, err_w)  # the child holds its copies; ours would block EOF forever

        state = self._workers.setdefault(worker.worker_id, _WorkerState())
        state.groups.add(proc.pid)  # start_new_session: the group id is the child's pid
        pipes = [OutputPipe(out_r, "stdout", emit), OutputPipe(err_r, "stderr", emit)]
        pumps = [asyncio.ensure_future(pipe.pump()) for pipe in pipes]
        running = RunningStep(tasks=set(pumps))
        state.running[request.exec_id] = running
        waiter = asyncio.ensure_future(proc.wait())
        finished = False
        try:
            stop = await wait_for_exit(waiter, running.cancel, request.timeout, pumps)
            if stop is not None:
                await kill_tree(proc.pid, self._kill_grace)
            returncode = await waiter
            for pipe in pipes:
                pipe.notify_exit()
            at_eof = await asyncio.gather(*pumps)
            finished = True
        finally:
            if state.running.get(request.exec_id) is running:
                del state.running[request.exec_id]
            running.done.set()
            if finished:
                for pipe, eof in zip(pipes, at_eof, strict=True):
                    if eof:
                        close_fds(pipe.fd)
                    else:
                        state.detach(pipe.fd)
            else:
                # Sink failure or task cancellation: nothing may outlive the step.
                signal_tree(proc.pid, signal.SIGKILL)
                waiter.cancel()
                for task in pumps:
                    task.cancel()
                await asyncio.wait(pumps)  # before closing: they may still watch the fds
                close_fds(out_r, err_r)

        if group_empty(proc.pid) or not await asyncio.to_thread(tree_alive, proc.pid):
            state.groups.discard(proc.pid)  # forget it now: an empty group's id can be reused
        exit_code = 128 - returncode if returncode < 0 else returncode
        if stop == "timed_out":
            exit_code = EXIT_TIMED_OUT
        elif stop == "cancelled":
            exit_code = EXIT_CANCELLED
        return await result_of(emit, started, exit_code, stop, output)

    def hurry(self) -> None:
        """Kill every running step now (SIGKILL), and from now on without a grace period."""
        self._kill_grace = 0.0
        for state in self._workers.values():
            for group in list(state.groups):
                signal_tree(group, signal.SIGKILL)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        """Kill a running exec's process group and wait until it is gone; no-op if none."""
        state = self._workers.get(worker.worker_id)
        await cancel_step(state.running.get(exec_id) if state else None)

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        """Kill every process of the worker, then remove its directory (with ``keep_for``,
        leave it that long: ``sweep_leftovers`` reaps it once due); idempotent."""
        paths = worker_paths(self._root, worker.worker_id)
        keep = self._keep_workspace or keep_for is not None
        state = self._workers.pop(worker.worker_id, None)
        if state is not None:
            for running in state.running.values():
                running.cancel.set()
            await asyncio.gather(*(kill_tree(g, self._kill_grace) for g in state.groups))
        if state is None or not state.running:
            # The common case, in one thread hop: sweep, then remove the directory.
            if state is not None:
                state.close()
            trash = await asyncio.to_thread(
                self._sweep_and_remove, worker.worker_id, paths, keep, keep_for
            )
            if trash is not None:
                # The workspace is gone from its path already; deleting its files (slow on
                # some filesystems) happens off the job's critical path.
                removal = asyncio.ensure_future(asyncio.to_thread(rmtree_quietly, trash))
                self._removals.add(removal)
                removal.add_done_callback(self._removals.discard)
            return
        await asyncio.to_thread(kill_worker_processes, worker.worker_id, self._kill_grace)
        if state is not None:
            if state.running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(r.done.wait() for r in state.running.values())),
                        timeout=self._kill_grace + SIGKILL_WAIT,
                    )
            state.close()
        if keep or not paths.root.exists():
            mark_kept(paths, keep_for)
            return
        try:
            await asyncio.to_thread(rmtree, paths.root)
        except OSError as exc:
            raise ProviderError(f"cannot remove worker {worker.worker_id!r}: {exc}") from exc

    def _sweep_and_remove(
        self, worker_id: str, paths: WorkerPaths, keep: bool, keep_for: float | None
    ) -> Path | None:
        """Kill what is left, then move the worker's directory to the trash (returned)."""
        kill_worker_processes(worker_id, self._kill_grace)
        if keep or not paths.root.exists():
            mark_kept(paths, keep_for)
            return None
        trash = self._root / _TRASH / f"{worker_id}-{os.urandom(4).hex()}"
        try:
            trash.parent.mkdir(exist_ok=True)
            paths.root.rename(trash)
            return trash
        except OSError:
            pass  # e.g. a read-only parent: remove in place instead
        try:
            rmtree(paths.root)
        except OSError as exc:
            raise ProviderError(f"cannot remove worker {worker_id!r}: {exc}") from exc
        return None

    async def sweep_leftovers(self) -> int:
        """Destroy the workers a killed predecessor left in this root (their processes
        too); returns how many. Only for a root this process owns alone."""
        if not self._root.is_dir():
            return 0
        now = time.time()
        names = [
            entry.name
            for entry in self._root.iterdir()
            if entry.is_dir()
            and not entry.name.startswith(".")
            and entry.name != _TRASH
            and reap_after(entry) <= now
        ]
        for name in names:
            await self.destroy(Worker(name, self.name, ""))
        return len(names)

    async def close(self) -> None:
        """Finish removing destroyed workspaces (including a previous process's leftovers)."""
        if self._removals:
            await asyncio.gather(*self._removals)
        trash = self._root / _TRASH
        if trash.exists():
            await asyncio.to_thread(rmtree_quietly, trash)

    def _worker(self, worker_id: str, paths: WorkerPaths) -> Worker:
        info = {"root": str(paths.root), "workspace": str(paths.workspace), "temp": str(paths.temp)}
        return Worker(worker_id, self.name, str(paths.workspace), info)


@dataclass
class _WorkerState:
    groups: set[int] = field(default_factory=set)
    running: dict[str, RunningStep] = field(default_factory=dict)
    drainer: PipeDrainer = field(default_factory=PipeDrainer)

    def detach(self, fd: int) -> None:
        self.drainer.detach(fd)

    def close(self) -> None:
        self.drainer.close()
