"""`faena run --provider docker` end to end, against the real daemon (tests/docker_env.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docker_env import (
    BUSYBOX_IMAGE,
    PrivateDockerd,
    containers,
    remove_containers,
    require_docker,
)

ROOT = Path(__file__).resolve().parents[2]
FAENA = [str(Path(sys.executable).parent / "faena")]


@pytest.fixture(autouse=True)
def docker() -> None:
    require_docker()


def faena_run(tmp_path: Path, pipeline: str) -> subprocess.CompletedProcess[str]:
    file = tmp_path / "faena.yml"
    file.write_text(pipeline)
    env = {**os.environ, "FAENA_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [*FAENA, "run", "--provider", "docker", str(file)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_the_docker_example_runs_its_service_and_reports_oom(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "docker-service" / "faena.yml").read_text()
    done = faena_run(tmp_path, text)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    logs = faena(tmp_path, "logs", "last", "web")
    assert "hello from a faena service" in logs.stdout, logs.stdout + logs.stderr
    # The service's own log is kept with the job's, after its steps.
    service = logs.stdout.split("--- service www\n", 1)[-1]
    assert "url:/" in service and "response:200" in service, logs.stdout
    assert "out of memory (limit 32 MiB)" in out
    # Everything of a finished job is removed: its containers carry the temp dir's path.


def test_a_missing_image_fails_at_once_naming_it(tmp_path: Path) -> None:
    done = faena_run(
        tmp_path, "jobs:\n  a:\n    image: faena/no-such-image:1\n    steps: [{run: 'true'}]\n"
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "faena/no-such-image:1" in out
    assert "WKM-PROV" in out or "not on this docker host" in out


def test_a_service_that_never_gets_healthy_fails_the_job(tmp_path: Path) -> None:
    pipeline = f"""
jobs:
  a:
    image: {BUSYBOX_IMAGE}
    services:
      db:
        image: {BUSYBOX_IMAGE}
        command: sh -c 'echo db is booting; sleep 1000'
        health: {{cmd: "false", interval: 50ms, retries: 3}}
    steps: [{{run: 'echo never'}}]
