"""The CLI as a client, for output: ``submit --follow``, ``logs [-f]`` through a server,
the config file and ``--json``. A real ``faena server --with-agent`` subprocess on
127.0.0.1, driven by the real ``faena`` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Helpers copied from test_e2e_client.py rather than imported: `from conftest import ...`
# finds another directory's conftest when pytest is given several test directories.
_SCRIPT = Path(sys.executable).with_name("faena")
FAENA_CMD: list[str] = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "faena"]
TOKEN = "e2e-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FAENA_CMD, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


TWO_JOBS = """\
name: two
jobs:
  a:
    steps:
      - name: greet
        run: echo "hello from a"; echo "warning from a" >&2
      - run: echo "second step"
  b:
    needs: a
    steps:
      - name: break
        run: echo "about to fail"; exit 3
"""


@dataclass
class Server:
    url: str
    home: Path  # the server's FAENA_HOME
    env: dict[str, str]  # a client's environment: FAENA_SERVER and FAENA_TOKEN set
    cwd: Path


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[[dict[str, str]], str]) -> Server:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    # No config file of the machine's user leaks in.
    base.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "user"),
                PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb")  # fmt: skip
    home = tmp_path / "server-home"
    url = start_server({**base, "FAENA_HOME": str(home)})
    cwd = tmp_path / "client"
    cwd.mkdir()
    return Server(url, home, {**base, "FAENA_SERVER": url, "FAENA_TOKEN": TOKEN}, cwd)


class Lines:
    """A background ``faena`` whose stdout lines are collected as they come."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen([*FAENA_CMD, *args], env=env, cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str, timeout: float = 60) -> bool:
        return wait_for(lambda: any(text in ln for ln in self.lines), timeout=timeout)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def gated(gate: Path, name: str = "slow") -> str:
    """A one-job pipeline that prints a line, waits for ``gate`` to exist, prints another."""
    return f"""\
jobs:
  {name}:
    steps:
      - name: wait
        run: |
          echo "tick 1"
          while [ ! -e {gate} ]; do sleep 0.05; done
          echo "tick 2"
"""


