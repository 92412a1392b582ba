"""A worker's directories on this host, shared by the providers that keep the workspace
here (local processes, and containers that bind-mount it): layout, step files, the
workspace boundary, and removal."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faena.workers.port import PathEscapeError, ProviderError


@dataclass(frozen=True)
class WorkerPaths:
    """A worker's directories: ``workspace`` (the job's files) and ``temp`` (private)."""

    root: Path
    workspace: Path
    temp: Path


def worker_paths(base: Path, worker_id: str) -> WorkerPaths:
    """Where a worker lives under ``base``; its id must be a plain directory name."""
    if not worker_id or worker_id.startswith(".") or "/" in worker_id or "\0" in worker_id:
        raise PathEscapeError(f"worker id {worker_id!r} is not a plain directory name")
    root = base / worker_id
    return WorkerPaths(root=root, workspace=root / "workspace", temp=root / "temp")


def write_step_files(
    paths: WorkerPaths, exec_id: str, script: str, suffix: str
) -> tuple[Path, Path]:
    """The step's script and an empty ``$FAENA_OUTPUT`` file, in the worker's temp dir."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", exec_id)[:48] or "step"
    try:
        fd, script_name = tempfile.mkstemp(suffix, f"{stem}-", paths.temp)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(script)
        Path(script_name).chmod(0o700)  # templates like "{0}" run the script itself
        fd, output_name = tempfile.mkstemp("", f"{stem}-output-", paths.temp)
        os.close(fd)
    except OSError as exc:
        raise ProviderError(f"cannot write step files for {exec_id!r}: {exc}") from exc
    return Path(script_name), Path(output_name)


def inside(workspace: Path, relative: str | None) -> Path:
    """``workspace / relative`` with symlinks resolved; PathEscapeError if it leaves it."""
    base = Path(os.path.realpath(workspace))
    target = Path(os.path.realpath(base / (relative or ".")))
    if target != base and base not in target.parents:
        raise PathEscapeError(f"working directory {relative!r} is outside the workspace")
    return target


_KEPT_UNTIL = "kept-until"  # beside workspace/ and temp/: epoch seconds, for keep-failed


def mark_kept(paths: WorkerPaths, keep_for: float | None) -> None:
    if keep_for is not None and paths.root.is_dir():
        with contextlib.suppress(OSError):
            (paths.root / _KEPT_UNTIL).write_text(f"{time.time() + keep_for:.0f}\n")


def reap_after(root: Path) -> float:
    """When a kept worker's directory may be reaped; 0 (now) for any other."""
    try:
        return float((root / _KEPT_UNTIL).read_text())
    except (OSError, ValueError):
        return 0.0


def rmtree_quietly(path: Path) -> None:
    try:
        rmtree(path)
    except OSError:
        logging.getLogger(__name__).warning("could not remove %s", path, exc_info=True)


def rmtree(path: Path) -> None:
    def retry(function: Callable[..., object], name: str, _exc: object) -> None:
        # Steps may leave read-only directories (Go's module cache does): unlock, retry.
        entry = Path(name)
        with contextlib.suppress(FileNotFoundError):
            entry.parent.chmod(0o700)
            if entry.is_dir() and not entry.is_symlink():
                entry.chmod(0o700)
            function(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
