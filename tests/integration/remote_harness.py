"""Real `faena server` and `faena agent` processes on 127.0.0.1, for the distributed shape.

Each process writes its output to a file under the test's tmp dir (shown when a test
fails); heartbeats are fast (FAENA_HEARTBEAT_INTERVAL) so node loss takes about a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_SCRIPT = Path(sys.executable).with_name("faena")
FAENA_CMD: list[str] = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "faena"]
ADMIN = "remote-admin-token"
HEARTBEAT = "0.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    env.update(extra)
    return env


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


@dataclass
class Proc:
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        out.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """Only the process itself, like a machine losing it: its step processes live on."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with_group = os.getpgid(self.proc.pid)
        os.killpg(with_group, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def halt(self, how: str) -> None:
        """``kill -9`` (the process and its group, like a machine losing it) or ``SIGTERM``
        (a clean stop: uvicorn then re-raises the signal, the usual exit for SIGTERM)."""
        assert self.proc is not None
        if how == "kill -9":
            os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
            self.proc.wait(timeout=10)
        else:
            self.stop()
            assert self.proc.returncode in (0, -signal.SIGTERM), self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start(procs: list[Proc], p: Proc) -> Proc:
    """Start ``p``, noted in ``procs`` (the fixture stops them all after the test)."""
    procs.append(p)
    p.start()
    return p


@dataclass
class Server(Proc):
    url: str = ""
    home: Path = field(default_factory=Path)
    http: httpx.Client | None = None

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc is not None
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"server did not start:\n{self.output()}")
            time.sleep(0.1)
        if self.http is None:
            self.http = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
            )

    def api(self, method: str, path: str, **kw: Any) -> Any:
        assert self.http is not None
        r = self.http.request(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def submit(self, yaml_text: str) -> str:
        created = self.api("POST", "/api/v1/pipelines", content=yaml_text.encode(),
                           headers={"Content-Type": "application/yaml"})  # fmt: skip
        return str(created["run_id"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v1/pipelines/{run_id}"))

    def wait_run(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            row = self.run(run_id)
            return row if row["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        result: dict[str, Any] = wait_until(done, timeout, f"run {run_id} to finish")
        return result

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/api/v1/nodes")["items"])

    def agent_token(self, name: str) -> str:
        made = self.api("POST", "/api/v1/tokens", json={"name": name, "kind": "agent"})
        return str(made["token"])

    def logs(self, run_id: str) -> list[str]:
        """Output lines of the run, read from the server's store by `faena logs`."""
        done = subprocess.run(
            [*FAENA_CMD, "logs", run_id], env=clean_env(FAENA_HOME=str(self.home)),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.stdout.splitlines()


def make_server(tmp: Path, *, with_agent: bool = False, port: int | None = None) -> Server:
    port = port or free_port()
    home = tmp / "server-home"
    args = [*FAENA_CMD, "server", "--port", str(port), "--admin-token", ADMIN]
    if with_agent:
        args.append("--with-agent")
    env = clean_env(FAENA_HOME=str(home), FAENA_HEARTBEAT_INTERVAL=HEARTBEAT)
    return Server(args, env, tmp / "server.log", url=f"http://127.0.0.1:{port}", home=home)


def make_agent(
    tmp: Path,
    server: Server,
    name: str,
    *,
    labels: str = "",
    slots: int = 2,
    also: tuple[Server, ...] = (),
) -> Proc:
    """An agent of ``server`` (and of the replicas ``also``, tried when it is unreachable)."""
    token = server.agent_token(name)
    urls = ",".join(s.url for s in (server, *also))
    args = [*FAENA_CMD, "agent", "--server", urls, "--token", token, "--name", name,
            "--jobs", str(slots)]  # fmt: skip
    if labels:
        args += ["--labels", labels]
    env = clean_env(FAENA_HOME=str(tmp / f"agent-{name}"))
    return Proc(args, env, tmp / f"agent-{name}.log")


def make_replica(tmp: Path, name: str, database_url: str, bus_url: str) -> Server:
    """One `faena server` replica of several sharing PostgreSQL and NATS."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp / f"replica-{name}"
    args = [*FAENA_CMD, "server", "--port", str(port), "--admin-token", ADMIN,
            "--replica", name, "--advertise-url", url]  # fmt: skip
    env = clean_env(
        FAENA_HOME=str(home),
        FAENA_HEARTBEAT_INTERVAL=HEARTBEAT,
        FAENA_DATABASE_URL=database_url,
        FAENA_BUS_URL=bus_url,
    )
    return Server(args, env, tmp / f"replica-{name}.log", url=url, home=home)


def role(server: Server) -> str | None:
    """``leader`` or ``follower`` as the replica's /readyz says; None if it does not answer."""
    try:
        r = httpx.get(f"{server.url}/readyz", timeout=1)
    except httpx.HTTPError:
        return None
    return str(r.json().get("role")) if r.status_code == 200 else None
