"""``faena agent``: make this machine a node of a faena server."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import signal
import socket
import sys
from dataclasses import replace

import httpx

from faena.settings import Settings, SettingsError

_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_capacity(text: str | None) -> dict[str, str]:
    """``cpu=2,memory=4Gi`` -> {"cpu": "2", "memory": "4Gi"}."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(f"--capacity: expected key=value, got {part!r}")
        if not LABEL.fullmatch(key.strip()) or not LABEL.fullmatch(value.strip()):
            raise SettingsError(f"--capacity: {part!r}: names and values are like cpu=4")
        out[key.strip()] = value.strip()
    return out


def default_labels(provider: str) -> list[str]:
    """Labels every agent has, like GitHub's runners: OS, architecture, provider."""
    machine = platform.machine().lower()
    return [platform.system().lower(), _ARCH.get(machine, machine), provider]


def server_url(text: str) -> str:
    """One ``--server`` URL, checked now: a typo in a replica's URL must not wait for the
    failover it is there for."""
    hint = "expected a URL like http://ci.example:8080 (several replicas: comma-separated)"
    if not text:
        raise SettingsError(f"--server: an empty URL in the list; {hint}")
    if not re.fullmatch(r"https?://[^\s/,]+(/[^\s,]*)?", text):
        raise SettingsError(f"--server {text!r}: {hint}")
    try:
        parsed = httpx.URL(text)
        port = parsed.port  # raises for a port out of range
    except (httpx.InvalidURL, ValueError) as exc:
        raise SettingsError(f"--server {text!r}: {exc}; {hint}") from None
    if not parsed.host:
        raise SettingsError(f"--server {text!r}: no host; {hint}")
    if port is not None and not 1 <= port <= 65535:
        raise SettingsError(f"--server {text!r}: port {port} is not 1-65535")
    return text


def pool_labels(settings: Settings) -> list[str]:
    """The default labels of the agent's provider, or of each of its pools' providers plus
    the labels the pools serve (jobs are sent to agents by these)."""
    if not settings.pools:
        return default_labels(settings.provider)
    from faena.workers.pool_config import PoolConfigError, parse_pools

    try:
        pools = parse_pools(settings.pools)
    except PoolConfigError as exc:
        raise SettingsError(exc.message) from None
    found: list[str] = []
    for pool in pools:
        found += [*default_labels(pool.provider), *sorted(pool.labels)]
    return list(dict.fromkeys(found))


def agent_command(
    *,
    server: str | None,
    token: str | None,
    name: str | None,
    labels: str | None,
    capacity: str | None,
    provider: str | None,
    jobs: int | None,
) -> int:
    from faena.agent.remote import AgentConfig
    from faena.app import build_agent

    url = server or os.environ.get("FAENA_SERVER")
    secret = token or os.environ.get("FAENA_TOKEN")
    if not url:
        raise SettingsError("no server: give --server URL or set FAENA_SERVER")
    if not secret:
        raise SettingsError("no token: give --token T or set FAENA_TOKEN (an agent token)")
    servers = [server_url(u.strip()) for u in url.split(",")]
    cap = parse_capacity(capacity)
    given = [x.strip() for x in (labels or "").split(",") if x.strip()]
    for label in given:
        if not LABEL.fullmatch(label):
            raise SettingsError(
                f"--labels: {label!r} is not a label (letters, digits, '.', '_', '-'; at most 64)"
            )
    # An explicit --provider wins over FAENA_POOLS; pools add the labels they serve.
    settings = Settings.from_env(jobs=jobs, provider=provider, pools="" if provider else None)
    every = list(dict.fromkeys([*given, *pool_labels(settings)]))
    slots = jobs
    if "cpu" in cap:
        cpu = cap["cpu"]
        if not cpu.isdigit() or not 1 <= int(cpu) <= 1024:
            raise SettingsError(f"--capacity cpu={cpu}: expected a whole number from 1 to 1024")
        if slots is None:
            slots = int(cpu)
    settings = replace(settings, jobs=slots or settings.jobs)
    config = AgentConfig(
        server=servers[0],
        fallbacks=tuple(servers[1:]),
        token=secret,
        name=name or socket.gethostname(),
        labels=tuple(every),
        slots=settings.jobs,
        capacity=cap,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # One line per HTTP request would bury what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = build_agent(settings, config)
    print(
        f"faena agent {config.name}: {config.slots} slot(s), labels {', '.join(every)}; "
        f"server {url}",
        file=sys.stderr,
    )
    return asyncio.run(_serve(agent))


async def _serve(agent: object) -> int:
    from faena.agent.http_control_plane import Refused
    from faena.agent.remote import RemoteAgent

    assert isinstance(agent, RemoteAgent)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(agent.run_forever())
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        waiter.cancel()
        try:
            runner.result()
        except Refused as exc:
            print(f"error: the server refuses this agent: {exc}", file=sys.stderr)
            await agent.stop()
            return 2
        return 1
    print("faena agent: stopping (its jobs move to other nodes)", file=sys.stderr)
    await agent.stop()
    runner.cancel()
    return 0
