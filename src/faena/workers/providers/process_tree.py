"""Finding and killing a step's whole process tree on this host, through /proc.

A step is a process group and session leader; what leaves both (``setsid``) is still found
by the ``FAENA_WORKER_ID=<worker_id>`` its environment carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

POLL_INTERVAL = 0.02

SIGKILL_WAIT = 5.0  # SIGKILL cannot be ignored; this only bounds waiting on D-state processes

_KILL_SWEEPS = 50


def kill_worker_processes(worker_id: str, grace: float) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds, every process whose environment holds
    ``FAENA_WORKER_ID=<worker_id>``; return how many were signalled (0 without /proc)."""
    if not worker_id:
        raise ValueError("worker_id must not be empty")
    needle = f"FAENA_WORKER_ID={worker_id}".encode()
    signalled: set[int] = set()

    def sweep(sig: signal.Signals, skip: set[int]) -> set[int]:
        found = _pids_with_env(needle)
        for pid in found - skip:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                if sig == signal.SIGTERM:
                    os.kill(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only then
        signalled.update(found)
        return found

    found, unsure = _scan(needle)
    if not found:
        if not unsure:
            return 0  # the common case: nothing left, and no process we could have missed
        # A process inside execve() shows an empty environment for a moment: look again.
        time.sleep(POLL_INTERVAL)
        if not sweep(signal.SIGTERM, set()):
            return 0
    else:
        sweep(signal.SIGTERM, set())
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        # Also catches children forked after the first sweep.
        if not sweep(signal.SIGTERM, set(signalled)):
            return len(signalled)
    for _ in range(_KILL_SWEEPS):  # bounded: a fork loop could otherwise keep us here
        if not sweep(signal.SIGKILL, set()):
            break
        time.sleep(POLL_INTERVAL)
    return len(signalled)


async def kill_tree(leader: int, grace: float) -> None:
    """SIGTERM what a step started, SIGKILL it after ``grace`` s; return once it is gone."""
    if not await asyncio.to_thread(signal_tree, leader, signal.SIGTERM, signal.SIGCONT):
        return
    if await _wait_gone(leader, grace):
        return
    await asyncio.to_thread(signal_tree, leader, signal.SIGKILL)
    await _wait_gone(leader, SIGKILL_WAIT)


async def _wait_gone(leader: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(tree_alive, leader):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)
    return True


def signal_tree(leader: int, *signals: signal.Signals) -> bool:
    """Signal the step's process group and session; False if nobody was there."""
    # The session also holds what left the group (``timeout(1)``, ``set -m`` jobs); only
    # ``setsid`` leaves both, and destroy's environment scan catches that.
    members = _tree_members(leader) or []
    sent = False
    for sig in signals:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, sig)
            sent = True
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent = True
    return sent


def group_empty(leader: int) -> bool:
    """Cheap check for the common case: no process at all is left in the step's group.

    Processes that only kept the session (rare) are found by destroy's environment scan.
    """
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def tree_alive(leader: int) -> bool:
    """True while a process of the step's group or session is alive (zombies do not count)."""
    members = _tree_members(leader)
    if members is not None:
        return bool(members)
    try:  # no /proc: killpg cannot tell zombies apart, but it is all there is
        os.killpg(leader, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tree_members(leader: int) -> list[int] | None:
    """Live pids whose process group or session is ``leader``'s; None without /proc."""
    if not _has_proc():
        return None
    wanted = str(leader)
    members = []
    for pid in _proc_pids():
        fields = _stat_fields(pid)
        # Orphans whose reaper never reaps (PID 1 in many containers) stay zombies forever.
        if fields and fields[0] not in ("Z", "X") and wanted in (fields[2], fields[3]):
            members.append(pid)
    return members


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def _proc_pids() -> list[int]:
    try:
        return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from the state field on: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    return data[data.rfind(b")") + 2 :].decode("ascii", errors="replace").split()


def _pids_with_env(needle: bytes) -> set[int]:
    return _scan(needle)[0]


def _scan(needle: bytes) -> tuple[set[int], bool]:
    """Pids whose environment holds ``needle``, and whether some live user process showed
    an empty environment (one inside execve() does for a moment, so it may be ours)."""
    if not _has_proc():
        return set(), False
    me = os.getpid()
    found: set[int] = set()
    unsure = False
    for pid in _proc_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue  # gone, or another user's process
        if not environ:
            # Zombies and kernel threads read as empty too; only others are in doubt.
            unsure = unsure or _live_user_process(pid)
        elif needle in environ.split(b"\0"):
            found.add(pid)
    return found, unsure


_PF_KTHREAD = 0x00200000


def _live_user_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != b"Z" and not int(fields[6]) & _PF_KTHREAD
