"""A real Docker daemon and the local test images, for the docker provider's tests.

``scripts/start-dockerd`` uses a running daemon or starts Debian's dockerd (as root), and
``scripts/build-images`` builds the images FROM scratch from this host's static binaries.
Without Docker a test skips on a developer's machine and fails in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
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


class PrivateDockerd:
    """A second dockerd of the test's own (socket, data, state and pid file under ``root``),
    which a fault test may stop and start again without touching the shared daemon."""

    def __init__(self) -> None:
        # Short: a unix socket's path (containerd's is under the exec root) has ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="fdd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self._pidfile = self.root / "docker.pid"
        self._log = self.root / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.url}

    def start(self) -> None:
        require_docker()
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            missing("dockerd is not installed (apt-get install docker.io)")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [dockerd, "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self._pidfile),
                 "--bridge=none", "--iptables=false"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        for _ in range(300):
            if self.answers():
                return
            time.sleep(0.1)
        raise AssertionError(f"the private dockerd did not start: {self._log.read_text()[-800:]}")

    def answers(self) -> bool:
        done = subprocess.run(["docker", "-H", self.url, "info"], capture_output=True, timeout=30)
        return done.returncode == 0

    def load(self, image: str) -> None:
        """Copy an image of the shared daemon into this one (no registry here)."""
        saved = subprocess.run(["docker", "save", image], capture_output=True, check=True)
        subprocess.run(
            ["docker", "-H", self.url, "load"], input=saved.stdout, capture_output=True, check=True
        )

    def stop(self) -> None:
        """SIGTERM the daemon, as ``systemctl stop docker`` does, and wait until it is gone."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.url, *args], capture_output=True, text=True, timeout=60
        )

    def destroy(self) -> None:
        """Remove everything the daemon holds, then stop it and delete its files."""
        if self.answers():
            ids = self.docker("ps", "-aq").stdout.split()
            if ids:
                self.docker("rm", "-fv", *ids)
        self.stop()
        subprocess.run(["rm", "-rf", str(self.root)], capture_output=True, timeout=120)
