"""The job fields that say what its worker is: ``resources``, ``services`` (sidecar
containers with health checks) and ``keep-failed``; read by any pipeline reader."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace

from faena.domain.durations import parse_cpu, parse_duration, parse_size
from faena.domain.spec import HealthCheck, Resources, ServiceSpec
from faena.spec.node_reader import NodeReader
from faena.spec.yaml_positions import MappingNode, Node, SequenceNode

__all__ = ["RESOURCES_FIELDS", "EnvReader", "WorkerFieldsReader"]

RESOURCES_FIELDS = ("cpu", "memory", "gpu", "pids")
SERVICE_FIELDS = ("image", "env", "command", "health")
HEALTH_FIELDS = ("cmd", "interval", "timeout", "retries")
MAX_KEEP_FAILED = 7 * 24 * 3600.0

# Reads an ``env`` mapping (with the reader's expression rules) at a path.
EnvReader = Callable[[Node, str], dict[str, str]]


class WorkerFieldsReader(NodeReader):
    """Checks of the worker fields; the format's reader supplies how ``env`` is read."""

    def resources(self, node: Node, path: str) -> Resources:
        resources = self.mapping(node, path, RESOURCES_FIELDS)
        if resources is None:
            return Resources()
        items = resources.items
        cpu, memory, gpu, pids = 0.0, 0, 0, 0
        if "cpu" in items:
            cpu = self.quantity(items["cpu"], f"{path}.cpu", parse_cpu) or 0.0
        if "memory" in items:
            memory = self.quantity(items["memory"], f"{path}.memory", parse_size) or 0
        if "gpu" in items:
            gpu = self.integer(items["gpu"], f"{path}.gpu", 0) or 0
        if "pids" in items:
            pids = self.integer(items["pids"], f"{path}.pids", 1) or 0
        return Resources(cpu=cpu, memory=memory, gpu=gpu, pids=pids)

    def services(self, node: Node, path: str, env: EnvReader) -> list[ServiceSpec]:
        """``services``: containers next to the job, by name (docker and kubernetes)."""
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of service names to services")
            return []
        found: list[ServiceSpec] = []
        for name, value in node.items.items():
            where = f"{path}.{name}"
            if not self.identifier(node.keys[name], where, "service name", name):
                continue
            service = self.mapping(value, where, SERVICE_FIELDS)
            if service is None:
                continue
            items = service.items
            if "image" not in items:
                self.issue(service, where, "missing required field 'image'")
                continue
            image = self.string(items["image"], f"{where}.image")
            values = env(items["env"], f"{where}.env") if "env" in items else {}
            command = None
            if "command" in items:
                command = self.command(items["command"], f"{where}.command")
            health = self.health(items["health"], f"{where}.health") if "health" in items else None
            if image is not None:
                found.append(ServiceSpec(name, image, values, command, health))
        return found

    def command(self, node: Node, path: str) -> list[str] | None:
        """A command as a list of words, or one string split as a shell would."""
        if isinstance(node, SequenceNode):
            words = [
                self.string(item, f"{path}[{i}]", empty=True) for i, item in enumerate(node.items)
            ]
            return [w for w in words if w is not None]
        text = self.string(node, path)
        if text is None:
            return None
        try:
            return shlex.split(text)
        except ValueError as exc:
            self.issue(node, path, f"cannot split the command: {exc}")
            return None

    def health(self, node: Node, path: str) -> HealthCheck | None:
        health = self.mapping(node, path, HEALTH_FIELDS)
        if health is None:
            return None
        items = health.items
        cmd = None
        if "cmd" not in items:
            self.issue(
                health,
                path,
                "missing required field 'cmd' (a shell command that exits 0 when ready)",
            )
        else:
            cmd = self.string(items["cmd"], f"{path}.cmd")
        check = HealthCheck(cmd or "")
        durations: dict[str, float] = {}
        for key in ("interval", "timeout"):
            if key in items:
                seconds = self.quantity(items[key], f"{path}.{key}", parse_duration)
                if seconds is not None and seconds <= 0:
                    self.issue(items[key], f"{path}.{key}", "must be greater than zero")
                elif seconds is not None:
                    durations[key] = seconds
        check = replace(
            check,
            interval=durations.get("interval", check.interval),
            timeout=durations.get("timeout", check.timeout),
        )
        if "retries" in items:
            retries = self.integer(items["retries"], f"{path}.retries", 1, 10_000)
            if retries is not None:
                check = replace(check, retries=retries)
        return check if cmd else None

    def keep_failed(self, node: Node, path: str) -> float | None:
        seconds = self.quantity(node, path, parse_duration)
        if seconds is not None and not 0 < seconds <= MAX_KEEP_FAILED:
            self.issue(node, path, "must be greater than zero and at most 7d")
            return None
        return seconds
