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
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from faena.domain.outputs import parse_output_file
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputLine,
    OutputSink,
    PathEscapeError,
    ProviderError,
    Stream,
    Worker,
    WorkerRequest,
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

EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
MAX_LINE_BYTES = 64 * 1024
"""Longer lines reach the sink split into pieces of at most this many bytes."""

_TRASH = ".trash"  # destroyed workspaces wait here to be deleted; ids never start with "."
_READ_CHUNK = 64 * 1024
_POLL_INTERVAL = 0.02
_SIGKILL_WAIT = 5.0  # SIGKILL cannot be ignored; this only bounds waiting on D-state processes
_KILL_SWEEPS = 50
_FALLBACK_DRAIN = 1024 * 1024

# GitHub Actions' command lines for its named shells; {0} is the script file.
_SHELLS: dict[str, tuple[tuple[str, ...], str]] = {
    "bash": (("bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"), ".sh"),
    "sh": (("sh", "-e", "{0}"), ".sh"),
    "python": (("python3", "{0}"), ".py"),
    "pwsh": (("pwsh", "-command", ". '{0}'"), ".ps1"),
}

_Stop = Literal["timed_out", "cancelled"]
_Emit = Callable[[Stream, bytes], Awaitable[None]]


class LocalProvider:
    """Runs workers as directories and steps as local process groups."""

    name = "local"

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
        paths = self._paths(request.worker_id)
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
        paths = self._paths(worker.worker_id)
        if not paths.workspace.is_dir() or not paths.temp.is_dir():
            raise ProviderError(f"worker {worker.worker_id!r} does not exist or was destroyed")
        cwd = _inside(paths.workspace, request.working_directory)
        lock = asyncio.Lock()

        async def emit(stream: Stream, raw: bytes) -> None:
            line = OutputLine(stream, raw.decode("utf-8", errors="replace"), time.time())
            async with lock:  # the sink never sees two calls at once
                await sink(line)

        async def fail(exit_code: int, message: str) -> ExecResult:
            await emit("stderr", f"faena: {message}".encode())
            return ExecResult(exit_code=exit_code, duration_ms=_ms_since(started))

        try:
            cwd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return await fail(1, f"cannot create working directory: {exc}")
        cwd = _inside(paths.workspace, str(cwd))  # a racing step may have planted a symlink

        shell = request.shell if request.shell and request.shell.strip() else None
        base = os.environ if self._base_env is None else self._base_env
        search_path = request.env.get("PATH", base.get("PATH", os.defpath))
        try:
            template, suffix = _shell_template(shell, search_path)
        except _ShellError as exc:
            return await fail(exc.exit_code, str(exc))
        script, output = self._write_files(paths, request, suffix)
        env = {
            **base,
            **request.env,
            # Set last so a step cannot hide from destroy's FAENA_WORKER_ID scan.
            "FAENA_WORKSPACE": str(paths.workspace),
            "FAENA_WORKER_ID": worker.worker_id,
            "FAENA_OUTPUT": str(output),
        }
        argv = _fill(template, script, pwsh=shell == "pwsh")

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
            _close(out_r, err_r)
            code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            return await fail(code, f"cannot run shell {argv[0]!r}: {exc.strerror}")
        except OSError as exc:
            _close(out_r, err_r)
            raise ProviderError(f"cannot start step {request.exec_id!r}: {exc}") from exc
        finally:
            _close(out_w, err_w)  # the child holds its copies; ours would block EOF forever

        state = self._workers.setdefault(worker.worker_id, _WorkerState())
        state.groups.add(proc.pid)  # start_new_session: the group id is the child's pid
        pipes = [_Pipe(out_r, "stdout", emit), _Pipe(err_r, "stderr", emit)]
        pumps = [asyncio.ensure_future(pipe.pump()) for pipe in pipes]
        running = _Running(tasks=set(pumps))
        state.running[request.exec_id] = running
        waiter = asyncio.ensure_future(proc.wait())
        finished = False
        try:
            stop = await _until_exit(waiter, running.cancel, request.timeout, pumps)
            if stop is not None:
                await _kill_tree(proc.pid, self._kill_grace)
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
                        _close(pipe.fd)
                    else:
                        state.detach(pipe.fd)
            else:
                # Sink failure or task cancellation: nothing may outlive the step.
                _signal_tree(proc.pid, signal.SIGKILL)
                waiter.cancel()
                for task in pumps:
                    task.cancel()
                await asyncio.wait(pumps)  # before closing: they may still watch the fds
                _close(out_r, err_r)

        if _group_empty(proc.pid) or not await asyncio.to_thread(_tree_alive, proc.pid):
            state.groups.discard(proc.pid)  # forget it now: an empty group's id can be reused
        exit_code = 128 - returncode if returncode < 0 else returncode
        if stop == "timed_out":
            exit_code = EXIT_TIMED_OUT
        elif stop == "cancelled":
            exit_code = EXIT_CANCELLED
        outputs: dict[str, str] = {}
        try:
            outputs = parse_output_file(output.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            pass  # the step deleted it, or destroy raced us: no outputs
        except (OSError, ValueError) as exc:
            await emit("stderr", f"faena: invalid $FAENA_OUTPUT: {exc}".encode())
            exit_code = exit_code or 1
        return ExecResult(
            exit_code=exit_code,
            duration_ms=_ms_since(started),
            timed_out=stop == "timed_out",
            cancelled=stop == "cancelled",
            outputs=outputs,
        )

    def hurry(self) -> None:
        """Kill every running step now (SIGKILL), and from now on without a grace period."""
        self._kill_grace = 0.0
        for state in self._workers.values():
            for group in list(state.groups):
                _signal_tree(group, signal.SIGKILL)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        """Kill a running exec's process group and wait until it is gone; no-op if none."""
        state = self._workers.get(worker.worker_id)
        running = state.running.get(exec_id) if state else None
        if running is None:
            return
        running.cancel.set()
        # Called from the sink, i.e. from inside the exec: waiting would deadlock.
        if asyncio.current_task() not in running.tasks:
            await running.done.wait()

    async def destroy(self, worker: Worker) -> None:
        """Kill every process of the worker, then remove its directory; idempotent."""
        paths = self._paths(worker.worker_id)
        state = self._workers.pop(worker.worker_id, None)
        if state is not None:
            for running in state.running.values():
                running.cancel.set()
            await asyncio.gather(*(_kill_tree(g, self._kill_grace) for g in state.groups))
        if state is None or not state.running:
            # The common case, in one thread hop: sweep, then remove the directory.
            if state is not None:
                state.close()
            trash = await asyncio.to_thread(self._sweep_and_remove, worker.worker_id, paths)
            if trash is not None:
                # The workspace is gone from its path already; deleting its files (slow on
                # some filesystems) happens off the job's critical path.
                removal = asyncio.ensure_future(asyncio.to_thread(_rmtree_quietly, trash))
                self._removals.add(removal)
                removal.add_done_callback(self._removals.discard)
            return
        await asyncio.to_thread(kill_worker_processes, worker.worker_id, self._kill_grace)
        if state is not None:
            if state.running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(r.done.wait() for r in state.running.values())),
                        timeout=self._kill_grace + _SIGKILL_WAIT,
                    )
            state.close()
        if self._keep_workspace or not paths.root.exists():
            return
        try:
            await asyncio.to_thread(_rmtree, paths.root)
        except OSError as exc:
            raise ProviderError(f"cannot remove worker {worker.worker_id!r}: {exc}") from exc

    def _sweep_and_remove(self, worker_id: str, paths: _Paths) -> Path | None:
        """Kill what is left, then move the worker's directory to the trash (returned)."""
        kill_worker_processes(worker_id, self._kill_grace)
        if self._keep_workspace or not paths.root.exists():
            return None
        trash = self._root / _TRASH / f"{worker_id}-{os.urandom(4).hex()}"
        try:
            trash.parent.mkdir(exist_ok=True)
            paths.root.rename(trash)
            return trash
        except OSError:
            pass  # e.g. a read-only parent: remove in place instead
        try:
            _rmtree(paths.root)
        except OSError as exc:
            raise ProviderError(f"cannot remove worker {worker_id!r}: {exc}") from exc
        return None

    async def sweep_leftovers(self) -> int:
        """Destroy the workers a killed predecessor left in this root (their processes
        too); returns how many. Only for a root this process owns alone."""
        if not self._root.is_dir():
            return 0
        names = [
            entry.name
            for entry in self._root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and entry.name != _TRASH
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
            await asyncio.to_thread(_rmtree_quietly, trash)

    def _paths(self, worker_id: str) -> _Paths:
        if not worker_id or worker_id.startswith(".") or "/" in worker_id or "\0" in worker_id:
            raise PathEscapeError(f"worker id {worker_id!r} is not a plain directory name")
        root = self._root / worker_id
        return _Paths(root=root, workspace=root / "workspace", temp=root / "temp")

    def _worker(self, worker_id: str, paths: _Paths) -> Worker:
        info = {"root": str(paths.root), "workspace": str(paths.workspace), "temp": str(paths.temp)}
        return Worker(worker_id, self.name, str(paths.workspace), info)

    @staticmethod
    def _write_files(paths: _Paths, request: ExecRequest, suffix: str) -> tuple[Path, Path]:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.exec_id)[:48] or "step"
        try:
            fd, script_name = tempfile.mkstemp(suffix, f"{stem}-", paths.temp)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(request.script)
            Path(script_name).chmod(0o700)  # templates like "{0}" run the script itself
            fd, output_name = tempfile.mkstemp("", f"{stem}-output-", paths.temp)
            os.close(fd)
        except OSError as exc:
            raise ProviderError(f"cannot write step files for {request.exec_id!r}: {exc}") from exc
        return Path(script_name), Path(output_name)


