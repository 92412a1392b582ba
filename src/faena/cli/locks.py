"""One process drives a run at a time: an exclusive lock file per run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunLocked(Exception):
    """Another live process holds the run."""


class RunLock:
    def __init__(self, directory: Path, run_id: str) -> None:
        self.path = directory / f"{run_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise RunLocked(f"pid {holder or '?'}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)

    @staticmethod
    def held(directory: Path, run_id: str) -> bool:
        """Whether a live process holds the run's lock."""
        path = directory / f"{run_id}.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
