"""The CLI as a client of a real `faena server` subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import FAENA_CMD

TOKEN = "e2e-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[[dict[str, str]], str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")  # no user config file leaks in
    url = start_server({**env, "FAENA_HOME": str(tmp_path / "server-home")})
    return {**env, "FAENA_SERVER": url, "FAENA_TOKEN": TOKEN}


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FAENA_CMD, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def test_submit_follow_status_cancel(server: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ok.yml").write_text("jobs:\n  a:\n    steps: [{run: echo hi}]\n")
    r = cli(server, tmp_path, "submit", "ok.yml", "--follow")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a succeeded" in r.stdout
    st = cli(server, tmp_path, "status", "last")
    assert st.returncode == 0 and "SUCCEEDED" in st.stdout

    (tmp_path / "slow.yml").write_text("jobs:\n  s:\n    steps: [{run: sleep 300}]\n")
    sub = cli(server, tmp_path, "submit", "slow.yml", "--json")
    assert sub.returncode == 0, sub.stderr
    c = cli(server, tmp_path, "cancel", "last")
    assert c.returncode == 0, c.stderr
    follow = cli(server, tmp_path, "status", "last", "--json")
    assert follow.returncode == 0


def test_client_errors(server: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("jobs:\n  a:\n    needs: nope\n    steps: [{run: x}]\n")
    bad = cli(server, tmp_path, "submit", "bad.yml")
    assert bad.returncode == 2
    assert "ORC-VALID" in bad.stderr and "bad.yml:3:" in bad.stderr
    wrong = cli({**server, "FAENA_TOKEN": "nope"}, tmp_path, "status", "last")
    assert wrong.returncode == 2 and "SEC-TOK" in wrong.stderr
    missing = cli(server, tmp_path, "status", "zzzz")
    assert missing.returncode == 2
    down = cli({**server, "FAENA_SERVER": f"http://127.0.0.1:{free_port()}"}, tmp_path,
               "status", "last")  # fmt: skip
    assert down.returncode == 1 and "cannot reach" in down.stderr
    assert "Traceback" not in bad.stderr + wrong.stderr + missing.stderr + down.stderr


def test_exec_in_a_paused_job_then_resume(server: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "broken.yml").write_text(
        "jobs:\n  broken:\n    steps:\n"
        "      - run: echo 'half-done' > state.txt; exit 4\n"
        "      - {run: echo cleaned, if: always()}\n"
    )
    sub = cli(server, tmp_path, "submit", "broken.yml", "--pause-on-failure", "2m", "--json")
    assert sub.returncode == 0, sub.stderr
    run_id = json.loads(sub.stdout)["run_id"]

    def paused() -> bool:
        st = cli(server, tmp_path, "status", run_id, "--json")
        return bool(json.loads(st.stdout)["jobs"][0].get("paused_until"))

    deadline = time.monotonic() + 30
    while not paused():
        assert time.monotonic() < deadline, "the job did not pause"
        time.sleep(0.2)
    r = cli(server, tmp_path, "exec", run_id, "broken", "--", "cat state.txt; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, "half-done\n", "err\n")
    # The words after -- are one command, quoted as given.
    r = cli(server, tmp_path, "exec", run_id, "broken", "--", "echo", "a  b", "$HOME")
    assert r.returncode == 0 and r.stdout == "a  b $HOME\n"
    missing = cli(server, tmp_path, "exec", run_id, "broken")
    assert missing.returncode == 2 and "after '--'" in missing.stderr
    nope = cli(server, tmp_path, "exec", run_id, "nope", "--", "true")
    assert nope.returncode == 2 and "no job nope" in nope.stderr
    resumed = cli(server, tmp_path, "exec", "--resume", run_id, "broken")
    assert resumed.returncode == 0, resumed.stderr
    follow = cli(server, tmp_path, "submit", "broken.yml", "--follow")  # not paused: ends
    assert follow.returncode == 1
    st = cli(server, tmp_path, "status", run_id, "--json")
    assert json.loads(st.stdout)["state"] == "FAILED"
    late = cli(server, tmp_path, "exec", run_id, "broken", "--", "true")
    assert late.returncode == 2 and "not paused" in late.stderr


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("FAENA_DATABASE_URL", "postgresql://ci:s3cret@127.0.0.1:1/faena", "cannot open the store"),
        ("FAENA_BUS_URL", "nats://127.0.0.1:1", "cannot reach NATS"),
    ],
)
def test_a_server_that_cannot_reach_its_backends_says_so(
    tmp_path: Path, variable: str, value: str, needle: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAENA_")}
    env.update({"FAENA_HOME": str(tmp_path / "home"), variable: value})
    done = subprocess.run([*FAENA_CMD, "server", "--port", "1", "--admin-token", TOKEN],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert needle in done.stderr and "ORC-INFRA" in done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
