"""Composition root: builds the embedded system from Settings. Adapters are chosen here only."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from faena.agent.embedded import EmbeddedAgent
from faena.agent.remote import AgentConfig, RemoteAgent
from faena.agent.runner import JobRunner
from faena.bus.memory import MemoryBus
from faena.bus.port import EventBus
from faena.bus.relay import OutboxRelay
from faena.domain.events import Event
from faena.domain.states import JobState, RunState
from faena.orchestration.agent_gateway import AgentGateway
from faena.orchestration.control_plane import InProcessControlPlane
from faena.orchestration.debug import DebugBroker
from faena.orchestration.dispatch import Dispatcher
from faena.orchestration.leadership import Leadership, SoleLeader
from faena.orchestration.logs import LogRecorder
from faena.orchestration.orchestrator import Orchestrator
from faena.scheduling.fifo import FifoScheduler
from faena.scheduling.nodes import NodeRegistry
from faena.settings import Settings, SettingsError
from faena.store.port import Store
from faena.store.sql import SqlStore
from faena.workers.autoscaler import Autoscaler
from faena.workers.pool import WorkerPool
from faena.workers.pool_config import PoolConfigError, parse_pools
from faena.workers.pools import PoolSet, breaker_states, build_pool_set
from faena.workers.port import DaemonBackedProvider, ProviderError, Worker, WorkerProvider
from faena.workers.providers.docker import DockerProvider
from faena.workers.providers.local import LocalProvider
from faena.workers.resilient import CallObserver, ResilientProvider

if TYPE_CHECKING:
    from faena.telemetry.metrics import Metrics, MetricsRecorder

NODE_ID = "local"
log = logging.getLogger(__name__)
replica_log = logging.getLogger("faena.replica")  # role changes: shown by `faena server`


def step_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment steps inherit: this process's, less faena's own settings, which
    may hold credentials (database URL, tokens)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith("FAENA_")}


def store_url(settings: Settings) -> str:
    """The store's SQLAlchemy URL: PostgreSQL URLs get the asyncpg driver."""
    url = settings.db_url
    if url.startswith("postgres://") or url.startswith("postgresql://"):
        # asyncpg is the driver: the async engine path of SqlStore.
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def open_store(settings: Settings) -> Store:
    """The store the settings name, not yet opened (for read-only commands)."""
    url = store_url(settings)
    if not url.startswith(("sqlite", "postgresql+asyncpg://")):
        raise SettingsError(
            f"FAENA_DATABASE_URL={url!r}: use sqlite:///path/to/faena.db or "
            "postgresql://user@host:port/database"
        )
    try:
        return SqlStore(url)
    except Exception as exc:
        raise SettingsError(f"FAENA_DATABASE_URL={url!r} is not a usable URL: {exc}") from exc


def open_bus(settings: Settings) -> EventBus:
    """The bus the settings name: in-process, or NATS JetStream (``FAENA_BUS_URL``)."""
    url = settings.bus_url
    if not url:
        return MemoryBus()
    if not url.startswith(("nats://", "tls://")):
        raise SettingsError(f"FAENA_BUS_URL={url!r}: use nats://host:4222")
    from faena.bus.nats import JetStreamBus

    return JetStreamBus(url)


async def check_backends(settings: Settings) -> None:
    """Reach the store and the bus once, so a server that cannot start says why plainly
    (raises FaenaError or ConnectionError) before it listens."""
    store, bus = open_store(settings), open_bus(settings)
    try:
        await store.open()
        await bus.start()
    finally:
        with contextlib.suppress(Exception):
            await bus.close()
        await store.close()


