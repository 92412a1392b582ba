"""Kubernetes workers: one pod per job attempt, steps through the exec API.

A worker is a pod (``kubernetes_pods``) in the configured namespace: the job container
from the job's ``image`` kept alive by a shell loop, the workspace at ``/faena/workspace``
and a private temp dir at ``/faena/temp`` (emptyDir volumes: the agent shares no filesystem
with a pod), and one sidecar container per service. ``create`` watches the pod until every
container runs, failing at once, without retries, on what waiting cannot fix (an image
that cannot be pulled, a pod no node can take, a container that cannot start), then runs
each service's health command in its container through exec, as the docker provider does,
so both report a service that never became healthy with the same message and last output.

Each step is one exec of ``kubernetes_scripts.STEP``: environment and script on stdin,
output relayed from FIFOs inside the pod so background processes never hold the exec open,
``$FAENA_OUTPUT`` sent back at the end. Timeouts and cancels run ``KILL`` through another
exec (the wrapper's pid is in the pod's temp dir). An exit of 137 with a new OOM kill in
the container's cgroup is reported as "out of memory (limit ...)".

Every pod carries ``faena.run``, ``faena.job``, ``faena.worker``, ``faena.owner`` and
``faena.role``; ``destroy`` deletes it (grace 0) and waits until the API no longer has it;
``keep_for`` (and ``keep_workspace``) leave the pod running but idle instead, every process
of its job container killed, annotated with when ``reap_orphans`` may delete it.
Enforced: ``cpu`` and ``memory`` (limits = requests). ``pids`` is not: a pod's pids limit is
the kubelet's ``podPidsLimit``, a node setting that the pod spec cannot ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faena.domain.spec import Resources, ServiceSpec
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputSink,
    PathEscapeError,
    ProviderError,
    RunEnded,
    ServiceOutput,
    Worker,
    WorkerRequest,
)
from faena.workers.providers.container_scripts import (
    DEFAULT_SHELL,
    KILL_FROM_PIDFILE,
    OOM_KILLS,
)
from faena.workers.providers.exit_codes import EXIT_CANCELLED, EXIT_KILLED, EXIT_TIMED_OUT
from faena.workers.providers.kubernetes_api import ApiGone, KubeApi, KubeConnection
from faena.workers.providers.kubernetes_exec import StepRelay
from faena.workers.providers.kubernetes_pods import (
    ANNOTATION_KEPT_UNTIL,
    ANNOTATION_WORKER,
    JOB_CONTAINER,
    LABEL_OWNER,
    LABEL_RUN,
    TEMP,
    WORKSPACE,
    PodSettings,
    label_value,
    pod_manifest,
    pod_name,
    service_container,
)
from faena.workers.providers.kubernetes_scripts import (
    COLLECT,
    EXIT_ESCAPE,
    KILL_ALL,
    STEP,
    bad_env_names,
    payload,
)
from faena.workers.providers.kubernetes_status import (
    container_terminated,
    pod_state,
    terminated_text,
)
from faena.workers.providers.oom import oom_kill_count, oom_reason
from faena.workers.providers.output_pipe import wait_for_exit
from faena.workers.providers.service_health import wait_healthy
from faena.workers.providers.service_logs import TAIL_LINES, hand_over
from faena.workers.providers.shells import ShellError, fill_template, parse_shell
from faena.workers.providers.step_result import (
    RunningStep,
    cancel_step,
    emitter,
    failed_to_start,
    result_from,
    told,
)

__all__ = ["DEFAULT_IMAGE", "KubernetesProvider", "kubernetes_provider_from_env"]

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "debian:bookworm-slim"
_POLL = 0.05
_SIGKILL_WAIT = 10.0  # bounds waiting for a killed step's exec to end


@dataclass
class _Live:
    """A worker this process created: its pod and running execs."""

    pod: str
    image: str
    resources: Resources
    services: tuple[str, ...] = ()
    running: dict[str, _Exec] = field(default_factory=dict)
    oom_kills: int = 0
    service_output: ServiceOutput | None = None


@dataclass
class _Exec(RunningStep):
    stem: str = ""


class KubernetesProvider:
    """Runs each job attempt in a pod of its image, steps through the exec API."""

    name = "kubernetes"
    enforces: frozenset[str] = frozenset({"cpu", "memory"})

    def __init__(
        self,
        *,
        namespace: str = "default",
        image: str = DEFAULT_IMAGE,
        service_account: str | None = None,
        owner: str = "faena",
        connection: KubeConnection | None = None,
        keep_workspace: bool = False,
        kill_grace: float = 5.0,
        create_timeout: float = 300.0,
    ) -> None:
        self.owner = owner
        self.namespace = namespace
        self._settings = PodSettings(namespace, image, owner, service_account)
        self._api = KubeApi(connection or KubeConnection())
        self._keep_workspace = keep_workspace
        self._kill_grace = kill_grace
        self._create_timeout = create_timeout
        self._workers: dict[str, _Live] = {}
        self._creating: dict[str, asyncio.Lock] = {}

    # -- the WorkerProvider port -----------------------------------------------------------

    async def create(self, request: WorkerRequest) -> Worker:
        """Start the worker's pod and wait until it runs and its services are healthy."""
        lock = self._creating.setdefault(request.worker_id, asyncio.Lock())
        async with lock:
            live = self._workers.get(request.worker_id)
            if live is None:
                live = await self._start(request)
                self._workers[request.worker_id] = live
        return self._worker(request.worker_id, live)

    async def exec(self, worker: Worker, request: ExecRequest, sink: OutputSink) -> ExecResult:
        """Run one step in the job container, streaming its lines to ``sink``."""
        started = time.monotonic()
        live = self._workers.get(worker.worker_id)
        if live is None:
            raise ProviderError(f"worker {worker.worker_id!r} does not exist or was destroyed")
        cwd = _lexically_inside(request.working_directory)
        emit = emitter(sink)

        async def fail(exit_code: int, message: str) -> ExecResult:
            return await failed_to_start(emit, started, exit_code, message)

        shell = request.shell if request.shell and request.shell.strip() else None
        try:
            template, suffix = parse_shell(shell) if shell else ([DEFAULT_SHELL, "{0}"], ".sh")
        except ShellError as exc:
            return await fail(exc.exit_code, str(exc))
        if bad := bad_env_names(request.env):
            return await fail(1, f"environment names a shell cannot export: {', '.join(bad)}")
        stem = (re.sub(r"[^A-Za-z0-9_.-]+", "_", request.exec_id)[:40] or "step") + (
            f"-{os.urandom(4).hex()}"
        )
        token = f"faena-{secrets.token_hex(16)}"
        script = f"{TEMP}/{stem}{suffix}"
        argv = fill_template(template, Path(script), pwsh=shell == "pwsh")
        env = {
            **request.env,
            "FAENA_WORKSPACE": WORKSPACE,
            "FAENA_WORKER_ID": worker.worker_id,
            "FAENA_OUTPUT": f"{TEMP}/{stem}.out",
            "FAENA_STEP_MARK": stem,  # finds the step's processes that left its session
        }
        command = ["sh", "-c", STEP, "faena-step", TEMP, stem, token, WORKSPACE, cwd, *argv]
        running = _Exec(stem=stem)
        live.running[request.exec_id] = running
        relay = StepRelay(token, emit)
        finished = False
        stop = None
        try:
            async with self._api.exec(
                self.namespace, live.pod, JOB_CONTAINER, command, stdin=True
            ) as channels:
                await channels.send(payload(token, env, request.script, script))
                waiter = asyncio.ensure_future(relay.run(channels))
                running.tasks.add(waiter)
                try:
                    stop = await wait_for_exit(waiter, running.cancel, request.timeout, [])
                    if stop is not None:
                        await self._kill_step(live, running, self._kill_grace)
                        with contextlib.suppress(TimeoutError, ProviderError):
                            await asyncio.wait_for(asyncio.shield(waiter), _SIGKILL_WAIT)
                        waiter.cancel()
                        exit_code = 0
                    else:
                        exit_code = await waiter
                    finished = True
                finally:
                    if not finished:
                        # Sink failure, provider error or task cancellation: nothing may
                        # outlive it.
                        with contextlib.suppress(Exception):
                            await asyncio.shield(self._kill_step(live, running, 0.0))
                        waiter.cancel()
                    with contextlib.suppress(BaseException):
                        await waiter
                    await channels.close()
        except ProviderError:
            if stop is None and (oom := await told(emit, await self._container_oom(live))):
                return ExecResult(EXIT_KILLED, (time.monotonic() - started) * 1000, reason=oom)
            raise
        finally:
            live.running.pop(request.exec_id, None)
            running.done.set()
        output = relay.output
        reason = None
        if stop is not None:
            exit_code = EXIT_TIMED_OUT if stop == "timed_out" else EXIT_CANCELLED
            output = await self._collect(live, stem)
        elif not relay.step_ended:
            if exit_code == EXIT_ESCAPE:
                raise PathEscapeError(
                    f"working directory {request.working_directory!r} is outside the workspace"
                )
            output = None  # the wrapper stopped before the step: its stderr said why
        elif exit_code == EXIT_KILLED:
            reason = await told(emit, await self._oom_reason(live))
        return await result_from(emit, started, exit_code, stop, output, reason)

    async def cancel(self, worker: Worker, exec_id: str) -> None:
        """Kill a running step's process tree and wait until it is gone; no-op if none."""
        live = self._workers.get(worker.worker_id)
        await cancel_step(live.running.get(exec_id) if live else None)

    async def destroy(self, worker: Worker, keep_for: float | None = None) -> None:
        """Delete the worker's pod and wait until it is gone (with ``keep_for``: leave it
        idle that long); idempotent, also for a worker this process never knew."""
        live = self._workers.pop(worker.worker_id, None)
        self._creating.pop(worker.worker_id, None)
        name = live.pod if live is not None else pod_name(worker.worker_id)
        if live is not None:
            for running in live.running.values():
                running.cancel.set()
            if live.running:
                # Let the steps end as cancelled before their pod goes away.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(r.done.wait() for r in live.running.values())),
                        timeout=self._kill_grace + _SIGKILL_WAIT,
                    )
            await self._keep_service_logs(live)
        if keep_for is not None or self._keep_workspace:
            until = "never" if keep_for is None else f"{time.time() + keep_for:.0f}"
            await self._keep(name, until, known=live is not None)
            return
        try:
            await self._delete(name)
        except ProviderError:
            if live is None:
                # Nothing of it was ever started by this process (create failed on the API);
                # what another process left, reap_orphans finds later.
                return
            raise

    # -- housekeeping ----------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connections to the API server."""
        await self._api.close()

    async def reap_orphans(self, ended: RunEnded | None = None) -> int:
        """Delete this owner's pods that no live worker of this process uses and no
        ``keep_for`` protects any more (with ``ended``: of runs that ended only); returns
        how many."""
        found = await self._api.list_pods(
            self.namespace, labels=f"{LABEL_OWNER}={label_value(self.owner)}"
        )
        mine = {live.pod for live in self._workers.values()}
        now = time.time()
        reaped = 0
        for pod in found.get("items") or []:
            meta = pod.get("metadata") or {}
            name = str(meta.get("name", ""))
            kept = (meta.get("annotations") or {}).get(ANNOTATION_KEPT_UNTIL, "0")
            if not name or name in mine or kept == "never" or _float(kept) > now:
                continue
            run = str((meta.get("labels") or {}).get(LABEL_RUN, ""))
            if ended is not None and not await ended(run):
                continue
            if meta.get("deletionTimestamp") is None and await self._api.delete_pod(
                self.namespace, name
            ):
                reaped += 1
        return reaped

    # -- pods ------------------------------------------------------------------------------

    async def _start(self, request: WorkerRequest) -> _Live:
        manifest = pod_manifest(request, self._settings)
        name = manifest["metadata"]["name"]
        image = manifest["spec"]["containers"][0]["image"]
        try:
            await self._api.create_pod(self.namespace, manifest)
        except ProviderError as exc:
            if "(HTTP 409)" not in str(exc) or not await self._same_worker(name, request):
                raise
        live = _Live(name, image, request.resources, tuple(s.name for s in request.services),
                     service_output=request.service_output)  # fmt: skip
        try:
            await asyncio.wait_for(self._until_running(name), self._create_timeout)
            for service in request.services:
                await self._wait_healthy(name, service)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._keep_service_logs(live))
                await asyncio.shield(self._delete(name))
            raise ProviderError(
                f"pod {self.namespace}/{name} was not running after "
                f"{self._create_timeout:g}s: {await self._describe(name)}"
            ) from None
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._keep_service_logs(live))
                await asyncio.shield(self._delete(name))
            raise
        return live

    async def _keep_service_logs(self, live: _Live) -> None:
        for service in live.services:
            try:
                text = await self._api.pod_log(
                    self.namespace, live.pod, service_container(service), TAIL_LINES,
                    timestamps=True,
                )  # fmt: skip
            except ProviderError as exc:
                log.warning("service %s: %s", service, exc.message)
                continue
            await hand_over(live.service_output, service, text)

    async def _same_worker(self, name: str, request: WorkerRequest) -> bool:
        """A pod of that name exists: it is this worker's (a retried create) or a clash."""
        pod = await self._api.read_pod(self.namespace, name)
        meta = (pod or {}).get("metadata") or {}
        return (meta.get("annotations") or {}).get(ANNOTATION_WORKER) == request.worker_id

    async def _until_running(self, name: str) -> None:
        """Watch the pod until all its containers run; ProviderError on a failure."""
        while True:
            listed = await self._api.list_pods(self.namespace, fields=f"metadata.name={name}")
            items = listed.get("items") or []
            if not items:
                raise ProviderError(f"pod {self.namespace}/{name} vanished while starting")
            if await self._settled(items[0]):
                return
            version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
            async for kind, pod in self._api.watch_pod(self.namespace, name, version, 30.0):
                if kind == "DELETED":
                    raise ProviderError(f"pod {self.namespace}/{name} was deleted while starting")
                if kind in ("ADDED", "MODIFIED") and await self._settled(pod):
                    return

    async def _settled(self, pod: dict[str, Any]) -> bool:
        state = pod_state(pod)
        if state.failure is not None:
            name = pod["metadata"]["name"]
            with contextlib.suppress(ProviderError):
                state = pod_state(pod, await self._api.pod_events(self.namespace, name))
            raise ProviderError(str(state.failure), retryable=state.retryable)
        return state.ready

    async def _wait_healthy(self, name: str, service: ServiceSpec) -> None:
        container = service_container(service.name)

        async def exited() -> str | None:
            ended = container_terminated(await self._api.read_pod(self.namespace, name), container)
            return None if ended is None else f"exited ({terminated_text(ended)})"

        async def tail() -> str:
            with contextlib.suppress(ProviderError):
                text = (await self._api.pod_log(self.namespace, name, container, 20)).strip()
                if text:
                    return f"; its last output:\n{text}"
            return ""

        await wait_healthy(
            service,
            exited,
            lambda argv: self._api.exec_capture(self.namespace, name, container, argv),
            tail,
        )

    async def _delete(self, name: str) -> None:
        """Delete the pod at once and wait until the API no longer has it."""
        if not await self._api.delete_pod(self.namespace, name):
            return
        delay = _POLL
        deadline = time.monotonic() + 60.0
        while await self._api.read_pod(self.namespace, name) is not None:
            if time.monotonic() > deadline:
                raise ProviderError(f"pod {self.namespace}/{name} is still there 60 s after delete")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _keep(self, name: str, until: str, *, known: bool) -> None:
        """Leave the pod running but idle: nothing of the job's runs any more."""
        try:
            await self._api.exec_capture(
                self.namespace, name, JOB_CONTAINER, ["sh", "-c", KILL_ALL]
            )
            await self._api.annotate_pod(self.namespace, name, {ANNOTATION_KEPT_UNTIL: until})
        except ApiGone:
            return
        except ProviderError:
            if known:
                raise

    async def _describe(self, name: str) -> str:
        with contextlib.suppress(ProviderError):
            pod = await self._api.read_pod(self.namespace, name)
            status = (pod or {}).get("status") or {}
            waiting = [
                f"{c.get('name')}: {(c.get('state') or {}).get('waiting', {}).get('reason')}"
                for c in status.get("containerStatuses") or []
                if (c.get("state") or {}).get("waiting")
            ]
            return f"phase {status.get('phase', 'unknown')}" + (
                f", waiting ({'; '.join(waiting)})" if waiting else ""
            )
        return "its state is unknown"

    # -- steps -----------------------------------------------------------------------------

    async def _kill_step(self, live: _Live, running: _Exec, grace: float) -> None:
        """SIGTERM the step's session in the pod, SIGKILL it after ``grace``."""
        ticks = str(max(int(grace / _POLL), 0))
        pidfile = f"{TEMP}/{running.stem}.pid"
        await self._api.exec_capture(
            self.namespace,
            live.pod,
            JOB_CONTAINER,
            ["sh", "-c", KILL_FROM_PIDFILE, "faena-kill", pidfile, ticks, running.stem],
        )

    async def _collect(self, live: _Live, stem: str) -> str | None:
        """A killed step's ``$FAENA_OUTPUT``, its files removed."""
        with contextlib.suppress(ProviderError):
            code, text = await self._api.exec_capture(
                self.namespace, live.pod, JOB_CONTAINER, ["sh", "-c", COLLECT, "c", TEMP, stem]
            )
            return text if code == 0 else None
        return None

    async def _oom_reason(self, live: _Live) -> str | None:
        """'out of memory (limit ...)' when the container's cgroup saw a new OOM kill."""
        with contextlib.suppress(ProviderError):
            _, text = await self._api.exec_capture(
                self.namespace, live.pod, JOB_CONTAINER, ["sh", "-c", OOM_KILLS]
            )
            kills = oom_kill_count(text)
            if kills > live.oom_kills:
                live.oom_kills = kills
                return oom_reason(live.resources.memory)
        return None

    async def _container_oom(self, live: _Live) -> str | None:
        """The reason when the job container itself was OOMKilled (the exec broke)."""
        with contextlib.suppress(ProviderError):
            pod = await self._api.read_pod(self.namespace, live.pod)
            ended = container_terminated(pod, JOB_CONTAINER)
            if ended is not None and ended.get("reason") == "OOMKilled":
                return oom_reason(live.resources.memory).replace(
                    "a process of this step", "the pod"
                )
        return None

    def _worker(self, worker_id: str, live: _Live) -> Worker:
        info = {
            "pod": live.pod,
            "namespace": self.namespace,
            "image": live.image,
            "workspace": WORKSPACE,
            "temp": TEMP,
        }
        if live.services:
            info["services"] = ",".join(sorted(live.services))
        return Worker(worker_id, self.name, WORKSPACE, info)


