"""KubernetesProvider's failures against the fake API (tests/kube_fake, pods in dockerd):
each becomes a clear ProviderError, final where retrying cannot help."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from docker_env import BUSYBOX_IMAGE, TOOLS_IMAGE, require_docker
from faena.domain.spec import HealthCheck, Resources, ServiceSpec
from faena.workers.port import (
    ExecRequest,
    ExecResult,
    OutputLine,
    ProviderError,
    Worker,
    WorkerRequest,
)
from faena.workers.providers.kubernetes import KubernetesProvider
from faena.workers.providers.kubernetes_api import KubeApi, KubeConnection
from faena.workers.providers.kubernetes_pods import ANNOTATION_KEPT_UNTIL, pod_name
from faena.workers.resilient import ResilientProvider
from kube_fake.running import RunningFake, running_fake

GUARD = 90.0
HTTPD = "exec httpd -f -vv -p 127.0.0.1:8080 -h /www"


@pytest.fixture
def fake() -> RunningFake:
    require_docker()
    return running_fake()


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


def provider_for(fake: RunningFake, namespace: str, owner: str = "faults") -> KubernetesProvider:
    return KubernetesProvider(
        namespace=namespace,
        image=TOOLS_IMAGE,
        owner=owner,
        connection=KubeConnection(host=fake.url),
        kill_grace=1.0,
        create_timeout=60.0,
    )


@pytest.fixture
async def provider(fake: RunningFake, namespace: str) -> AsyncIterator[KubernetesProvider]:
    made = provider_for(fake, namespace)
    try:
        yield made
    finally:
        for name in fake.kube.pods_named():
            pod = fake.kube.pod(namespace, name)
            if pod is not None:
                fake.call(fake.kube.remove(namespace, name))
        await made.close()


def request(**fields: object) -> WorkerRequest:
    given = {"worker_id": f"w-{uuid.uuid4().hex[:12]}", "run_id": "r", "job_id": "j", **fields}
    return WorkerRequest(**given)  # type: ignore[arg-type]


async def one_step(
    provider: KubernetesProvider, worker_request: WorkerRequest, script: str
) -> tuple[ExecResult, list[OutputLine]]:
    """Create a worker, run one step in it, destroy it: the step's result and lines."""
    worker = await asyncio.wait_for(provider.create(worker_request), GUARD)
    lines: list[OutputLine] = []

    async def sink(line: OutputLine) -> None:
        lines.append(line)

    try:
        result = await asyncio.wait_for(
            provider.exec(worker, ExecRequest("s", script), sink), GUARD
        )
    finally:
        await provider.destroy(worker)
    return result, lines


def posts(fake: RunningFake, namespace: str) -> int:
    return sum(1 for line in fake.kube.requests if line == f"POST pods {namespace}")


async def test_missing_image_fails_at_once_naming_it(
    fake: RunningFake, namespace: str, provider: KubernetesProvider
) -> None:
    resilient = ResilientProvider(provider, backoff_base=0.01)
    with pytest.raises(ProviderError) as caught:
        await asyncio.wait_for(resilient.create(request(image="faena/nope:missing")), GUARD)

    assert not caught.value.retryable
    message = str(caught.value)
    assert "faena/nope:missing" in message
    assert "ErrImagePull" in message or "ImagePullBackOff" in message
    assert posts(fake, namespace) == 1  # not retried
    assert fake.kube.pods_named() == [] or all(
        fake.kube.pod(namespace, n) is None for n in fake.kube.pods_named()
    )


async def test_unschedulable_node_selector_fails_at_once(
    fake: RunningFake, namespace: str, provider: KubernetesProvider
) -> None:
    with pytest.raises(ProviderError) as caught:
        await asyncio.wait_for(provider.create(request(runs_on=("linux", "disktype=hdd"))), GUARD)

    assert not caught.value.retryable
    assert "no node can run" in str(caught.value)
    assert "disktype=hdd" in str(caught.value)
    assert "didn't match Pod's node affinity/selector" in str(caught.value)


async def test_matching_node_selector_schedules(provider: KubernetesProvider) -> None:
    worker = await asyncio.wait_for(provider.create(request(runs_on=("disktype=ssd",))), GUARD)
    await provider.destroy(worker)


async def test_out_of_memory_names_the_limit(provider: KubernetesProvider) -> None:
    resources = Resources(memory=64 * 1024 * 1024)
    hog = "python3 -c 'b = bytearray(512 * 1024 * 1024); print(len(b))'"
    result, lines = await one_step(provider, request(resources=resources), hog)
    assert result.exit_code == 137
    assert result.reason is not None
    assert result.reason.startswith("out of memory (limit 64 MiB)")
    assert any("out of memory (limit 64 MiB)" in line.text for line in lines)


async def test_unreachable_api_is_a_retryable_provider_error(namespace: str) -> None:
    broken = KubernetesProvider(
        namespace=namespace, connection=KubeConnection(host="http://127.0.0.1:9")
    )
    with pytest.raises(ProviderError) as caught:
        await asyncio.wait_for(broken.create(request()), GUARD)
    assert caught.value.retryable
    assert "cannot reach the Kubernetes API" in str(caught.value)
    await broken.close()


