"""What a job's log lines are under: its steps, then its services."""

from __future__ import annotations

from typing import Any


def step_name(job: dict[str, Any], index: int) -> str:
    """The step (or, past the steps, the service) whose log lines have this index."""
    names = job.get("step_names") or [s.get("name") for s in job.get("steps", [])]
    if index < len(names):
        return str(names[index])
    services = job.get("service_names") or []
    if index - len(names) < len(services):
        return f"service {services[index - len(names)]}"
    return str(index)