class App:
    """The system: SQL store, in-process bus, FIFO scheduler over the known nodes, and (with
    ``local_agent``) this machine as a node running jobs through local workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        provider: WorkerProvider | None = None,
        local_agent: bool = True,
        metrics: Metrics | None = None,
        bus: EventBus | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.settings = settings
        self.store: Store = store or open_store(settings)
        # Which replica leads orchestration; one process alone leads from the start.
        self.leadership: Leadership = leadership or SoleLeader()
        self.term = 0
        self.deposed: str | None = None  # why this replica stopped leading, if it did
        self.bus: EventBus = bus or open_bus(settings)
        self.relay = OutboxRelay(self.store, self.bus)
        self.orchestrator = Orchestrator(self.store, self.relay, tenant=settings.tenant)
        self.logs = LogRecorder(self.store, self.bus)
        self.scheduler = FifoScheduler(self.bus, self.orchestrator)
        self.registry = NodeRegistry(
            self.scheduler, self.orchestrator, self.bus, interval=settings.heartbeat_interval
        )
        self.dispatcher = Dispatcher(self.bus, local=lambda node_id: node_id == NODE_ID)
        self.registry.on_lost(self.dispatcher.forget)
        self.local = LocalProvider(
            settings.workspaces, keep_workspace=settings.keep_workspace, base_env=step_env()
        )
        self.chosen = provider or worker_provider(
            settings, settings.workspaces, self.local, observer=metrics
        )
        # Warm workers (POST /api/v1/workers) are handed to the next jobs of this node.
        self.pool: WorkerPool | PoolSet = (
            self.chosen if isinstance(self.chosen, PoolSet) else WorkerPool(self.chosen)
        )
        self.provider: WorkerProvider = self.pool
        # Named pools keep their warm workers within [min, max] from demand.
        self.autoscaler = Autoscaler(self.pool) if isinstance(self.pool, PoolSet) else None
        if metrics is not None:
            pool = self.pool
            metrics.add_breaker_source(lambda: breaker_states(pool))
        self.runner = JobRunner(self.provider, InProcessControlPlane(self.orchestrator, self.logs))
        self.local_agent = local_agent
        self.debug = DebugBroker(
            self.orchestrator,
            self.dispatcher,
            local_node=NODE_ID,
            local=self.runner if local_agent else None,
        )
        self.gateway = AgentGateway(self.orchestrator, self.logs, self.debug)
        self.recorder: MetricsRecorder | None = None
        if metrics is not None:
            # Imported here: prometheus_client costs ~0.1 s that `faena run` does not need.
            from faena.telemetry.metrics import MetricsRecorder

            self.recorder = MetricsRecorder(metrics, self.bus)
        self.agent = EmbeddedAgent(self.bus, self.runner, node_id=NODE_ID)

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the backends and lead at once (the embedded shape: one process)."""
        await self.open()
        await self.lead()

    async def open(self) -> None:
        """What every replica needs, leading or not: the store and the bus."""
        await self.store.open()
        await self.bus.start()

    async def lead(self) -> None:
        """Wait for the lease, then run orchestration and scheduling under its term."""
        self.term = await self.leadership.campaign()
        # Made here, not at open: a `faena run` that refuses a shared database leaves none.
        self.settings.home.mkdir(parents=True, exist_ok=True)
        if self.leadership.fenced:
            self.orchestrator.fence = self.term
        if self.recorder is not None:
            await self.recorder.start()
        # In-process subscribers of a dead process are gone with it: nothing to redeliver
        # (``resume`` re-derives what a run needs from its event log). A durable bus's
        # consumers are still there: they get what was committed but never published.
        await self.relay.start(republish=self.settings.bus_url is not None)
        await self.logs.start()
        await self.orchestrator.start()
        await self.scheduler.start()
        await self.dispatcher.start()
        if self.local_agent:
            await self._reap_ended_runs()
            await self.registry.add_local(NODE_ID, self.settings.jobs, self.provider.name)
            await self.agent.start()
            if self.autoscaler is not None:
                self.autoscaler.start()
        await self.registry.start()

    async def _reap_ended_runs(self) -> None:
        """Remove containers or pods an earlier process left for runs that have ended (a
        daemon that was down when they finished, say); other processes' runs go on."""

        async def ended(run_id: str) -> bool:
            run = await self.store.get_run(run_id) if run_id else None
            return run is None or RunState(run["state"]).terminal

        for inner in provider_adapters(self.chosen):
            if isinstance(inner, DaemonBackedProvider):
                try:
                    swept = await inner.reap_orphans(ended)
                except ProviderError as exc:
                    log.warning("could not look for leftover workers: %s", exc.message)
                    continue
                if swept:
                    log.info("removed %d worker(s) of ended runs", swept)

    def begin_shutdown(self) -> None:
        """The server is stopping: agents are not lost for missing it, polls end now."""
        self.registry.pause()
        self.dispatcher.shutdown()

    async def recover(self) -> None:
        """Carry on the runs a stopped server left: jobs of its own node are re-queued,
        jobs on agents wait for their agents (lost if they do not come back in time)."""
        recovery = await self.orchestrator.recover({NODE_ID})
        for placed in recovery.placed:
            self.registry.expect(placed.node_id)
            self.scheduler.restore(placed.job_id, placed.attempt, placed.node_id)
            if placed.state is JobState.SCHEDULED:
                self.dispatcher.post(placed.node_id, "assign", placed.assignment_id, placed.job_id)
            if placed.cancel_requested:
                self.dispatcher.post(placed.node_id, "revoke", placed.assignment_id, placed.job_id)
        if recovery.requests:
            await self.bus.publish(recovery.requests)

    async def close(self, *, force: bool = False) -> None:
        """Stop everything; running jobs are revoked and their workers destroyed.
        ``force`` kills their processes at once instead of after a grace period."""
        if force:
            self.local.hurry()
        await self.leadership.close()
        await self.registry.close()
        await self.agent.close()
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        await self.pool.close()
        await self.local.close()
        for inner in provider_adapters(self.chosen):
            if isinstance(inner, DaemonBackedProvider):
                await inner.close()  # the connection to the daemon or cluster
        await self.dispatcher.close()
        await self.scheduler.close()
        await self.orchestrator.stop()
        await self.logs.close()
        await self.relay.close()
        if self.recorder is not None:
            await self.recorder.close()
        await self.bus.close()
        await self.store.close()

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes jobs can run on, with their capacity and load."""
        return self.registry.listing()

    async def resume(self, run_id: str) -> None:
        """Clean up after the dead process that ran ``run_id``, then carry on with it."""
        row = await self.store.get_run(run_id)
        for job in (row or {}).get("jobs", []):
            if job["state"] in (JobState.SCHEDULED, JobState.RUNNING) and job.get("worker_id"):
                with contextlib.suppress(Exception):
                    await self.local.destroy(Worker(job["worker_id"], "local", ""))
        requested = await self.orchestrator.resume(run_id)
        await self.bus.publish(requested)


PROVIDERS = ("local", "docker", "kubernetes")


def provider_named(
    name: str, settings: Settings, root: Path, local: LocalProvider
) -> WorkerProvider:
    """The bare adapter of provider ``name`` (no timeouts, retries or breaker)."""
    if name == "local":
        return local
    owner = f"{socket.gethostname()}:{root.resolve()}"
    if name == "docker":
        return DockerProvider(
            root / "docker",
            image=settings.docker_image,
            owner=owner,
            network=settings.docker_network,
            pull=settings.docker_pull,
            keep_workspace=settings.keep_workspace,
        )
    if name == "kubernetes":
        # Imported here: kubernetes_asyncio costs start-up time every other run would pay.
        from faena.workers.providers.kubernetes import kubernetes_provider_from_env

        return kubernetes_provider_from_env(owner=owner, keep_workspace=settings.keep_workspace)
    raise SettingsError(f"unknown provider {name!r}: use one of {', '.join(PROVIDERS)}")


def worker_provider(
    settings: Settings, root: Path, local: LocalProvider, *, observer: CallObserver | None = None
) -> WorkerProvider:
    """What runs this node's jobs: the named pools of ``settings.pools`` (a PoolSet), or
    the one ``settings.provider``; every provider but local behind timeouts, retries and a
    breaker (in pools, local too: it shares their routing and fallback)."""
    if settings.pools:
        try:
            configs = parse_pools(settings.pools, providers=PROVIDERS)
        except PoolConfigError as exc:
            raise SettingsError(exc.message) from None
        if not configs:
            raise SettingsError("FAENA_POOLS names no pool (e.g. 'docker:provider=docker')")
        adapters = {c.provider: provider_named(c.provider, settings, root, local) for c in configs}
        return build_pool_set(configs, adapters, observer=observer)
    chosen = provider_named(settings.provider, settings, root, local)
    return chosen if chosen is local else ResilientProvider(chosen, observer=observer)


def provider_adapters(chosen: WorkerProvider) -> list[WorkerProvider]:
    """The bare adapters behind ``chosen`` (through a PoolSet and resilience wrappers)."""
    found: list[WorkerProvider] = []
    layers = [m.pool.provider for m in chosen.members] if isinstance(chosen, PoolSet) else [chosen]
    for layer in layers:
        inner = layer.inner if isinstance(layer, ResilientProvider) else layer
        if all(inner is not f for f in found):
            found.append(inner)
    return found


def build_agent(settings: Settings, config: AgentConfig) -> RemoteAgent:
    """A remote agent running jobs through the provider (or pools) the settings name."""
    home = settings.home / "agent"
    home.mkdir(parents=True, exist_ok=True)
    lock = (home / "lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise SettingsError(
            f"another faena agent runs with FAENA_HOME={settings.home}; give each agent its own"
        ) from None
    local = LocalProvider(
        home / "workspaces", keep_workspace=settings.keep_workspace, base_env=step_env()
    )
    chosen = worker_provider(settings, home / "workspaces", local)

    async def prepare() -> None:
        # A killed agent leaves its jobs' processes (or containers) behind: they must not
        # run on.
        swept = await local.sweep_leftovers()
        for inner in provider_adapters(chosen):
            if isinstance(inner, DaemonBackedProvider):
                swept += await inner.reap_orphans()
        if swept:
            log.warning("removed %d worker(s) a previous agent left behind", swept)

    agent = RemoteAgent(config, chosen, prepare=prepare)
    agent.keep_open = lock  # the lock lives as long as the agent
    return agent


def is_distributed(settings: Settings) -> bool:
    """Whether replicas may share this store (PostgreSQL), so leadership is contended."""
    return settings.db_url.startswith(("postgres://", "postgresql"))


def build_server(
    settings: Settings,
    admin_token: str | None,
    *,
    with_agent: bool = True,
    on_deposed: Callable[[str], None] | None = None,
) -> tuple[Any, App, str | None]:
    """The control plane as an ASGI app; ``with_agent`` makes this machine a node too.

    On PostgreSQL the server is one replica of many: it serves the API at once and leads
    orchestration when it wins the lease; ``on_deposed`` is called if it loses it.
    Returns the app, the system, and the admin token when it was created just now.
    """
    from functools import partial

    from faena.api.agents import agent_router
    from faena.api.app import Wakeup, create_api
    from faena.api.debug import debug_router
    from faena.api.forwarding import LeaderForwarding
    from faena.api.logs import logs_router
    from faena.api.scheduling import schedule_router
    from faena.api.telemetry import telemetry_router
    from faena.api.tokens import tokens_router
    from faena.api.workers import workers_router
    from faena.security.tokens import (
        ADMIN,
        ScopeAuthorizer,
        StoredTokenAuthenticator,
        TokenAuthenticator,
        admin_token_hash,
    )
    from faena.telemetry.asgi import RequestMetrics
    from faena.telemetry.metrics import Metrics

    replica = settings.replica_name()
    own_url = settings.advertise_url or ""
    store = open_store(settings)
    leadership: Leadership | None = None
    if is_distributed(settings):
        if with_agent:
            raise SettingsError(
                "--with-agent runs jobs inside the server process, which replicas sharing "
                "PostgreSQL cannot hand over: run `faena agent` on the worker hosts instead"
            )
        if not admin_token:
            raise SettingsError(
                "replicas share one admin token: give every replica the same --admin-token "
                "or FAENA_ADMIN_TOKEN"
            )
        if not own_url:
            raise SettingsError(
                "replicas on PostgreSQL forward to the leader at its advertised URL: "
                "give --advertise-url or FAENA_ADVERTISE_URL (e.g. http://ci-1.internal:8080)"
            )
        from faena.orchestration.postgres_lease import PostgresLease

        leadership = PostgresLease(store_url(settings), store, replica, own_url)
    metrics = Metrics()
    system = App(
        settings, store=store, local_agent=with_agent, metrics=metrics, leadership=leadership
    )
    depths = getattr(system.bus, "depths", None)
    if depths is not None:
        metrics.add_queue_source(depths)
    digest, created = admin_token_hash(settings.home, admin_token)
    authenticator = StoredTokenAuthenticator(system.store, TokenAuthenticator({digest: ADMIN}))

    wakeup = Wakeup()
    leading = False
    leading_task: asyncio.Task[None] | None = None

    async def notify(_: Event) -> None:
        wakeup.notify()

    def deposed(why: str) -> None:
        nonlocal leading
        if not leading and system.deposed:
            return
        leading = False
        system.deposed = why
        replica_log.error("replica %s no longer leads: %s", replica, why)
        if on_deposed is not None:
            on_deposed(why)

    system.orchestrator.on_deposed = lambda exc: deposed(str(exc))

    async def lead() -> None:
        nonlocal leading
        await system.lead()
        await system.recover()
        if system.deposed:
            return  # a commit of the recovery was refused: another replica leads already
        leading = True
        if system.leadership.fenced:
            replica_log.info("replica %s leads orchestration (term %d)", replica, system.term)

    async def lead_while_elected() -> None:
        try:
            await lead()
            await system.leadership.hold()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("leading failed")
            deposed(f"leading failed: {exc}")
            return
        deposed("another replica took the leadership lease")

    async def stop() -> None:
        system.begin_shutdown()
        if leading_task is not None:
            leading_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await leading_task
        # A stopping server records nothing more: the jobs its own node was running are
        # re-queued when it starts again (recover), not recorded as cancelled.
        await system.orchestrator.stop()
        await system.close()
        await forwarding_client_close()

    async def start() -> None:
        nonlocal leading_task
        await system.open()
        # Per replica: every replica's event streams are woken by every event.
        await system.bus.subscribe(
            "ci.>", notify, durable=f"event-streams-{replica}", ordered=False
        )
        if system.leadership.fenced:
            # Followers serve at once; the lease may take a while (another replica leads).
            leading_task = asyncio.create_task(lead_while_elected(), name="leadership")
        else:
            await lead()

    async def role() -> dict[str, Any]:
        if leading:
            return {"role": "leader", "replica": replica, "term": system.term}
        record = await system.store.leader() if system.leadership.fenced else None
        return {
            "role": "follower",
            "replica": replica,
            "leader": record.url if record is not None else None,
            "term": record.term if record is not None else None,
        }

    async def leader_url() -> str | None:
        record = await system.store.leader()
        return record.url if record is not None else None

    api = create_api(
        orchestrator=system.orchestrator,
        store=system.store,
        authenticator=authenticator,
        authorizer=ScopeAuthorizer(),
        nodes=system.nodes,
        lifespan=start,
        shutdown=stop,
        wakeup=wakeup,
        bus=system.bus,
        why_waiting=system.scheduler.why_waiting,
        role=role,
        routers=[
            partial(
                agent_router,
                gateway=system.gateway,
                registry=system.registry,
                dispatcher=system.dispatcher,
            ),
            partial(tokens_router, store=system.store, authenticator=authenticator),
            partial(logs_router, store=system.store),
            partial(debug_router, broker=system.debug, store=system.store),
            partial(schedule_router, scheduler=system.scheduler, store=system.store),
            partial(
                workers_router,
                pool=system.pool if with_agent else None,
                store=system.store,
                node_id=NODE_ID,
            ),
            partial(
                telemetry_router,
                metrics=metrics,
                store=system.store,
                scrape_token=settings.metrics_token,
            ),
        ],
    )
    forwarding: list[LeaderForwarding] = []

    async def forwarding_client_close() -> None:
        for f in forwarding:
            await f.aclose()

    if system.leadership.fenced:
        api.add_middleware(
            LeaderForwarding,
            leading=lambda: leading,
            leader_url=leader_url,
            own_url=own_url,
            replica=replica,
            on_build=forwarding.append,
        )
    api.add_middleware(RequestMetrics, metrics=metrics)
    return api, system, created
