"""Helpers for black-box tests of the ``faena`` command, run as real subprocesses.

Every test gets its own project directory and its own ``FAENA_HOME`` under ``tmp_path``;
nothing is imported from faena itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The venv's console script if there is one next to the interpreter, else ``python -m faena``.
_SCRIPT = Path(sys.executable).with_name("faena")
FAENA_CMD: list[str] = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "faena"]

DEFAULT_TIMEOUT = 60.0


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has already stopped running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            return "Z" not in line.split(":", 1)[1].split()[0]
    return True


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


@dataclass
class Faena:
    """Runs ``faena`` in ``project`` with ``FAENA_HOME`` set to ``home``."""

    tmp: Path
    project: Path
    home: Path
    env: dict[str, str]
    _started: list[subprocess.Popen[str]] = field(default_factory=list)
    _pid_files: list[Path] = field(default_factory=list)

    def __call__(
        self,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FAENA_CMD, *args],
            cwd=cwd or self.project,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        """Start ``faena`` in the background (its own session, so signals go only to it)."""
        proc = subprocess.Popen(
            [*FAENA_CMD, *args],
            cwd=cwd or self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._started.append(proc)
        return proc

    def watch_pid_file(self, path: Path) -> Path:
        """Kill the process whose pid a step writes to ``path`` when the test ends."""
        self._pid_files.append(path)
        return path

    def write(self, text: str, name: str = "faena.yml") -> Path:
        """Write a pipeline file; ``@TMP@`` becomes the test's tmp dir (outside workspaces)."""
        path = self.project / name
        path.write_text(textwrap.dedent(text).lstrip().replace("@TMP@", str(self.tmp)))
        return path

    def runs(self) -> list[dict[str, Any]]:
        result = self("runs", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def last_run(self) -> dict[str, Any]:
        runs = self.runs()
        assert runs, "faena runs --json lists no run"
        return runs[0]

    def workspaces(self) -> list[Path]:
        """Every directory left under FAENA_HOME/workspaces."""
        root = self.home / "workspaces"
        return sorted(root.iterdir()) if root.is_dir() else []

    # Plain helpers, reachable through the fixture so tests need not import this module.
    pid_alive = staticmethod(pid_alive)
    wait_for = staticmethod(wait_for)
    read_pid = staticmethod(read_pid)

    @staticmethod
    def json_lines(stdout: str) -> list[dict[str, Any]]:
        return json_lines(stdout)

    @staticmethod
    def job(result: dict[str, Any], name: str) -> dict[str, Any]:
        return job_by_name(result, name)

    def cleanup(self) -> None:
        for proc in self._started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for path in self._pid_files:
            pid = read_pid(path)
            if pid is not None and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def faena(tmp_path: Path) -> Iterator[Faena]:
    project = tmp_path / "project"
    home = tmp_path / "home"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    env.update(
        FAENA_HOME=str(home),
        COLUMNS="200",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONUNBUFFERED="1",
        # The machine user's ~/.config/faena/config.toml must not point tests at a server.
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
    )
    runner = Faena(tmp=tmp_path, project=project, home=home, env=env)
    try:
        yield runner
    finally:
        runner.cleanup()


@pytest.fixture
def pipeline(faena: Faena) -> Callable[..., Path]:
    """``pipeline(text, name="faena.yml")`` writes a pipeline file into the project dir."""
    return faena.write


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every non-empty stdout line parsed as JSON (fails the test on the first that is not)."""
    parsed = []
    for number, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:  # pragma: no cover - reported as a failure
            pytest.fail(f"stdout line {number} is not JSON ({exc}): {line!r}")
    return parsed


def job_by_name(result: dict[str, Any], name: str) -> dict[str, Any]:
    for job in result["jobs"]:
        if job["name"] == name:
            return job
    raise AssertionError(f"no job {name!r} in {[j['name'] for j in result['jobs']]}")


SERVER_TOKEN = "e2e-token"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """Start a real ``faena server --with-agent`` (admin token ``e2e-token``) in the given
    environment; returns its URL. Every server is stopped (SIGTERM, then SIGKILL) at the end."""
    import socket
    import urllib.request

    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        log = (tmp_path / f"server-{port}.log").open("wb")
        proc = subprocess.Popen(
            [*FAENA_CMD, "server", "--with-agent", "--port", str(port),
             "--admin-token", SERVER_TOKEN],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    return url
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    output = (tmp_path / f"server-{port}.log").read_text(errors="replace")
                    pytest.fail(f"server did not start: {output}")
                time.sleep(0.1)

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