async def test_a_manifest_the_api_refuses_is_final_with_its_message(
    fake: RunningFake, namespace: str
) -> None:
    api = KubeApi(KubeConnection(host=fake.url))
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
                "spec": {"containers": [{"image": "x"}]}}  # fmt: skip
    try:
        with pytest.raises(ProviderError) as caught:
            await api.create_pod(namespace, manifest)
    finally:
        await api.close()
    assert not caught.value.retryable
    assert "is invalid" in str(caught.value) and "HTTP 422" in str(caught.value)


async def test_unhealthy_service_fails_the_job_with_its_output(
    fake: RunningFake, namespace: str, provider: KubernetesProvider
) -> None:
    service = ServiceSpec(
        name="db",
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", "echo starting db; sleep 1000"],
        health=HealthCheck(cmd="echo not yet; false", interval=0.05, retries=3),
    )
    worker_request = request(services=(service,))
    with pytest.raises(ProviderError) as caught:
        await asyncio.wait_for(provider.create(worker_request), GUARD)
    assert not caught.value.retryable
    assert "never became healthy after 3 checks" in str(caught.value)
    assert "not yet" in str(caught.value) and "starting db" in str(caught.value)
    assert fake.kube.pod(namespace, pod_name(worker_request.worker_id)) is None


async def test_service_is_reached_at_localhost(provider: KubernetesProvider) -> None:
    service = ServiceSpec(
        name="web",
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && " + HTTPD],
        health=HealthCheck(cmd="wget -qO- http://127.0.0.1:8080/", interval=0.1, retries=50),
    )
    get = "wget -qO- http://localhost:8080/"
    kept: list[tuple[str, list[OutputLine]]] = []

    async def keep(name: str, lines: list[OutputLine]) -> None:
        kept.append((name, lines))

    before = time.time()
    result, lines = await one_step(provider, request(services=(service,), service_output=keep), get)
    assert result.exit_code == 0, lines
    assert [line.text for line in lines] == ["hello"]
    # httpd -vv logs each request: the health checks' and the step's, timestamped.
    assert [name for name, _ in kept] == ["web"]
    texts = [line.text for line in kept[0][1]]
    assert any("response:200" in text for text in texts), texts
    assert all(before - 5 < line.ts < time.time() + 5 for line in kept[0][1])


async def test_orphans_are_reaped_by_owner_label(fake: RunningFake, namespace: str) -> None:
    crashed = provider_for(fake, namespace, owner="agent-a")
    other = provider_for(fake, namespace, owner="agent-b")
    orphan = await asyncio.wait_for(crashed.create(request()), GUARD)
    kept = await asyncio.wait_for(crashed.create(request()), GUARD)
    await crashed.destroy(kept, keep_for=3600)
    foreign = await asyncio.wait_for(other.create(request()), GUARD)
    restarted = provider_for(fake, namespace, owner="agent-a")
    mine = await asyncio.wait_for(restarted.create(request()), GUARD)
    try:
        assert await restarted.reap_orphans() == 1

        assert fake.kube.pod(namespace, pod_name(orphan.worker_id)) is None
        kept_pod = fake.kube.pod(namespace, pod_name(kept.worker_id))
        assert kept_pod is not None
        assert ANNOTATION_KEPT_UNTIL in kept_pod.obj["metadata"]["annotations"]
        assert fake.kube.pod(namespace, pod_name(foreign.worker_id)) is not None
        assert fake.kube.pod(namespace, pod_name(mine.worker_id)) is not None
    finally:
        for provider, worker in ((restarted, mine), (other, foreign), (restarted, kept)):
            await provider.destroy(Worker(worker.worker_id, "kubernetes", ""))
        for provider in (crashed, other, restarted):
            await provider.close()
    assert fake.kube.pod(namespace, pod_name(kept.worker_id)) is None


async def test_reaping_with_ended_spares_the_pods_of_runs_still_going(
    fake: RunningFake, namespace: str
) -> None:
    crashed = provider_for(fake, namespace, owner="agent-a")
    done = await asyncio.wait_for(crashed.create(request(run_id="done")), GUARD)
    going = await asyncio.wait_for(crashed.create(request(run_id="going")), GUARD)
    restarted = provider_for(fake, namespace, owner="agent-a")
    asked: list[str] = []

    async def ended(run_id: str) -> bool:
        asked.append(run_id)
        return run_id == "done"

    try:
        assert await restarted.reap_orphans(ended) == 1
        assert sorted(asked) == ["done", "going"]
        assert fake.kube.pod(namespace, pod_name(done.worker_id)) is None
        assert fake.kube.pod(namespace, pod_name(going.worker_id)) is not None
    finally:
        await restarted.destroy(Worker(going.worker_id, "kubernetes", ""))
        for provider in (crashed, restarted):
            await provider.close()