def kill_worker_processes(worker_id: str, grace: float) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds, every process whose environment holds
    ``FAENA_WORKER_ID=<worker_id>``; return how many were signalled (0 without /proc)."""
    if not worker_id:
        raise ValueError("worker_id must not be empty")
    needle = f"FAENA_WORKER_ID={worker_id}".encode()
    signalled: set[int] = set()

    def sweep(sig: signal.Signals, skip: set[int]) -> set[int]:
        found = _pids_with_env(needle)
        for pid in found - skip:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                if sig == signal.SIGTERM:
                    os.kill(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only then
        signalled.update(found)
        return found

    found, unsure = _scan(needle)
    if not found:
        if not unsure:
            return 0  # the common case: nothing left, and no process we could have missed
        # A process inside execve() shows an empty environment for a moment: look again.
        time.sleep(_POLL_INTERVAL)
        if not sweep(signal.SIGTERM, set()):
            return 0
    else:
        sweep(signal.SIGTERM, set())
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)
        # Also catches children forked after the first sweep.
        if not sweep(signal.SIGTERM, set(signalled)):
            return len(signalled)
    for _ in range(_KILL_SWEEPS):  # bounded: a fork loop could otherwise keep us here
        if not sweep(signal.SIGKILL, set()):
            break
        time.sleep(_POLL_INTERVAL)
    return len(signalled)


@dataclass(frozen=True)
class _Paths:
    root: Path
    workspace: Path
    temp: Path


@dataclass
class _Running:
    tasks: set[asyncio.Future[bool]]
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _WorkerState:
    groups: set[int] = field(default_factory=set)
    running: dict[str, _Running] = field(default_factory=dict)
    drained: dict[int, asyncio.AbstractEventLoop] = field(default_factory=dict)
    closed: bool = False

    def detach(self, fd: int) -> None:
        """Keep reading a pipe that background processes still hold, discarding it."""
        if self.closed:
            _close(fd)
            return
        loop = asyncio.get_running_loop()
        self.drained[fd] = loop
        loop.add_reader(fd, self._discard, fd)

    def _discard(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_draining(fd)

    def _stop_draining(self, fd: int) -> None:
        loop = self.drained.pop(fd, None)
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)
        _close(fd)

    def close(self) -> None:
        self.closed = True
        for fd in list(self.drained):
            self._stop_draining(fd)


class _ShellError(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _shell_template(shell: str | None, search_path: str) -> tuple[list[str], str]:
    """The shell's command line with ``{0}`` for the script, executable resolved; and suffix."""
    if shell is None:
        shell = "bash" if shutil.which("bash", path=search_path) else "sh"
    if shell in _SHELLS:
        words, suffix = list(_SHELLS[shell][0]), _SHELLS[shell][1]
    else:
        try:
            words, suffix = shlex.split(shell), ""
        except ValueError as exc:
            raise _ShellError(EXIT_NOT_FOUND, f"cannot parse shell {shell!r}: {exc}") from None
        if not words:
            raise _ShellError(EXIT_NOT_FOUND, f"cannot parse shell {shell!r}")
        if not any("{0}" in word for word in words):
            words.append("{0}")
    if "{0}" in words[0] or "/" in words[0]:
        return words, suffix  # a path (or the script itself): the spawn reports failures
    found = shutil.which(words[0], path=search_path)
    if found is None and shell == "python":
        found = sys.executable
    if found is None:
        raise _ShellError(EXIT_NOT_FOUND, f"shell {words[0]!r} not found on PATH")
    words[0] = found
    return words, suffix


