"""Docker workers: one container per job attempt, steps through the exec API.

A worker is a container from the job's ``image`` (or the provider's default) kept alive by
a shell loop under Docker's init, with the worker's host directory (``workspace/`` and the
private ``temp/``, see ``worker_dirs``) bind-mounted at the same path, so paths, the
workspace boundary and ``$FAENA_OUTPUT`` work as on the local provider. ``services`` are
sidecar containers that join the job container's network namespace (as the containers of a
Kubernetes pod do), so they are reached at ``localhost``; ``create`` waits for their health
checks. Limits: ``cpu`` (NanoCpus), ``memory`` (no swap beyond it), ``pids``.

Each step runs through a small ``sh`` wrapper started with ``docker exec``. The wrapper
writes its pid to the temp dir and sends the step's stdout and stderr into two FIFOs there,
which this process reads as it reads a local step's pipes (``output_pipe``); the exec's own
stream only tells when the wrapper ended, so background processes a step leaves do not hold
it open. Timeouts and cancels kill the step's session inside the container (the exec'd
wrapper is a session leader), SIGTERM then SIGKILL. An exit of 137 with a new OOM kill in
the container's cgroup is reported as "out of memory (limit ...)".

Every container carries the labels ``faena.run``, ``faena.job``, ``faena.worker`` and
``faena.owner``; ``reap_orphans`` removes an owner's containers that no live worker of this
process uses (a crashed agent's), keeping those a ``keep_for`` still protects.
The daemon must run on this host (the workspace is a bind mount). Images must exist
locally unless ``pull`` is on; a missing one fails the job at once (WKM-PROV, not retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faena.domain.durations import format_size
from faena.domain.spec import Resources, ServiceSpec
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    ProviderError,
    Worker,
    WorkerRequest,
)
from faena.workers.providers.exit_codes import EXIT_CANCELLED, EXIT_KILLED, EXIT_TIMED_OUT
from faena.workers.providers.output_pipe import OutputPipe, PipeDrainer, close_fds, wait_for_exit
from faena.workers.providers.shells import ShellError, fill_template, parse_shell
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
    worker_paths,
    write_step_files,
)

__all__ = ["DEFAULT_IMAGE", "DockerProvider"]

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "debian:bookworm-slim"
LABEL_RUN, LABEL_JOB, LABEL_WORKER = "faena.run", "faena.job", "faena.worker"
LABEL_OWNER, LABEL_ROLE = "faena.owner", "faena.role"
_DEFAULT_SHELL = "__faena_default_shell__"
_POLL = 0.05
_SIGKILL_WAIT = 10.0  # bounds waiting for a killed step before its container is removed
_UNREACHABLE = 900  # aiodocker's status for a connection that failed


class _Unreachable(ProviderError):
    """The daemon did not answer (stopped, or a wrong socket)."""


# PID 1 is Docker's init (it reaps orphans); this loop only keeps the container up.
_KEEPALIVE = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"

# $1 stdout FIFO, $2 stderr FIFO, $3 pid file; then the shell's argv. fd 3 keeps the exec's
# stream open until the wrapper itself exits; the step's processes never get it.
_WRAPPER = r"""
out=$1 err=$2 pidfile=$3; shift 3
echo $$ > "$pidfile"
exec 3>&1 >"$out" 2>"$err" </dev/null
if [ "$1" = __faena_default_shell__ ]; then
  shift
  if command -v bash >/dev/null 2>&1; then set -- bash --noprofile --norc -eo pipefail "$@"
  else set -- sh -e "$@"; fi
