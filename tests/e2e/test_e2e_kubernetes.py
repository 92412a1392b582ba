"""`faena run --provider kubernetes` end to end: the command reads a kubeconfig naming the
fake API server (tests/kube_fake), whose pods are real containers of this host's dockerd."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from docker_env import BUSYBOX_IMAGE, TOOLS_IMAGE, require_docker
from kube_fake.running import RunningFake, running_fake

FAENA = [str(Path(sys.executable).parent / "faena")]


@pytest.fixture
def fake() -> RunningFake:
    require_docker()
    return running_fake()


def kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: me, user: {{token: not-checked}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: me}}}}]
current-context: fake
"""
    )
    return path


def faena(tmp_path: Path, url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FAENA_HOME": str(tmp_path / "home"),
        "KUBECONFIG": str(kubeconfig(tmp_path, url)),
        "FAENA_K8S_NAMESPACE": namespace,
        "FAENA_K8S_IMAGE": TOOLS_IMAGE,
    }
    return subprocess.run(
        [*FAENA, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )


def test_a_pipeline_runs_in_pods_and_leaves_none_behind(tmp_path: Path, fake: RunningFake) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    (tmp_path / "faena.yml").write_text(
        f"""
jobs:
  build:
    image: {BUSYBOX_IMAGE}
    resources: {{memory: 64Mi, cpu: 500m}}
    outputs: [n]
    steps:
      - run: echo "built in $(hostname)" && echo "n=7" >> "$FAENA_OUTPUT"
  test:
    needs: [build]
    steps: [{{run: 'echo "got ${{{{ needs.build.outputs.n }}}}"'}}]
"""
    )
    done = faena(tmp_path, fake.url, namespace, "run", "--provider", "kubernetes", "faena.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    logs = faena(tmp_path, fake.url, namespace, "logs", "last", "test").stdout
    assert "got 7" in logs
    built = faena(tmp_path, fake.url, namespace, "logs", "last", "build").stdout
    assert "built in " in built
    # Pods of finished jobs are deleted; none is left in the namespace.
    assert fake.kube.pods_named(namespace) == []


def test_an_unreachable_cluster_fails_the_job_with_a_clear_reason(tmp_path: Path) -> None:
    (tmp_path / "faena.yml").write_text("jobs:\n  a:\n    steps: [{run: 'true'}]\n")
    # Nothing listens on port 9 of loopback: connection refused.
    done = faena(
        tmp_path, "http://127.0.0.1:9", "default", "run", "--provider", "kubernetes", "faena.yml"
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert "cannot reach the Kubernetes API at 127.0.0.1:9" in out, out


def test_a_missing_kubeconfig_is_named_in_the_failure(tmp_path: Path) -> None:
    (tmp_path / "faena.yml").write_text("jobs:\n  a:\n    steps: [{run: 'true'}]\n")
    env = {**os.environ, "FAENA_HOME": str(tmp_path / "home"), "KUBECONFIG": "/nonexistent"}
    done = subprocess.run(
        [*FAENA, "run", "--provider", "kubernetes", "faena.yml"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert "cannot load the Kubernetes configuration" in out, out
