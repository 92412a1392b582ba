"""The pod of a Kubernetes worker, as a manifest: a pure function of the request and the
provider's settings (no client, no I/O), so every manifest can be checked against the real
Kubernetes schemas in unit tests.

A pod holds the job container (``job``: the job's image kept alive by a shell loop, the
workspace and a private temp dir as two emptyDir volumes) and one container per service,
in the same network namespace, so services are reached at ``localhost``. Requests equal
limits (``cpu``, ``memory``), which makes a pod with both ``Guaranteed``. ``runs-on`` labels
of the form ``key=value`` become the node selector; plain labels only pick a pool.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from faena.domain.spec import Resources, ServiceSpec
from faena.workers.port import WorkerRequest

LABEL_RUN, LABEL_JOB, LABEL_WORKER = "faena.run", "faena.job", "faena.worker"
LABEL_OWNER, LABEL_ROLE = "faena.owner", "faena.role"
ANNOTATION_WORKER = "faena.run/worker-id"  # the id as given (labels hold a sanitised copy)
ANNOTATION_KEPT_UNTIL = "faena.run/kept-until"  # epoch seconds; "never" for keep_workspace
JOB_CONTAINER = "job"
WORKSPACE = "/faena/workspace"
TEMP = "/faena/temp"

# The job container's PID 1: no init in a pod, so this shell also reaps what steps orphan
# (``wait`` collects any child); the temp dir is private to the provider's scripts.
POD_KEEPALIVE = (
    f"mkdir -p {TEMP} && chmod 700 {TEMP}; "
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
)


@dataclass(frozen=True)
class PodSettings:
    """What the provider adds to every pod: where, as whom, with which default image."""

    namespace: str
    image: str
    owner: str = "faena"
    service_account: str | None = None


def pod_name(worker_id: str) -> str:
    """A DNS-1123 name for the worker's pod, unique per worker id."""
    plain = _dns_label(f"faena-{worker_id}")
    if plain == f"faena-{worker_id}":
        return plain
    digest = hashlib.sha256(worker_id.encode()).hexdigest()[:10]
    return f"{plain[:52].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """``value`` as a valid label value (63 characters of ``[A-Za-z0-9._-]``, alphanumeric
    at both ends); a value that had to change gets a hash suffix, so two stay distinct."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("._-")
    if clean == value and len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{clean[:52].strip('._-')}-{digest}".strip("-")


def pod_labels(request: WorkerRequest, owner: str, role: str = "job") -> dict[str, str]:
    """The labels every pod of a worker carries (reap_orphans finds pods by the owner's)."""
    return {
        LABEL_RUN: label_value(request.run_id),
        LABEL_JOB: label_value(request.job_id),
        LABEL_WORKER: label_value(request.worker_id),
        LABEL_OWNER: label_value(owner),
        LABEL_ROLE: role,
    }


def node_selector(runs_on: tuple[str, ...]) -> dict[str, str]:
    """``key=value`` labels of ``runs-on``; plain labels name pools, not nodes."""
    selector: dict[str, str] = {}
    for label in runs_on:
        key, sep, value = label.partition("=")
        if sep and key.strip():
            selector[key.strip()] = value.strip()
    return selector


def quantities(resources: Resources) -> dict[str, str]:
    """``cpu`` in millicores and ``memory`` in bytes, as Kubernetes quantities."""
    found: dict[str, str] = {}
    if resources.cpu:
        found["cpu"] = f"{max(round(resources.cpu * 1000), 1)}m"
    if resources.memory:
        found["memory"] = str(resources.memory)
    return found


def pod_manifest(request: WorkerRequest, settings: PodSettings) -> dict[str, Any]:
    """The pod for one job attempt: job container plus one container per service."""
    limits = quantities(request.resources)
    job: dict[str, Any] = {
        "name": JOB_CONTAINER,
        "image": request.image or settings.image,
        "command": ["sh", "-c", POD_KEEPALIVE],
        "workingDir": WORKSPACE,
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "temp", "mountPath": TEMP},
        ],
    }
    if limits:
        job["resources"] = {"requests": dict(limits), "limits": dict(limits)}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        # Steps run the job's code: no API token unless a service account is configured.
        "automountServiceAccountToken": settings.service_account is not None,
        "enableServiceLinks": False,
        "containers": [job, *(_service(s) for s in request.services)],
        "volumes": [{"name": "workspace", "emptyDir": {}}, {"name": "temp", "emptyDir": {}}],
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    selector = node_selector(request.runs_on)
    if selector:
        spec["nodeSelector"] = selector
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(request.worker_id),
            "namespace": settings.namespace,
            "labels": pod_labels(request, settings.owner),
            "annotations": {ANNOTATION_WORKER: request.worker_id},
        },
        "spec": spec,
    }


def service_container(name: str) -> str:
    """The container name of a service (a DNS label that cannot clash with ``job``)."""
    return _dns_label(f"svc-{name}")


def _service(service: ServiceSpec) -> dict[str, Any]:
    container: dict[str, Any] = {"name": service_container(service.name), "image": service.image}
    if service.env:
        container["env"] = [{"name": k, "value": v} for k, v in service.env.items()]
    if service.command is not None:
        container["args"] = list(service.command)  # as docker's Cmd: the entrypoint stays
    return container


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-") or "x"
