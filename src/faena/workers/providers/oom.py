"""Telling a step killed for memory from one killed otherwise: the cgroup's OOM counter."""

from __future__ import annotations

from faena.domain.durations import format_size


def oom_kill_count(text: str) -> int:
    """The ``oom_kill`` counter of a cgroup's memory events (v2) or oom_control (v1)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def oom_reason(memory_limit: int) -> str:
    """What a step killed for memory is told, naming the container's limit."""
    where = f"limit {format_size(memory_limit)}" if memory_limit else "no memory limit set"
    return f"out of memory ({where}): the kernel killed a process of this step"