fi
case "$1" in
  */*) ;;
  *) command -v "$1" >/dev/null 2>&1 || {
       echo "faena: shell '$1' not found on PATH" >&2; exit 127; } ;;
esac
"$@" 3>&-
"""

# $1 the wrapper's pid, $2 grace in ticks of 50 ms, $3 the step's mark: SIGTERM the members
# of its process group and session, and what left both (busybox's timeout does) but carries
# the mark; SIGKILL what is left after the grace; return once none is left.
_KILL = r"""
L=$1; ticks=$2; mark="FAENA_STEP_MARK=$3"
members() {
  for s in /proc/[0-9]*/stat; do
    read -r l < "$s" 2>/dev/null || continue
    p=${s#/proc/}; p=${p%/stat}
    [ "$p" = $$ ] && continue
    set -- ${l##*') '}
    [ "$1" = Z ] && continue
    if [ "$3" = "$L" ] || [ "$4" = "$L" ]; then echo "$p"
    elif tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qxF "$mark"; then echo "$p"
    fi
  done
}
m=$(members); [ -z "$m" ] && exit 0
kill -TERM $m 2>/dev/null; kill -CONT $m 2>/dev/null
i=0
while [ $i -lt "$ticks" ]; do
  m=$(members); [ -z "$m" ] && exit 0
  sleep 0.05; i=$((i+1))
done
i=0
while m=$(members); [ -n "$m" ] && [ $i -lt 200 ]; do
  kill -KILL $m 2>/dev/null; sleep 0.05; i=$((i+1))
done
"""

_OOM_KILLS = (
    "cat /sys/fs/cgroup/memory.events 2>/dev/null"
    " || cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null"
)


@dataclass
class _Live:
    """A worker this process created: its containers and running execs."""

    container_id: str
    image: str
    resources: Resources
    services: dict[str, str] = field(default_factory=dict)  # name -> container id
    running: dict[str, _Exec] = field(default_factory=dict)
    drainer: PipeDrainer = field(default_factory=PipeDrainer)
    oom_kills: int = 0


@dataclass
class _Exec(RunningStep):
    pidfile: Path = Path()
    mark: str = ""


class DockerProvider:
    """Runs each job attempt in a container of its image, steps through ``docker exec``."""

    name = "docker"
    enforces: frozenset[str] = frozenset({"cpu", "memory", "pids"})

    def __init__(
        self,
        root: Path,
        *,
        image: str = DEFAULT_IMAGE,
        owner: str = "faena",
        network: str | None = None,
        pull: bool = False,
        url: str | None = None,
        keep_workspace: bool = False,
        kill_grace: float = 5.0,
    ) -> None:
        self._root = Path(root).absolute()
        self._image = image
        self.owner = owner
        self._network = network
        self._pull = pull
        self._url = url
        self._keep_workspace = keep_workspace
        self._kill_grace = kill_grace
        self._docker: Any = None
        self._workers: dict[str, _Live] = {}
        self._creating: dict[str, asyncio.Lock] = {}

    # -- the WorkerProvider port -----------------------------------------------------------

    async def create(self, request: WorkerRequest) -> Worker:
        """Start the job container and its services (healthy); idempotent by ``worker_id``."""
        paths = worker_paths(self._root, request.worker_id)
        lock = self._creating.setdefault(request.worker_id, asyncio.Lock())
        async with lock:
            live = self._workers.get(request.worker_id)
            if live is None:
                live = await self._start(request, paths)
                self._workers[request.worker_id] = live
        return self._worker(request.worker_id, paths, live)

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        """Run one step in the worker's container, streaming its lines to ``sink``."""
        started = time.monotonic()
        paths = worker_paths(self._root, worker.worker_id)
        live = self._workers.get(worker.worker_id)
        if live is None or not paths.temp.is_dir():
            raise ProviderError(f"worker {worker.worker_id!r} does not exist or was destroyed")
        cwd = inside(paths.workspace, request.working_directory)
        emit = emitter(sink)

        async def fail(exit_code: int, message: str) -> ExecResult:
            return await failed_to_start(emit, started, exit_code, message)

        try:
            cwd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return await fail(1, f"cannot create working directory: {exc}")
        cwd = inside(paths.workspace, str(cwd))
        shell = request.shell if request.shell and request.shell.strip() else None
        try:
            template, suffix = parse_shell(shell) if shell else ([_DEFAULT_SHELL, "{0}"], ".sh")
        except ShellError as exc:
            return await fail(exc.exit_code, str(exc))
        script, output = write_step_files(paths, request.exec_id, request.script, suffix)
        argv = fill_template(template, script, pwsh=shell == "pwsh")
        stem = output.name.removesuffix("-output") + f"-{os.urandom(3).hex()}"
        fifo_out, fifo_err = paths.temp / f"{stem}.out", paths.temp / f"{stem}.err"
        pidfile = paths.temp / f"{stem}.pid"
        fds = _open_fifos(fifo_out, fifo_err)
        env = {
            **request.env,
            "FAENA_WORKSPACE": str(paths.workspace),
            "FAENA_WORKER_ID": worker.worker_id,
            "FAENA_OUTPUT": str(output),
        }
        env["FAENA_STEP_MARK"] = stem  # finds the step's processes that left its session
        running = _Exec(pidfile=pidfile, mark=stem)
        live.running[request.exec_id] = running
        pipes = [OutputPipe(fds[0], "stdout", emit), OutputPipe(fds[1], "stderr", emit)]
        pumps = [asyncio.ensure_future(pipe.pump()) for pipe in pipes]
        running.tasks.update(pumps)
        finished = False
        stop = None
        waiter: asyncio.Future[int] | None = None
        try:
            cmd = ["sh", "-c", _WRAPPER, "faena-step", str(fifo_out), str(fifo_err), str(pidfile)]
            waiter = asyncio.ensure_future(
                self._run_exec(live.container_id, [*cmd, *argv], env, str(cwd))
            )
            running.tasks.add(waiter)
            stop = await wait_for_exit(waiter, running.cancel, request.timeout, pumps)
            if stop is not None:
                await self._kill_step(live, running, self._kill_grace)
            exit_code = await waiter
            close_fds(*fds[2:])  # our write ends: EOF once the step's writers are gone too
            for pipe in pipes:
                pipe.notify_exit()
            at_eof = await asyncio.gather(*pumps)
            finished = True
        finally:
            live.running.pop(request.exec_id, None)
            running.done.set()
            if finished:
                for pipe, eof in zip(pipes, at_eof, strict=True):
                    if eof:
                        close_fds(pipe.fd)
                    else:
                        live.drainer.detach(pipe.fd)
            else:
                # Sink failure, provider error or task cancellation: nothing may outlive it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._kill_step(live, running, 0.0))
                if waiter is not None:
                    waiter.cancel()
                for task in pumps:
                    task.cancel()
                await asyncio.wait(pumps)
                close_fds(*fds)
            for leftover in (fifo_out, fifo_err, pidfile):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        reason = None
        if stop == "timed_out":
            exit_code = EXIT_TIMED_OUT
        elif stop == "cancelled":
            exit_code = EXIT_CANCELLED
        elif exit_code == EXIT_KILLED:
            reason = await self._oom_reason(live)
            if reason:
                await emit("stderr", f"faena: {reason}".encode())
        return await result_of(emit, started, exit_code, stop, output, reason)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        """Kill a running step's process tree and wait until it is gone; no-op if none."""
        live = self._workers.get(worker.worker_id)
        await cancel_step(live.running.get(exec_id) if live else None)

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        """Remove the worker's containers (with ``keep_for``: stop them and leave them that
        long) and its directory; idempotent, also for a worker this process never knew."""
        paths = worker_paths(self._root, worker.worker_id)
        live = self._workers.pop(worker.worker_id, None)
        self._creating.pop(worker.worker_id, None)
        if live is not None:
            for running in live.running.values():
                running.cancel.set()
            if live.running:
                # Let the steps end as cancelled before their container goes away.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(r.done.wait() for r in live.running.values())),
                        timeout=self._kill_grace + _SIGKILL_WAIT,
                    )
            live.drainer.close()
        ids = await self._containers_of(worker.worker_id, live is not None)
        if live is not None:
            ids = list(dict.fromkeys([*ids, live.container_id, *live.services.values()]))
        for cid in ids:
            await self._remove(cid, stop_only=keep_for is not None)
        if keep_for is not None:
            mark_kept(paths, keep_for)
            return
        if self._keep_workspace or not paths.root.exists():
            return
        try:
            await asyncio.to_thread(rmtree, paths.root)
        except OSError as exc:
            raise ProviderError(f"cannot remove worker {worker.worker_id!r}: {exc}") from exc

    # -- housekeeping ----------------------------------------------------------------------

    async def reap_orphans(self) -> int:
        """Remove this owner's containers (and directories) that no live worker of this
        process uses and no ``keep_for`` protects any more; returns how many workers."""
        containers = await self._list({"label": [f"{LABEL_OWNER}={self.owner}"]})
        now = time.time()
        orphans: set[str] = set()
        for c in containers:
            wid = (c.get("Labels") or {}).get(LABEL_WORKER, "")
            if not wid or wid in self._workers:
                continue
            with contextlib.suppress(ProviderError):
                if reap_after(worker_paths(self._root, wid).root) <= now:
                    orphans.add(wid)
        for wid in orphans:
            await self.destroy(Worker(wid, self.name, ""))
        return len(orphans)

    async def close(self) -> None:
        """Close the connection to the daemon."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    # -- containers ------------------------------------------------------------------------

    async def _client(self) -> Any:
        if self._docker is None:
            import aiodocker  # here, not at import: the CLI starts without it

            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def _call(self, what: str, call: Any) -> Any:
        """Await a daemon call; its failures become ProviderErrors that say what failed."""
        import aiodocker
        import aiohttp

        try:
            return await call
        except aiodocker.DockerError as exc:
            if exc.status == _UNREACHABLE:
                message = f"{what}: cannot reach the docker daemon ({exc.message})"
                raise _Unreachable(message) from exc
            raise ProviderError(f"{what}: {exc.message} (docker {exc.status})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _Unreachable(f"{what}: cannot reach the docker daemon ({exc})") from exc

    async def _start(self, request: WorkerRequest, paths: WorkerPaths) -> _Live:
        image = request.image or self._image
        for name in [image, *(s.image for s in request.services)]:
            await self._ensure_image(name)
        try:
            paths.workspace.mkdir(parents=True, exist_ok=True)
            paths.temp.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ProviderError(f"cannot create worker {request.worker_id!r}: {exc}") from exc
        docker = await self._client()
        labels = self._labels(request, "job")
        host: dict[str, Any] = {
            "Binds": [f"{paths.root}:{paths.root}"],
            "Init": True,
            **_limits(request.resources),
        }
        if self._network:
            host["NetworkMode"] = self._network
        config = {
            "Image": image,
            "Entrypoint": ["sh", "-c", _KEEPALIVE],
            "Cmd": [],
            "WorkingDir": str(paths.workspace),
            "Labels": labels,
            "HostConfig": host,
        }
        name = f"faena-{request.worker_id}"
        container = await self._call(
            f"cannot create the container of worker {request.worker_id} from {image!r}",
            docker.containers.create(config, name=name),
        )
        live = _Live(container.id, image, request.resources)
        try:
            await self._call(f"cannot start container {name}", container.start())
            for service in request.services:
                live.services[service.name] = await self._start_service(
                    request, service, container.id
                )
            for service in request.services:
                await self._wait_healthy(service, live.services[service.name])
        except BaseException:
            for cid in [container.id, *live.services.values()]:
                with contextlib.suppress(Exception):
                    await self._remove(cid)
            raise
        return live

    async def _start_service(self, request: WorkerRequest, service: ServiceSpec, job: str) -> str:
        docker = await self._client()
        config: dict[str, Any] = {
            "Image": service.image,
            "Env": [f"{k}={v}" for k, v in service.env.items()],
            "Labels": {**self._labels(request, "service"), "faena.service": service.name},
            "HostConfig": {"NetworkMode": f"container:{job}", "Init": True},
        }
        if service.command is not None:
            config["Cmd"] = list(service.command)
        name = f"faena-{request.worker_id}-{service.name}"
        what = f"cannot start service {service.name!r} ({service.image})"
        container = await self._call(what, docker.containers.create(config, name=name))
        await self._call(what, container.start())
        return str(container.id)

    async def _wait_healthy(self, service: ServiceSpec, cid: str) -> None:
        """Run the health command until it passes; a service never healthy fails the job."""
        if service.health is None:
            return
        health = service.health
        last = ""
        for _ in range(max(health.retries, 1)):
            state = await self._inspect(cid)
            if not state.get("Running"):
                tail = await self._logs_tail(cid)
                raise ProviderError(
                    f"service {service.name!r} ({service.image}) exited with code "
                    f"{state.get('ExitCode')} before it was healthy{tail}",
                    retryable=False,
                )
            try:
                code, last = await asyncio.wait_for(
                    self._exec_capture(cid, ["sh", "-c", health.cmd]), health.timeout
                )
            except TimeoutError:
                code, last = -1, f"health check timed out after {health.timeout:g}s"
            if code == 0:
                return
            await asyncio.sleep(health.interval)
        tail = await self._logs_tail(cid)
        raise ProviderError(
            f"service {service.name!r} ({service.image}) never became healthy after "
            f"{health.retries} checks of {health.cmd!r}: {last.strip()[-300:]}{tail}",
            retryable=False,
        )

    async def _ensure_image(self, image: str) -> None:
        import aiodocker

        docker = await self._client()
        try:
            await self._call(f"cannot inspect image {image!r}", docker.images.inspect(image))
            return
        except ProviderError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, aiodocker.DockerError) and cause.status == 404):
                raise
        if self._pull:
            with contextlib.suppress(ProviderError):
                await self._call(f"cannot pull {image!r}", docker.images.pull(image))
                return
        raise ProviderError(
            f"image {image!r} is not on this docker host"
            + (" and could not be pulled" if self._pull else " (pulling is off)")
            + ": build or load it first (docker build / docker load)",
            retryable=False,
        )

    def _labels(self, request: WorkerRequest, role: str) -> dict[str, str]:
        return {
            LABEL_RUN: request.run_id,
            LABEL_JOB: request.job_id,
            LABEL_WORKER: request.worker_id,
            LABEL_OWNER: self.owner,
            LABEL_ROLE: role,
        }

    async def _list(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        import json

        docker = await self._client()
        data = await self._call(
            "cannot list containers",
            docker._query_json(
                "containers/json", params={"all": "1", "filters": json.dumps(filters)}
            ),
        )
        return list(data)

    async def _containers_of(self, worker_id: str, known: bool) -> list[str]:
        try:
            found = await self._list({"label": [f"{LABEL_WORKER}={worker_id}"]})
        except _Unreachable:
            if not known:
                # Nothing of it was ever started by this process (create failed on the
                # daemon); what another process left, reap_orphans finds later.
                return []
            raise
        return [str(c["Id"]) for c in found]

    async def _remove(self, cid: str, *, stop_only: bool = False) -> None:
        import aiodocker

        docker = await self._client()
        container = docker.containers.container(cid)
        try:
            if stop_only:
                await container.kill(signal="SIGKILL")
            else:
                await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):  # gone already, or being removed / not running
                return
            raise ProviderError(f"cannot remove container {cid[:12]}: {exc.message}") from exc
        except OSError as exc:
            raise ProviderError(f"cannot reach the docker daemon ({exc})") from exc

    async def _inspect(self, cid: str) -> dict[str, Any]:
        docker = await self._client()
        data = await self._call(
            f"cannot inspect container {cid[:12]}", docker.containers.container(cid).show()
        )
        state: dict[str, Any] = data.get("State", {})
        return state

    async def _logs_tail(self, cid: str, lines: int = 20) -> str:
        docker = await self._client()
        with contextlib.suppress(Exception):
            got = await docker.containers.container(cid).log(stdout=True, stderr=True, tail=lines)
            text = "".join(got).strip()
            if text:
                return f"; its last output:\n{text}"
        return ""

    async def _run_exec(
        self, cid: str, cmd: list[str], env: dict[str, str] | None, workdir: str | None
    ) -> int:
        """Start an exec and wait for it to end; its exit code."""
        docker = await self._client()
        container = docker.containers.container(cid)
        what = "cannot run a step in the worker's container"
        kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "stdin": False, "tty": False}
        if env is not None:
            kwargs["environment"] = env
        if workdir is not None:
            kwargs["workdir"] = workdir
        execution = await self._call(what, container.exec(cmd, **kwargs))
        async with execution.start(detach=False) as stream:
            while await self._call(what, stream.read_out()) is not None:
                pass
        info = await self._call(what, execution.inspect())
        code = info.get("ExitCode")
        try:
            state = await self._inspect(cid)
        except ProviderError:
            state = {}
        if code is None or info.get("Running") or not state.get("Running"):
            # Killed or removed from outside, or the daemon went away mid-step.
            raise ProviderError(f"the worker's container stopped ({_describe(state)})")
        return int(code)

    async def _exec_capture(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        """Run a command in a container; its exit code and output (for health checks)."""
        docker = await self._client()
        container = docker.containers.container(cid)
        what = "cannot run a command in a container"
        execution = await self._call(what, container.exec(cmd, stdout=True, stderr=True))
        chunks: list[bytes] = []
        async with execution.start(detach=False) as stream:
            while (message := await self._call(what, stream.read_out())) is not None:
                chunks.append(message.data)
        info = await self._call(what, execution.inspect())
        return int(info.get("ExitCode") or 0), b"".join(chunks).decode(errors="replace")

    async def _kill_step(self, live: _Live, running: _Exec, grace: float) -> None:
        """SIGTERM the step's session in its container, SIGKILL it after ``grace``."""
        try:
            leader = int(running.pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            leader = 0
        if leader <= 1:
            return  # the wrapper has not started: nothing of the step runs yet
        ticks = str(max(int(grace / _POLL), 0))
        await self._exec_capture(live.container_id, ["sh", "-c", _KILL, "faena-kill",
                                                     str(leader), ticks, running.mark])  # fmt: skip

    async def _oom_reason(self, live: _Live) -> str | None:
        """'out of memory (limit ...)' when the container's cgroup saw a new OOM kill."""
        with contextlib.suppress(ProviderError):
            _, text = await self._exec_capture(live.container_id, ["sh", "-c", _OOM_KILLS])
            kills = _oom_kill_count(text)
            if kills > live.oom_kills:
                live.oom_kills = kills
                limit = live.resources.memory
                where = f"limit {format_size(limit)}" if limit else "no memory limit set"
                return f"out of memory ({where}): the kernel killed a process of this step"
        return None

    def _worker(self, worker_id: str, paths: WorkerPaths, live: _Live) -> Worker:
        info = {
            "container_id": live.container_id,
            "image": live.image,
            "root": str(paths.root),
            "workspace": str(paths.workspace),
            "temp": str(paths.temp),
        }
        if live.services:
            info["services"] = ",".join(sorted(live.services))
        return Worker(worker_id, self.name, str(paths.workspace), info)


def _limits(resources: Resources) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if resources.cpu:
        limits["NanoCpus"] = int(resources.cpu * 1e9)
    if resources.memory:
        limits["Memory"] = resources.memory
        limits["MemorySwap"] = resources.memory  # no swap beyond the limit
    if resources.pids:
        limits["PidsLimit"] = resources.pids
    return limits


def _open_fifos(out: Path, err: Path) -> tuple[int, int, int, int]:
    """FIFOs for a step's stdout and stderr: read ends, then our own write ends, held so that
    a read sees no EOF before the step opened its end."""
    fds: list[int] = []
    try:
        for path in (out, err):
            os.mkfifo(path, 0o600)
        for path in (out, err):
            fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        for path in (out, err):
            fds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        close_fds(*fds)
        raise ProviderError(f"cannot make the step's output pipes: {exc}") from exc
    for path in (out, err):
        # The container's root writes them; no one else on this host may.
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise ProviderError(f"{path} is not a FIFO")
    return fds[0], fds[1], fds[2], fds[3]


def _oom_kill_count(text: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def _describe(state: dict[str, Any]) -> str:
    if not state:
        return "it was removed"
    parts = [str(state.get("Status", "unknown"))]
    if state.get("OOMKilled"):
        parts.append("out of memory")
    if state.get("ExitCode") not in (None, 0):
        parts.append(f"exit code {state.get('ExitCode')}")
    return ", ".join(parts)