def _fill(template: list[str], script: Path, *, pwsh: bool) -> list[str]:
    path = str(script).replace("'", "''") if pwsh else str(script)
    return [word.replace("{0}", path) for word in template]


def _inside(workspace: Path, relative: str | None) -> Path:
    """``workspace / relative`` with symlinks resolved; PathEscapeError if it leaves it."""
    base = Path(os.path.realpath(workspace))
    target = Path(os.path.realpath(base / (relative or ".")))
    if target != base and base not in target.parents:
        raise PathEscapeError(f"working directory {relative!r} is outside the workspace")
    return target


class _Pipe:
    """Reads one output pipe of a step into lines until EOF or until told the step exited."""

    def __init__(self, fd: int, stream: Stream, emit: _Emit) -> None:
        self.fd = fd
        self._stream: Stream = stream
        self._emit = emit
        self._lines = _LineSplitter()
        self._exited = False
        self._waiter: asyncio.Future[None] | None = None
        os.set_blocking(fd, False)

    def notify_exit(self) -> None:
        self._exited = True
        self._wake()

    async def pump(self) -> bool:
        """Forward lines; return True at EOF, False when background processes hold the pipe."""
        budget: int | None = None
        eof = False
        while True:
            if budget is None and self._exited:
                # Everything the step wrote before exiting is in the pipe now: forward that
                # much and no more, since background processes may write forever.
                budget = _pending_bytes(self.fd)
            if budget is not None and budget <= 0:
                break
            try:
                data = os.read(self.fd, _READ_CHUNK if budget is None else min(budget, _READ_CHUNK))
            except BlockingIOError:
                if budget is not None:
                    break
                await self._readable()
                continue
            if not data:
                eof = True
                break
            if budget is not None:
                budget -= len(data)
            for line in self._lines.feed(data):
                await self._emit(self._stream, line)
        tail = self._lines.flush()
        if tail is not None:
            await self._emit(self._stream, tail)
        return eof

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        loop.add_reader(self.fd, self._wake)
        try:
            await self._waiter
        finally:
            loop.remove_reader(self.fd)
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _LineSplitter:
    """Bytes in, lines out: without their newline (or CRLF), at most MAX_LINE_BYTES each."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            newline = buffer.find(b"\n", start, start + self._limit + 1)
            if newline >= 0:
                lines.append(bytes(buffer[start:newline]).removesuffix(b"\r"))
                start = newline + 1
            elif len(buffer) - start > self._limit:
                cut = _utf8_boundary(buffer, start + self._limit)
                lines.append(bytes(buffer[start:cut]))
                start = cut
            else:
                break
        del buffer[:start]
        return lines

    def flush(self) -> bytes | None:
        if not self._buffer:
            return None
        tail = bytes(self._buffer).removesuffix(b"\r")
        self._buffer.clear()
        return tail


def _utf8_boundary(buffer: bytearray, cut: int) -> int:
    """Move ``cut`` back onto a character start so a split does not garble one."""
    for back in range(4):
        if buffer[cut - back] & 0xC0 != 0x80:  # not a continuation byte
            return cut - back
    return cut  # not UTF-8 anyway


def _pending_bytes(fd: int) -> int:
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return _FALLBACK_DRAIN  # reads stop at the first empty read anyway
    value: int = struct.unpack("i", raw)[0]
    return value


async def _until_exit(
    waiter: asyncio.Future[int],
    cancel: asyncio.Event,
    timeout: float | None,
    pumps: Sequence[asyncio.Future[bool]],
) -> _Stop | None:
    """Wait for the main process to exit, a cancel or the timeout; re-raise a sink's error."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    cancelled = asyncio.ensure_future(cancel.wait())
    pending: set[asyncio.Future[Any]] = {waiter, cancelled, *pumps}
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for pump in pumps:
                if pump in done:
                    pump.result()  # a pump ends early at EOF, or raising what the sink raised
            if waiter.done():
                return None
            if cancel.is_set():
                return "cancelled"
            if not done:
                return "timed_out"
    finally:
        cancelled.cancel()


