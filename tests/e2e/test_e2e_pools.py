"""Named pools (FAENA_POOLS) end to end: `faena run` routes jobs by `runs-on` to a docker
pool or a local one, and falls back when the docker daemon cannot be reached."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from docker_env import BUSYBOX_IMAGE, require_docker

FAENA = [str(Path(sys.executable).parent / "faena")]
POOLS = "box:provider=docker,labels=container;host:provider=local"

PIPELINE = f"""
jobs:
  in-box:
    runs-on: [container]
    image: {BUSYBOX_IMAGE}
    steps: [{{run: hostname}}]
  anywhere:
    steps: [{{run: hostname}}]
  on-host:
    runs-on: [linux]
    steps: [{{run: hostname}}]
"""


def run_json(tmp_path: Path, pipeline: str, **env: str) -> tuple[int, list[dict[str, Any]], str]:
    file = tmp_path / "faena.yml"
    file.write_text(pipeline)
    done = subprocess.run(
        [*FAENA, "run", "--json", str(file)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "FAENA_HOME": str(tmp_path / "home"),
            "FAENA_POOLS": POOLS,
            "FAENA_DOCKER_IMAGE": BUSYBOX_IMAGE,  # for jobs that name no image
            **env,
        },
        cwd=tmp_path,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events, done.stderr


def by_job(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Job name -> what it ran on (its worker event) and what it printed."""
    names = {j["job_id"]: j["key"] for j in events[0]["payload"]["jobs"]}
    found: dict[str, dict[str, Any]] = {name: {"out": []} for name in names.values()}
    for e in events:
        p = e.get("payload", {})
        if e.get("subject") == "ci.worker.v1.created":
            found[names[p["job_id"]]].update(provider=p["provider_id"], **p["runtime_spec"])
        if e.get("subject") == "ci.log.v1.chunk":
            found[names[p["job_id"]]]["out"] += [line["text"] for line in p["lines"]]
    return found


def test_jobs_go_to_the_first_pool_that_serves_their_labels(tmp_path: Path) -> None:
    require_docker()
    code, events, err = run_json(tmp_path, PIPELINE)
    assert code == 0, (err, events[-1:])
    jobs = by_job(events)
    assert jobs["in-box"]["pool"] == "box" and jobs["in-box"]["provider"] == "docker"
    assert jobs["in-box"]["out"] != [socket.gethostname()]
    # No runs-on: the first pool serves it.
    assert jobs["anywhere"]["pool"] == "box"
    # 'linux' is not a label of box: only the label-less host pool serves it.
    assert jobs["on-host"]["pool"] == "host" and jobs["on-host"]["provider"] == "local"
    assert jobs["on-host"]["out"] == [socket.gethostname()]
    assert "recorded but not enforced" not in err


def test_an_unreachable_docker_pool_falls_back_to_the_local_pool(tmp_path: Path) -> None:
    pipeline = "jobs:\n  a:\n    steps: [{run: hostname}]\n"
    code, events, err = run_json(tmp_path, pipeline, DOCKER_HOST="unix:///nonexistent.sock")
    assert code == 0, err
    job = by_job(events)["a"]
    assert job["pool"] == "host" and job["fallback_from"] == "box"
    assert job["out"] == [socket.gethostname()]


def test_a_job_whose_pool_does_not_exist_fails_naming_the_pools(tmp_path: Path) -> None:
    code, events, err = run_json(
        tmp_path,
        "jobs:\n  a:\n    runs-on: [gpu]\n    steps: [{run: 'true'}]\n",
        FAENA_POOLS="box:provider=docker,labels=container",
    )
    assert code == 1, err
    result = events[-1]
    assert "no pool serves runs-on labels gpu" in (result["jobs"][0]["message"] or "")
    assert "box [container]" in result["jobs"][0]["message"]


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ("box:provider=dockr", "unknown provider 'dockr'"),
        ("box:provider=docker,mx=3", "unknown key 'mx'"),
        ("box:provider=local,min=9,max=2", "min=9 is more than max=2"),
    ],
)
def test_bad_pools_are_refused_before_anything_runs(
    tmp_path: Path, pools: str, message: str
) -> None:
    code, events, err = run_json(tmp_path, PIPELINE, FAENA_POOLS=pools)
    assert code == 2, err
    assert message in err and "FAENA_POOLS" in err
    assert events == []
