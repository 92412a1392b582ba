"""Configuration from the environment (``FAENA_*``), with the same names as CLI flags.

A plain dataclass rather than pydantic-settings: importing pydantic costs ~0.18 s here,
which the CLI's start-up budget cannot afford (docs/decisions.md).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """A FAENA_* variable has a value faena cannot use."""


def _bool(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(".faena"))
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    keep_workspace: bool = False
    database_url: str | None = None
    tenant: str = "default"
    heartbeat_interval: float = 5.0
    metrics_token: str | None = None
    bus_url: str | None = None
    # Where other replicas reach this one's API (followers forward commands to the leader).
    advertise_url: str | None = None
    replica: str | None = None
    # Where this machine's jobs run: "local" processes or "docker" containers.
    provider: str = "local"
    docker_image: str = "debian:bookworm-slim"  # for jobs that name no image
    docker_network: str | None = None  # None: the daemon's default network
    docker_pull: bool = False
    # Named pools, each bound to a provider (docs/pools.md); None: one pool of ``provider``.
    pools: str | None = None

    def replica_name(self) -> str:
        """This replica's stable name: its consumers on the bus are named after it."""
        return self.replica or socket.gethostname()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home.resolve() / 'faena.db'}"

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``FAENA_*`` variables; non-None keyword overrides (CLI flags) win."""
        e = os.environ if env is None else env
        values: dict[str, object] = {}
        if e.get("FAENA_HOME"):
            values["home"] = Path(e["FAENA_HOME"])
        if e.get("FAENA_JOBS"):
            raw = e["FAENA_JOBS"]
            if not raw.strip().isdigit() or int(raw) < 1:
                raise SettingsError(f"FAENA_JOBS must be a whole number >= 1, got {raw!r}")
            values["jobs"] = int(raw)
        if e.get("FAENA_KEEP_WORKSPACE"):
            values["keep_workspace"] = _bool(e["FAENA_KEEP_WORKSPACE"], "FAENA_KEEP_WORKSPACE")
        if e.get("FAENA_HEARTBEAT_INTERVAL"):
            raw = e["FAENA_HEARTBEAT_INTERVAL"]
            try:
                values["heartbeat_interval"] = float(raw)
            except ValueError:
                raise SettingsError(
                    f"FAENA_HEARTBEAT_INTERVAL must be seconds, got {raw!r}"
                ) from None
            if not 0.05 <= float(raw) <= 3600:
                raise SettingsError("FAENA_HEARTBEAT_INTERVAL must be between 0.05 and 3600")
        if e.get("FAENA_BUS_URL"):
            values["bus_url"] = e["FAENA_BUS_URL"]
        if e.get("FAENA_ADVERTISE_URL"):
            values["advertise_url"] = e["FAENA_ADVERTISE_URL"]
        if e.get("FAENA_PROVIDER"):
            values["provider"] = e["FAENA_PROVIDER"]
        if e.get("FAENA_DOCKER_IMAGE"):
            values["docker_image"] = e["FAENA_DOCKER_IMAGE"]
        if e.get("FAENA_DOCKER_NETWORK"):
            values["docker_network"] = e["FAENA_DOCKER_NETWORK"]
        if e.get("FAENA_DOCKER_PULL"):
            values["docker_pull"] = _bool(e["FAENA_DOCKER_PULL"], "FAENA_DOCKER_PULL")
        if e.get("FAENA_POOLS", "").strip():
            values["pools"] = e["FAENA_POOLS"]
        if e.get("FAENA_REPLICA"):
            values["replica"] = e["FAENA_REPLICA"]
        if e.get("FAENA_METRICS_TOKEN"):
            values["metrics_token"] = e["FAENA_METRICS_TOKEN"]
        if e.get("FAENA_DATABASE_URL"):
            values["database_url"] = e["FAENA_DATABASE_URL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