"""
    done = faena_run(tmp_path, pipeline)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "service 'db'" in out and "never became healthy" in out
    assert "never\n" not in done.stdout
    logs = faena(tmp_path, "logs", "last", "a").stdout
    assert "--- service db\ndb is booting" in logs, logs


def test_steps_run_inside_the_container_not_on_this_host(tmp_path: Path) -> None:
    done = faena_run(
        tmp_path, f"jobs:\n  a:\n    image: {BUSYBOX_IMAGE}\n    steps: [{{run: 'hostname'}}]\n"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    logs = faena(tmp_path, "logs", "last", "a").stdout
    # Docker names a container's host after the container id; this host is not that.
    assert re.search(r"^[0-9a-f]{12}$", logs, re.M), logs
    assert socket.gethostname() not in logs


def test_keep_failed_leaves_the_stopped_container_and_success_leaves_nothing(
    tmp_path: Path,
) -> None:
    owner = f"faena.owner={socket.gethostname()}:{(tmp_path / 'home' / 'workspaces').resolve()}"
    ok = faena_run(
        tmp_path, f"jobs:\n  a:\n    image: {BUSYBOX_IMAGE}\n    steps: [{{run: 'true'}}]\n"
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert containers(owner) == []
    try:
        failed = faena_run(
            tmp_path,
            f"jobs:\n  a:\n    image: {BUSYBOX_IMAGE}\n    keep-failed: 1h\n"
            "    steps: [{run: 'echo evidence > kept.txt; exit 3'}]\n",
        )
        assert failed.returncode == 1, failed.stdout + failed.stderr
        kept = containers(owner)
        assert len(kept) == 1  # stopped, there to inspect
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", kept[0]],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert state == "false"
    finally:
        remove_containers(owner)


def faena(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAENA_HOME": str(tmp_path / "home")}
    return subprocess.run([*FAENA, *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_a_container_killed_from_outside_fails_its_job_and_spares_the_other(
    tmp_path: Path,
) -> None:
    owner = f"faena.owner={socket.gethostname()}:{(tmp_path / 'home' / 'workspaces').resolve()}"
    file = tmp_path / "faena.yml"
    file.write_text(
        f"jobs:\n  victim:\n    image: {BUSYBOX_IMAGE}\n"
        "    steps: [{run: 'echo started; sleep 60'}]\n"
        f"  bystander:\n    image: {BUSYBOX_IMAGE}\n    steps: [{{run: 'sleep 3; echo ok'}}]\n"
    )
    env = {**os.environ, "FAENA_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [*FAENA, "run", "--provider", "docker", "-j", "2", str(file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        victim = None
        for _ in range(240):  # the step's sleep shows in `docker top` once it runs
            for cid in containers(owner):
                top = subprocess.run(["docker", "top", cid], capture_output=True, text=True)
                if "sleep 60" in top.stdout:
                    victim = cid
            if victim:
                break
            time.sleep(0.25)
        assert victim, "the victim's step never started"
        subprocess.run(["docker", "kill", victim], capture_output=True, check=True)
        out, _ = proc.communicate(timeout=120)
        left = containers(owner)  # the killed one too: removed once its job ended
    finally:
        proc.kill()
        remove_containers(owner)
    assert left == [], out
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "the worker's container stopped" in out, out
    assert "bystander succeeded" in out, out


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    daemon = PrivateDockerd()
    try:
        daemon.start()
        daemon.load(BUSYBOX_IMAGE)
        yield daemon
    finally:
        daemon.destroy()


def stop_dockerd_mid_step(daemon: PrivateDockerd, proc: subprocess.Popen[str]) -> None:
    for _ in range(240):  # the step's sleep shows in `docker top` once it runs
        ids = daemon.docker("ps", "-q").stdout.split()
        if any("sleep 6" in daemon.docker("top", c).stdout for c in ids):
            break
        if proc.poll() is not None:
            raise AssertionError(f"faena ended first: {proc.communicate()[0]}")
        time.sleep(0.25)
    else:
        raise AssertionError("the step never started")
    daemon.stop()


def test_dockerd_stopped_mid_job_fails_the_attempt_and_the_retry_runs_once_it_is_back(
    tmp_path: Path, private_dockerd: PrivateDockerd
) -> None:
    file = tmp_path / "faena.yml"
    file.write_text(
        f"jobs:\n  build:\n    image: {BUSYBOX_IMAGE}\n    retry: {{max_attempts: 2, delay: 2s}}\n"
        "    steps: [{run: 'echo attempt; sleep 6; echo built'}]\n"
        f"  after:\n    image: {BUSYBOX_IMAGE}\n    needs: [build]\n"
        "    steps: [{run: 'echo the run went on'}]\n"
    )
    env = {**os.environ, **private_dockerd.env(), "FAENA_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [*FAENA, "run", "--provider", "docker", str(file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        stop_dockerd_mid_step(private_dockerd, proc)
        time.sleep(1.0)  # the attempt fails; its retry waits 2 s
        private_dockerd.start()
        out, _ = proc.communicate(timeout=180)
        left = private_dockerd.docker("ps", "-aq").stdout.split()
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "build failed: step 'echo attempt; sleep 6; echo built': " in out, out
    assert "cannot reach the docker daemon" in out, out
    assert "build succeeded" in out, out
    assert "the run went on" in faena(tmp_path, "logs", "last", "after").stdout
    # The first attempt's container, stopped with the daemon, went once it was back.
    assert left == [], out + private_dockerd.docker("ps", "-a").stdout


def test_containers_a_stopped_dockerd_kept_are_removed_by_the_next_run(
    tmp_path: Path, private_dockerd: PrivateDockerd
) -> None:
    file = tmp_path / "faena.yml"
    file.write_text(
        f"jobs:\n  build:\n    image: {BUSYBOX_IMAGE}\n"
        "    steps: [{run: 'echo attempt; sleep 6; echo built'}]\n"
    )
    env = {**os.environ, **private_dockerd.env(), "FAENA_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [*FAENA, "run", "--provider", "docker", str(file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        stop_dockerd_mid_step(private_dockerd, proc)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "cannot reach the docker daemon" in out, out
    assert "its containers (label faena.worker=" in out and "remain" in out, out
    private_dockerd.start()
    assert len(private_dockerd.docker("ps", "-aq").stdout.split()) == 1
    file.write_text(f"jobs:\n  next:\n    image: {BUSYBOX_IMAGE}\n    steps: [{{run: 'true'}}]\n")
    again = subprocess.run(
        [*FAENA, "run", "--provider", "docker", str(file)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert private_dockerd.docker("ps", "-aq").stdout.split() == []