async def _kill_tree(leader: int, grace: float) -> None:
    """SIGTERM what a step started, SIGKILL it after ``grace`` s; return once it is gone."""
    if not await asyncio.to_thread(_signal_tree, leader, signal.SIGTERM, signal.SIGCONT):
        return
    if await _wait_gone(leader, grace):
        return
    await asyncio.to_thread(_signal_tree, leader, signal.SIGKILL)
    await _wait_gone(leader, _SIGKILL_WAIT)


async def _wait_gone(leader: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(_tree_alive, leader):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


def _signal_tree(leader: int, *signals: signal.Signals) -> bool:
    """Signal the step's process group and session; False if nobody was there."""
    # The session also holds what left the group (``timeout(1)``, ``set -m`` jobs); only
    # ``setsid`` leaves both, and destroy's environment scan catches that.
    members = _tree_members(leader) or []
    sent = False
    for sig in signals:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, sig)
            sent = True
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent = True
    return sent


def _group_empty(leader: int) -> bool:
    """Cheap check for the common case: no process at all is left in the step's group.

    Processes that only kept the session (rare) are found by destroy's environment scan.
    """
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _tree_alive(leader: int) -> bool:
    """True while a process of the step's group or session is alive (zombies do not count)."""
    members = _tree_members(leader)
    if members is not None:
        return bool(members)
    try:  # no /proc: killpg cannot tell zombies apart, but it is all there is
        os.killpg(leader, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tree_members(leader: int) -> list[int] | None:
    """Live pids whose process group or session is ``leader``'s; None without /proc."""
    if not _has_proc():
        return None
    wanted = str(leader)
    members = []
    for pid in _proc_pids():
        fields = _stat_fields(pid)
        # Orphans whose reaper never reaps (PID 1 in many containers) stay zombies forever.
        if fields and fields[0] not in ("Z", "X") and wanted in (fields[2], fields[3]):
            members.append(pid)
    return members


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def _proc_pids() -> list[int]:
    try:
        return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from the state field on: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    return data[data.rfind(b")") + 2 :].decode("ascii", errors="replace").split()


def _pids_with_env(needle: bytes) -> set[int]:
    return _scan(needle)[0]


def _scan(needle: bytes) -> tuple[set[int], bool]:
    """Pids whose environment holds ``needle``, and whether some live user process showed
    an empty environment (one inside execve() does for a moment, so it may be ours)."""
    if not _has_proc():
        return set(), False
    me = os.getpid()
    found: set[int] = set()
    unsure = False
    for pid in _proc_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue  # gone, or another user's process
        if not environ:
            # Zombies and kernel threads read as empty too; only others are in doubt.
            unsure = unsure or _live_user_process(pid)
        elif needle in environ.split(b"\0"):
            found.add(pid)
    return found, unsure


_PF_KTHREAD = 0x00200000


def _live_user_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != b"Z" and not int(fields[6]) & _PF_KTHREAD


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def _rmtree_quietly(path: Path) -> None:
    try:
        _rmtree(path)
    except OSError:
        logging.getLogger(__name__).warning("could not remove %s", path, exc_info=True)


def _rmtree(path: Path) -> None:
    def retry(function: Callable[..., object], name: str, _exc: object) -> None:
        # Steps may leave read-only directories (Go's module cache does): unlock, retry.
        entry = Path(name)
        with contextlib.suppress(FileNotFoundError):
            entry.parent.chmod(0o700)
            if entry.is_dir() and not entry.is_symlink():
                entry.chmod(0o700)
            function(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