def kubernetes_provider_from_env(
    environ: dict[str, str] | None = None, *, owner: str = "faena", keep_workspace: bool = False
) -> KubernetesProvider:
    """A provider configured by FAENA_K8S_NAMESPACE, FAENA_K8S_IMAGE,
    FAENA_K8S_SERVICE_ACCOUNT, FAENA_K8S_IN_CLUSTER, FAENA_K8S_CONTEXT and KUBECONFIG."""
    env = dict(os.environ if environ is None else environ)
    in_cluster = env.get("FAENA_K8S_IN_CLUSTER", "").lower() in ("1", "true", "yes")
    connection = KubeConnection(
        kubeconfig=env.get("KUBECONFIG") or None,
        context=env.get("FAENA_K8S_CONTEXT") or None,
        in_cluster=in_cluster,
    )
    return KubernetesProvider(
        namespace=env.get("FAENA_K8S_NAMESPACE") or "default",
        image=env.get("FAENA_K8S_IMAGE") or DEFAULT_IMAGE,
        service_account=env.get("FAENA_K8S_SERVICE_ACCOUNT") or None,
        owner=owner,
        connection=connection,
        keep_workspace=keep_workspace,
    )


def _lexically_inside(relative: str | None) -> str:
    """The step's directory as an absolute path in the pod; symlinks are checked there."""
    target = posixpath.normpath(posixpath.join(WORKSPACE, relative or "."))
    if target != WORKSPACE and not target.startswith(WORKSPACE + "/"):
        raise PathEscapeError(f"working directory {relative!r} is outside the workspace")
    return target


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