def submitted(server: Server, text: str, name: str = "p.yml") -> str:
    (server.cwd / name).write_text(text)
    r = cli(server.env, server.cwd, "submit", name, "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["run_id"])


def finished(server: Server, text: str = TWO_JOBS) -> str:
    (server.cwd / "p.yml").write_text(text)
    r = cli(server.env, server.cwd, "submit", "p.yml", "--follow", "--json")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return str(json_lines(r.stdout)[-1]["run_id"])


def test_submit_follow_shows_states_and_step_output(server: Server) -> None:
    (server.cwd / "two.yml").write_text(TWO_JOBS)
    r = cli(server.env, server.cwd, "submit", "two.yml", "--follow")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    for expected in ("a | hello from a", "a | warning from a", "a | --- greet",
                     "a | second step", "b | about to fail", "b | --- break",
                     "▶ a started", "✓ a succeeded", "✗ b failed"):  # fmt: skip
        assert expected in out, f"{expected!r} not in:\n{out}"
    # A job's output comes after its start and before its end.
    assert out.index("▶ a started") < out.index("a | hello from a") < out.index("✓ a succeeded")
    assert out.index("b | about to fail") < out.index("✗ b failed")
    assert "✗ run " in out and " failed" in out.splitlines()[-3]
    assert "Traceback" not in r.stderr

    (server.cwd / "ok.yml").write_text("jobs:\n  only:\n    steps: [{run: echo fine}]\n")
    ok = cli(server.env, server.cwd, "submit", "ok.yml", "--follow", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    events = json_lines(ok.stdout)
    assert events[-1]["type"] == "result" and events[-1]["state"] == "SUCCEEDED"
    logs = [e for e in events if e["type"] == "log"]
    assert [(e["job"], e["stream"], e["text"]) for e in logs] == [("only", "stdout", "fine")]
    states = [e["state"] for e in events if e["type"] == "job"]
    assert states[-1] == "SUCCEEDED"


def test_submit_follow_cancelled_run_exits_130(server: Server, tmp_path: Path) -> None:
    (server.cwd / "slow.yml").write_text(gated(tmp_path / "never"))
    follower = Lines(server.env, server.cwd, "submit", "slow.yml", "--follow")
    assert follower.saw("slow | tick 1"), follower.lines
    assert cli(server.env, server.cwd, "cancel", "last").returncode == 0
    assert follower.wait() == 130, follower.lines
    assert any("was cancelled" in ln for ln in follower.lines)


def test_ctrl_c_stops_following_not_the_run(server: Server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (server.cwd / "slow.yml").write_text(gated(gate))
    follower = Lines(server.env, server.cwd, "submit", "slow.yml", "--follow")
    assert follower.saw("slow | tick 1"), follower.lines
    follower.proc.send_signal(signal.SIGINT)
    assert follower.wait() == 130
    assert "stopped following" in follower.stderr and "Traceback" not in follower.stderr
    status = cli(server.env, server.cwd, "status", "last", "--json")
    assert json.loads(status.stdout)["state"] == "RUNNING"
    # logs -f too: Ctrl-C leaves the run alone.
    tail = Lines(server.env, server.cwd, "logs", "-f", "last")
    assert tail.saw("tick 1"), tail.lines
    tail.proc.send_signal(signal.SIGINT)
    assert tail.wait() == 130
    assert "Traceback" not in tail.stderr
    assert (
        json.loads(cli(server.env, server.cwd, "status", "last", "--json").stdout)["state"]
        == "RUNNING"
    )
    gate.touch()
    done = cli(server.env, server.cwd, "logs", "-f", "last")
    assert done.returncode == 0 and "tick 2" in done.stdout


def test_logs_follow_prints_lines_as_they_come_and_ends_with_the_run(
    server: Server, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = submitted(server, gated(gate))
    tail = Lines(server.env, server.cwd, "logs", "-f", run_id[:6], "slow", "-t")
    assert tail.saw("tick 1"), tail.lines
    time.sleep(1)  # several polls: still following, nothing new
    assert tail.proc.poll() is None
    assert not any("tick 2" in ln for ln in tail.lines)
    gate.touch()
    assert tail.wait(timeout=30) == 0, tail.stderr
    assert tail.lines[:2] == ["=== slow [RUNNING]", "--- wait"]
    assert tail.lines[2].endswith(" tick 1") and tail.lines[3].endswith(" tick 2")
    assert len(tail.lines) == 4


def test_local_logs_follow_while_faena_run_runs(faena: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    faena.write(gated(gate))
    runner = faena.popen("run")
    assert faena.wait_for(lambda: bool(faena.runs()), timeout=30)
    env = {**faena.env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    tail = Lines(env, faena.project, "logs", "-f", "last")
    assert tail.saw("tick 1"), tail.lines
    assert tail.proc.poll() is None
    gate.touch()
    assert tail.wait(timeout=30) == 0, tail.stderr
    assert tail.lines == ["=== slow [RUNNING]", "--- wait", "tick 1", "tick 2"]
    assert runner.wait(timeout=30) == 0


def test_remote_logs_equal_local_logs(server: Server) -> None:
    run_id = finished(server)
    local_env = {k: v for k, v in server.env.items() if k not in ("FAENA_SERVER", "FAENA_TOKEN")}
    local_env["FAENA_HOME"] = str(server.home)
    for args in ([run_id], [run_id[:7], "-t"], [run_id, "b"], ["last", "--json"],
                 [run_id, "a", "--json", "-t"], [run_id, "-f"]):  # fmt: skip
        remote = cli(server.env, server.cwd, "logs", *args)
        local = cli(local_env, server.cwd, "logs", *args)
        assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
        assert remote.stdout == local.stdout, args
        assert remote.stdout.strip()
    whole = cli(server.env, server.cwd, "logs", run_id).stdout
    assert whole.splitlines()[:4] == ["=== a [SUCCEEDED]", "--- greet", "hello from a",
                                      "warning from a"]  # fmt: skip
    # --local reads FAENA_HOME even with a server configured.
    forced = cli({**server.env, "FAENA_HOME": str(server.home)}, server.cwd, "logs", "--local",
                 run_id)  # fmt: skip
    assert forced.stdout == whole
    for args in (["zzzz"], [run_id, "gamma"]):
        remote = cli(server.env, server.cwd, "logs", *args)
        local = cli(local_env, server.cwd, "logs", *args)
        assert remote.returncode == local.returncode == 2
        assert args[-1] in remote.stderr and args[-1] in local.stderr
        assert "Traceback" not in remote.stderr + local.stderr


def test_config_file_is_used(server: Server, tmp_path: Path) -> None:
    run_id = finished(server)
    bare = {k: v for k, v in server.env.items() if k not in ("FAENA_SERVER", "FAENA_TOKEN")}
    config = tmp_path / "xdg" / "faena" / "config.toml"  # the default place
    config.parent.mkdir(parents=True)
    config.write_text(f'server = "{server.url}"\ntoken = "{TOKEN}"\n')
    config.chmod(0o600)
    for args in (["status", run_id], ["logs", run_id], ["runs"], ["nodes"]):
        r = cli(bare, server.cwd, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stderr == "", r.stderr
    assert "hello from a" in cli(bare, server.cwd, "logs", run_id).stdout
    # Readable by others: a warning, not a refusal.
    config.chmod(0o644)
    loose = cli(bare, server.cwd, "status", run_id)
    assert loose.returncode == 0
    assert "chmod 600" in loose.stderr and str(config) in loose.stderr
    # FAENA_CONFIG names another file; a profile picks a section of it.
    other = tmp_path / "other.toml"
    other.write_text(f'[profiles.here]\nserver = "{server.url}"\ntoken = "{TOKEN}"\n')
    other.chmod(0o600)
    named = {**bare, "FAENA_CONFIG": str(other)}
    assert cli(named, server.cwd, "status", run_id).returncode != 0  # no server here
    assert cli(named, server.cwd, "status", run_id, "--profile", "here").returncode == 0
    assert cli({**named, "FAENA_PROFILE": "here"}, server.cwd, "status", run_id).returncode == 0
    # The environment beats the file.
    wrong = cli({**bare, "FAENA_TOKEN": "nope"}, server.cwd, "status", run_id)
    assert wrong.returncode == 2 and "SEC-TOK" in wrong.stderr and "FAENA_TOKEN" in wrong.stderr


def test_bad_config_file_exits_2_with_file_and_line(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('server = "http://127.0.0.1:1"\ntoken = \n')
    env = {k: v for k, v in server.env.items() if k not in ("FAENA_SERVER", "FAENA_TOKEN")}
    env["FAENA_CONFIG"] = str(bad)
    (server.cwd / "ok.yml").write_text("jobs:\n  a:\n    steps: [{run: 'true'}]\n")
    for args in (["status", "last"], ["logs", "last"], ["submit", "ok.yml"], ["runs"],
                 ["cancel", "last"], ["nodes"]):  # fmt: skip
        r = cli(env, server.cwd, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert f"{bad}:2:" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    missing = cli({**env, "FAENA_CONFIG": str(tmp_path / "nope.toml")}, server.cwd, "status",
                  "last")  # fmt: skip
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


def test_every_listing_has_json(server: Server) -> None:
    run_id = finished(server)
    env, cwd = server.env, server.cwd
    assert json.loads(cli(env, cwd, "runs", "--json").stdout)[0]["run_id"] == run_id
    assert json.loads(cli(env, cwd, "status", run_id, "--json").stdout)["run_id"] == run_id
    assert json.loads(cli(env, cwd, "nodes", "--json").stdout)[0]["node_id"] == "local"
    assert isinstance(json.loads(cli(env, cwd, "token", "list", "--json").stdout), list)
    lines = json_lines(cli(env, cwd, "logs", run_id, "--json").stdout)
    assert {ln["job"] for ln in lines} == {"a", "b"}
    assert set(lines[0]) == {"job", "job_id", "attempt", "step", "stream", "ts", "text"}
    retried = cli(env, cwd, "retry", run_id, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] == "retrying"
    cancelled = cli(env, cwd, "cancel", run_id, "--json")
    assert json.loads(cancelled.stdout)["run_id"] == run_id


def test_retry_follow_shows_only_the_new_attempt(server: Server) -> None:
    run_id = finished(server)
    r = cli(server.env, server.cwd, "retry", run_id, "--follow")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "retrying 1 job(s)" in out
    assert "▶ b started (attempt 2)" in out and "b | about to fail" in out
    assert "hello from a" not in out and "✓ a succeeded" not in out  # a kept its result
    assert out.count("about to fail") == 1
