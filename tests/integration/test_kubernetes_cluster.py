"""Opt-in: the WorkerProvider contract suite against a real cluster.

Skipped unless FAENA_K8S_TEST_CLUSTER=1 and KUBECONFIG name a cluster: no API server can
be installed on the project's machines or in its CI, so this skip is allowed even with
CI=true (the one exception to tests/components.missing). See docs/kubernetes.md for kind
and k3s recipes. FAENA_K8S_NAMESPACE (default ``default``) and FAENA_K8S_TEST_IMAGE
(default ``python:3.12-slim``: sh, bash, python3, timeout and setsid) choose where and in
what the pods run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from faena.workers.port import Worker, WorkerProvider
from faena.workers.providers.kubernetes import KubernetesProvider
from faena.workers.providers.kubernetes_api import KubeApi, KubeConnection
from faena.workers.providers.kubernetes_pods import JOB_CONTAINER, LABEL_WORKER, label_value

T = TypeVar("T")

_OPTED_IN = os.environ.get("FAENA_K8S_TEST_CLUSTER") == "1" and bool(os.environ.get("KUBECONFIG"))
pytestmark = pytest.mark.skipif(
    not _OPTED_IN,
    reason="opt-in: set FAENA_K8S_TEST_CLUSTER=1 and KUBECONFIG (allowed to skip in CI too)",
)

# The contract suite's tests and fixtures, collected here with this file's ``harness``.
_CONTRACT = Path(__file__).resolve().parent.parent / "contract"
sys.path.insert(0, str(_CONTRACT))
_spec = importlib.util.spec_from_file_location(
    "contract_suite", _CONTRACT / "test_worker_provider.py"
)
assert _spec is not None and _spec.loader is not None
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
for _name in dir(_suite):
    if _name.startswith("test_") and not _name.startswith(("test_local", "test_kill_worker")):
        globals()[_name] = getattr(_suite, _name)
provider = _suite.provider
make_worker = _suite.make_worker
worker = _suite.worker

# A pid list of the processes whose environment holds $1, as the pod's steps number them.
_PROBE = (
    'for e in /proc/[0-9]*/environ; do p=${e#/proc/}; p=${p%/environ}; [ "$p" = $$ ] && continue;'
    ' tr "\\0" "\\n" < "$e" 2>/dev/null | grep -qxF "$1" && echo "$p"; done; true'
)


class ClusterHarness:
    """KubernetesProvider against the cluster KUBECONFIG names; probes run through exec."""

    def __init__(self, tmp_path: Path) -> None:
        self.namespace = os.environ.get("FAENA_K8S_NAMESPACE") or "default"
        self.image = os.environ.get("FAENA_K8S_TEST_IMAGE") or "python:3.12-slim"
        self.owner = f"test-{uuid.uuid4().hex[:8]}"

    def provider(self, *, keep_workspace: bool = False) -> WorkerProvider:
        return KubernetesProvider(
            namespace=self.namespace,
            image=self.image,
            owner=self.owner,
            connection=KubeConnection(),
            keep_workspace=keep_workspace,
            kill_grace=1.0,
        )

    def broken_provider(self) -> WorkerProvider:
        return KubernetesProvider(
            namespace=self.namespace, connection=KubeConnection(host="http://127.0.0.1:9")
        )

    def live_processes(self, worker_id: str) -> list[int]:
        async def probe(api: KubeApi) -> list[int]:
            pod = await self._pod_of(api, worker_id)
            if pod is None:
                return []
            command = ["sh", "-c", _PROBE, "probe", f"FAENA_WORKER_ID={worker_id}"]
            _, out = await api.exec_capture(self.namespace, pod, JOB_CONTAINER, command)
            return [int(p) for p in out.split() if p.isdigit()]

        return self._sync(probe)

    def workspace_exists(self, worker: Worker) -> bool:
        async def exists(api: KubeApi) -> bool:
            return await self._pod_of(api, worker.worker_id) is not None

        return self._sync(exists)

    def cleanup(self, worker_id: str) -> None:
        async def delete(api: KubeApi) -> None:
            pod = await self._pod_of(api, worker_id)
            if pod is not None:
                await api.delete_pod(self.namespace, pod)

        self._sync(delete)

    async def _pod_of(self, api: KubeApi, worker_id: str) -> str | None:
        found = await api.list_pods(
            self.namespace, labels=f"{LABEL_WORKER}={label_value(worker_id)}"
        )
        live = [p for p in found.get("items") or [] if not p["metadata"].get("deletionTimestamp")]
        return str(live[0]["metadata"]["name"]) if live else None

    def _sync(self, probe: Any) -> Any:
        """Probes are synchronous: run them on a loop of their own, in a thread."""

        async def run() -> Any:
            api = KubeApi(KubeConnection())
            try:
                return await probe(api)
            finally:
                await api.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(_run, run()).result(timeout=120)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def harness(tmp_path: Path) -> ClusterHarness:
    return ClusterHarness(tmp_path)
