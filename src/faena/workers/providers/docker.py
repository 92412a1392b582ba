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

from faena.domain.spec import Resources, ServiceSpec
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    ProviderError,
    RunEnded,
    ServiceOutput,
    Worker,
    WorkerRequest,
)
from faena.workers.providers.container_scripts import (
    DEFAULT_SHELL,
    KEEPALIVE,
    KILL,
    OOM_KILLS,
    WRAPPER,
)
from faena.workers.providers.docker_daemon import DockerDaemon, Unreachable, describe
from faena.workers.providers.exit_codes import EXIT_CANCELLED, EXIT_KILLED, EXIT_TIMED_OUT
from faena.workers.providers.oom import oom_kill_count, oom_reason
from faena.workers.providers.output_pipe import OutputPipe, PipeDrainer, close_fds, wait_for_exit
from faena.workers.providers.service_health import wait_healthy
from faena.workers.providers.service_logs import TAIL_LINES, hand_over
from faena.workers.providers.shells import ShellError, fill_template, parse_shell
from faena.workers.providers.step_result import (
    RunningStep,
    cancel_step,
    emitter,
    failed_to_start,
    result_of,
    told,
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
_POLL = 0.05
_SIGKILL_WAIT = 10.0  # bounds waiting for a killed step before its container is removed


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
    service_output: ServiceOutput | None = None


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
        self._keep_workspace = keep_workspace
        self._kill_grace = kill_grace
        self._daemon = DockerDaemon(url, pull=pull)
        self._workers: dict[str, _Live] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        self._unremoved: dict[str, list[str]] = {}  # worker id -> its known container ids

    # -- the WorkerProvider port -----------------------------------------------------------

    async def create(self, request: WorkerRequest) -> Worker:
        """Start the job container and its services (healthy); idempotent by ``worker_id``."""
        paths = worker_paths(self._root, request.worker_id)
        lock = self._creating.setdefault(request.worker_id, asyncio.Lock())
        async with lock:
            live = self._workers.get(request.worker_id)
            if live is None:
                if self._unremoved:
                    await self._remove_unremoved()
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
            template, suffix = parse_shell(shell) if shell else ([DEFAULT_SHELL, "{0}"], ".sh")
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
            cmd = ["sh", "-c", WRAPPER, "faena-step", str(fifo_out), str(fifo_err), str(pidfile)]
            waiter = asyncio.ensure_future(
                self._daemon.run_exec(live.container_id, [*cmd, *argv], env, str(cwd))
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
            reason = await told(emit, await self._oom_reason(live))
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
            await self._keep_service_logs(live)
        known = [live.container_id, *live.services.values()] if live is not None else []
        try:
            ids = await self._containers_of(worker.worker_id, live is not None)
            for cid in dict.fromkeys([*ids, *known]):
                await self._daemon.remove(cid, stop_only=keep_for is not None)
        except Unreachable as exc:
            if keep_for is not None:
                raise
            # The daemon is down (a restart, say): the job's ending must not wait for it.
            # Removed at the next call that reaches the daemon, or by reap_orphans.
            self._unremoved[worker.worker_id] = known
            log.warning("worker %s: its containers are removed once the docker daemon "
                        "answers again (%s)", worker.worker_id, exc.message)  # fmt: skip
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

    async def close(self) -> None:
        """Remove what an unreachable daemon kept us from removing, then disconnect."""
        await self._remove_unremoved()
        for wid in self._unremoved:
            log.warning("worker %s: the docker daemon never answered again; its containers "
                        "(label %s=%s) remain", wid, LABEL_WORKER, wid)  # fmt: skip
        await self._daemon.close()

    async def _remove_unremoved(self) -> None:
        for wid, known in list(self._unremoved.items()):
            try:
                ids = await self._containers_of(wid, True)
                for cid in dict.fromkeys([*ids, *known]):
                    await self._daemon.remove(cid)
            except ProviderError:
                return  # still down: next time
            del self._unremoved[wid]

    async def reap_orphans(self, ended: RunEnded | None = None) -> int:
        """Remove this owner's containers (and directories) that no live worker of this
        process uses and no ``keep_for`` protects any more (with ``ended``: of runs that
        ended only); returns how many workers."""
        containers = await self._daemon.containers({"label": [f"{LABEL_OWNER}={self.owner}"]})
        now = time.time()
        orphans: set[str] = set()
        for c in containers:
            labels = c.get("Labels") or {}
            wid = labels.get(LABEL_WORKER, "")
            if not wid or wid in self._workers or wid in orphans:
                continue
            if ended is not None and not await ended(labels.get(LABEL_RUN, "")):
                continue
            with contextlib.suppress(ProviderError):
                if reap_after(worker_paths(self._root, wid).root) <= now:
                    orphans.add(wid)
        for wid in orphans:
            await self.destroy(Worker(wid, self.name, ""))
        return len(orphans)

    # -- containers ------------------------------------------------------------------------

    async def _start(self, request: WorkerRequest, paths: WorkerPaths) -> _Live:
        image = request.image or self._image
        try:
            paths.workspace.mkdir(parents=True, exist_ok=True)
            paths.temp.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ProviderError(f"cannot create worker {request.worker_id!r}: {exc}") from exc
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
            "Entrypoint": ["sh", "-c", KEEPALIVE],
            "Cmd": [],
            "WorkingDir": str(paths.workspace),
            "Labels": labels,
            "HostConfig": host,
        }
        name = f"faena-{request.worker_id}"
        container = await self._daemon.create_container(
            config, name, f"cannot create the container of worker {request.worker_id}"
        )
        live = _Live(container.id, image, request.resources, service_output=request.service_output)
        try:
            await self._daemon.call(f"cannot start container {name}", container.start())
            for service in request.services:
                live.services[service.name] = await self._start_service(
                    request, service, container.id
                )
            for service in request.services:
                await self._wait_healthy(service, live.services[service.name])
        except BaseException:
            with contextlib.suppress(Exception):
                await self._keep_service_logs(live)
            for cid in [container.id, *live.services.values()]:
                with contextlib.suppress(Exception):
                    await self._daemon.remove(cid)
            raise
        return live

    async def _start_service(self, request: WorkerRequest, service: ServiceSpec, job: str) -> str:
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
        container = await self._daemon.create_container(config, name, what)
        await self._daemon.call(what, container.start())
        return str(container.id)

    async def _keep_service_logs(self, live: _Live) -> None:
        for name, cid in live.services.items():
            try:
                text = await self._daemon.log_text(cid, TAIL_LINES)
            except ProviderError as exc:
                log.warning("service %s: %s", name, exc.message)
                continue
            await hand_over(live.service_output, name, text)

    async def _wait_healthy(self, service: ServiceSpec, cid: str) -> None:
        """Run the health command until it passes; a service never healthy fails the job."""

        async def exited() -> str | None:
            state = await self._daemon.inspect(cid)
            return None if state.get("Running") else f"exited with code {state.get('ExitCode')}"

        await wait_healthy(
            service,
            exited,
            lambda argv: self._daemon.exec_capture(cid, argv),
            lambda: self._daemon.logs_tail(cid),
        )

    def _labels(self, request: WorkerRequest, role: str) -> dict[str, str]:
        return {
            LABEL_RUN: request.run_id,
            LABEL_JOB: request.job_id,
            LABEL_WORKER: request.worker_id,
            LABEL_OWNER: self.owner,
            LABEL_ROLE: role,
        }

    async def _containers_of(self, worker_id: str, known: bool) -> list[str]:
        try:
            found = await self._daemon.containers({"label": [f"{LABEL_WORKER}={worker_id}"]})
        except Unreachable:
            if not known:
                # Nothing of it was ever started by this process (create failed on the
                # daemon); what another process left, reap_orphans finds later.
                return []
            raise
        return [str(c["Id"]) for c in found]

    async def _kill_step(self, live: _Live, running: _Exec, grace: float) -> None:
        """SIGTERM the step's session in its container, SIGKILL it after ``grace``."""
        try:
            leader = int(running.pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            leader = 0
        if leader <= 1:
            return  # the wrapper has not started: nothing of the step runs yet
        ticks = str(max(int(grace / _POLL), 0))
        await self._daemon.exec_capture(live.container_id, ["sh", "-c", KILL, "faena-kill",
                                                     str(leader), ticks, running.mark])  # fmt: skip

    async def _oom_reason(self, live: _Live) -> str | None:
        """'out of memory (limit ...)' when the container's cgroup saw a new OOM kill; or
        that the container stopped, when it was killed from outside."""
        try:
            code, text = await self._daemon.exec_capture(live.container_id, ["sh", "-c", OOM_KILLS])
        except ProviderError as exc:
            code, text = -1, exc.message
        if code == 0:
            kills = oom_kill_count(text)
            if kills > live.oom_kills:
                live.oom_kills = kills
                return oom_reason(live.resources.memory)
            return None
        # The look itself failed (or was killed with it): the container was killed or
        # removed from outside. Its state may read "running" a moment longer.
        state: dict[str, object] = {}
        for _ in range(40):
            with contextlib.suppress(ProviderError):
                state = await self._daemon.inspect(live.container_id)
            if not state or not state.get("Running"):
                break
            await asyncio.sleep(_POLL)
        if state.get("Running"):
            return None  # it runs on: the step itself was killed
        return f"the worker's container stopped ({describe(state)})"

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
