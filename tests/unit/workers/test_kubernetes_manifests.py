"""Pod manifests of the kubernetes provider, checked against the real Kubernetes schemas."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from faena.domain.spec import HealthCheck, Resources, ServiceSpec
from faena.workers.port import WorkerRequest
from faena.workers.providers.kubernetes_pods import (
    LABEL_OWNER,
    LABEL_WORKER,
    PodSettings,
    label_value,
    node_selector,
    pod_manifest,
    pod_name,
)

K8S_VERSION = "1.30"
SETTINGS = PodSettings(namespace="ci", image="debian:bookworm-slim", owner="agent-1")


def valid(manifest: dict[str, Any]) -> dict[str, Any]:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifest


def request(**fields: Any) -> WorkerRequest:
    return WorkerRequest(worker_id="w-0123456789ab", run_id="run-1", job_id="job-1", **fields)


def test_minimal_pod_is_valid_and_labelled() -> None:
    pod = valid(pod_manifest(request(), SETTINGS))
    assert pod["metadata"]["name"] == "faena-w-0123456789ab"
    assert pod["metadata"]["namespace"] == "ci"
    assert pod["metadata"]["labels"] == {
        "faena.run": "run-1",
        "faena.job": "job-1",
        "faena.worker": "w-0123456789ab",
        "faena.owner": "agent-1",
        "faena.role": "job",
    }
    job = pod["spec"]["containers"][0]
    assert job["image"] == "debian:bookworm-slim"
    assert "resources" not in job
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_resources_become_equal_requests_and_limits() -> None:
    resources = Resources(cpu=0.5, memory=64 * 1024 * 1024, pids=64)
    pod = valid(pod_manifest(request(image="faena/busybox:local", resources=resources), SETTINGS))
    job = pod["spec"]["containers"][0]
    assert job["image"] == "faena/busybox:local"
    assert job["resources"]["limits"] == {"cpu": "500m", "memory": str(64 * 1024 * 1024)}
    assert job["resources"]["requests"] == job["resources"]["limits"]


def test_services_are_sidecar_containers() -> None:
    db = ServiceSpec(
        name="db_main",
        image="postgres:16",
        env={"POSTGRES_PASSWORD": "ci"},
        command=["postgres", "-c", "fsync=off"],
        health=HealthCheck(cmd="pg_isready"),
    )
    pod = valid(pod_manifest(request(services=(db,)), SETTINGS))
    service = pod["spec"]["containers"][1]
    assert service["name"] == "svc-db-main"
    assert service["image"] == "postgres:16"
    assert service["env"] == [{"name": "POSTGRES_PASSWORD", "value": "ci"}]
    assert service["args"] == ["postgres", "-c", "fsync=off"]


def test_runs_on_key_value_labels_select_nodes() -> None:
    runs_on = ("linux", "disktype=ssd", "kubernetes.io/arch=amd64")
    pod = valid(pod_manifest(request(runs_on=runs_on), SETTINGS))
    assert pod["spec"]["nodeSelector"] == {"disktype": "ssd", "kubernetes.io/arch": "amd64"}
    assert node_selector(("self-hosted",)) == {}


def test_service_account_mounts_its_token() -> None:
    settings = PodSettings(namespace="ci", image="x", service_account="faena-jobs")
    pod = valid(pod_manifest(request(), settings))
    assert pod["spec"]["serviceAccountName"] == "faena-jobs"
    assert pod["spec"]["automountServiceAccountToken"] is True


@pytest.mark.parametrize(
    "worker_id", ["W_Upper/slash", "x" * 100, "run:1/job:2#3", "-leading", "ok-id"]
)
def test_any_worker_id_gives_a_valid_unique_pod(worker_id: str) -> None:
    req = WorkerRequest(worker_id=worker_id, run_id=f"run {worker_id}", job_id="j" * 80)
    pod = valid(pod_manifest(req, SETTINGS))
    assert pod["metadata"]["annotations"]["faena.run/worker-id"] == worker_id
    assert pod["metadata"]["labels"][LABEL_WORKER] == label_value(worker_id)
    assert pod_name(worker_id) != pod_name(worker_id + "x")
    assert label_value(worker_id) != label_value(worker_id + "_")


def test_an_invalid_manifest_is_caught_by_the_schema() -> None:
    pod = pod_manifest(request(), SETTINGS)
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": ["not", "a", "quantity"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_owner_label_is_sanitised() -> None:
    settings = PodSettings(namespace="ci", image="x", owner="host.example.com:agent 7")
    pod = valid(pod_manifest(request(), settings))
    assert pod["metadata"]["labels"][LABEL_OWNER].startswith("host.example.com-agent-7")
