"""The contract suite's harness for KubernetesProvider against the fake API (tests/kube_fake):
pods are real containers of this host's dockerd, so their processes (which carry
FAENA_WORKER_ID) are found through this host's /proc as the docker provider's are."""

from __future__ import annotations

import uuid
from pathlib import Path

from docker_env import TOOLS_IMAGE, require_docker
from faena.workers.port import Worker, WorkerProvider
from faena.workers.providers.kubernetes import KubernetesProvider
from faena.workers.providers.kubernetes_api import KubeConnection
from faena.workers.providers.kubernetes_pods import pod_name
from kube_fake.running import running_fake
from process_probe import innermost_pid, processes_with_env

KILL_GRACE = 1.0


class KubernetesHarness:
    """KubernetesProvider in a namespace of its own on the process's fake API server."""

    def __init__(self, tmp_path: Path) -> None:
        require_docker()
        self.fake = running_fake()
        self.namespace = f"ns-{uuid.uuid4().hex[:8]}"
        self.owner = f"test-{uuid.uuid4().hex[:8]}"

    def provider(self, *, keep_workspace: bool = False) -> WorkerProvider:
        return KubernetesProvider(
            namespace=self.namespace,
            image=TOOLS_IMAGE,
            owner=self.owner,
            connection=KubeConnection(host=self.fake.url),
            keep_workspace=keep_workspace,
            kill_grace=KILL_GRACE,
            create_timeout=60.0,
        )

    def broken_provider(self) -> WorkerProvider:
        # Nothing listens on port 9 (discard) of loopback here: connection refused.
        return KubernetesProvider(
            namespace=self.namespace,
            image=TOOLS_IMAGE,
            owner=self.owner,
            connection=KubeConnection(host="http://127.0.0.1:9", request_timeout=3.0),
        )

    def live_processes(self, worker_id: str) -> list[int]:
        return [innermost_pid(p) for p in processes_with_env(f"FAENA_WORKER_ID={worker_id}")]

    def workspace_exists(self, worker: Worker) -> bool:
        # The workspace is an emptyDir: it lives as long as the pod.
        return self.fake.kube.pod(self.namespace, pod_name(worker.worker_id)) is not None

    def cleanup(self, worker_id: str) -> None:
        pod = self.fake.kube.pod(self.namespace, pod_name(worker_id))
        if pod is not None:
            self.fake.call(self.fake.kube.remove(self.namespace, pod.name))
