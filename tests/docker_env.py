"""A real Docker daemon and the local test images, for the docker provider's tests.

``scripts/start-dockerd`` uses a running daemon or starts Debian's dockerd (as root), and
``scripts/build-images`` builds the images FROM scratch from this host's static binaries.
Without Docker a test skips on a developer's machine and fails in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from components import missing

ROOT = Path(__file__).resolve().parent.parent
TOOLS_IMAGE = "faena/test-tools:local"
BUSYBOX_IMAGE = "faena/busybox:local"


@functools.cache
def _prepare() -> str | None:
    """None when the daemon answers and the images exist, else why not."""
    if shutil.which("docker") is None and shutil.which("dockerd") is None:
        return "Docker is not installed (apt-get install docker.io busybox-static bash-static)"
    for script in ("start-dockerd", "build-images"):
        done = subprocess.run(
            [str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            return f"scripts/{script} failed: {done.stderr.strip()[-500:]}"
    return None


def require_docker() -> None:
    """Start dockerd and build the test images if needed; skip (or fail in CI) otherwise."""
    problem = _prepare()
    if problem is not None:
        missing(problem)


def remove_containers(label: str) -> None:
    """Last-resort cleanup of every container carrying ``label`` (key=value)."""
    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    if found:
        subprocess.run(["docker", "rm", "-fv", *found], capture_output=True, timeout=60)


def containers(label: str) -> list[str]:
    """Ids of the containers (any state) carrying ``label``."""
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
