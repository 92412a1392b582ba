"""Finding a worker's processes through this host's /proc, whatever started them (local
processes, or containers of this host's kernel: docker, the fake Kubernetes API's pods)."""

from __future__ import annotations

import os
from pathlib import Path


def processes_with_env(variable: str) -> list[int]:
    """Pids (not ours, not zombies) whose environment holds ``variable``; faena-independent."""
    needle = variable.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if state not in (b"Z", b"X") and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def innermost_pid(pid: int) -> int:
    """A host pid as its own (innermost) pid namespace numbers it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return pid
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid
