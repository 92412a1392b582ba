"""What a pod's status says about a worker that is starting: ready, still coming, or a
failure waiting will not fix. Pure functions of the API's JSON, so each reason is tested
against recorded pod objects without a server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Waiting reasons that a pull or a container set-up will not get over by itself.
IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                           "ErrImageNeverPull"})  # fmt: skip
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                            "RunContainerError"})  # fmt: skip


@dataclass(frozen=True)
class PodState:
    """``ready``: every container runs; ``failure``: why it never will (``retryable``:
    whether a new pod, maybe elsewhere, could do better)."""

    ready: bool = False
    failure: str | None = None
    retryable: bool = True


def pod_state(pod: dict[str, Any], events: list[dict[str, Any]] | None = None) -> PodState:
    """Interpret a pod (and its events, for the details) while it starts."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    images = {c["name"]: c.get("image", "?") for c in (pod.get("spec") or {}).get("containers", [])}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            selector = (pod.get("spec") or {}).get("nodeSelector") or {}
            wanted = f" (node selector {_selector(selector)})" if selector else ""
            detail = condition.get("message") or _event(events, "FailedScheduling")
            return PodState(
                failure=f"no node can run pod {name}{wanted}: {detail}", retryable=False
            )
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        image = container.get("image") or images.get(container.get("name", ""), "?")
        if reason in IMAGE_REASONS:
            detail = _event(events, "Failed") or waiting.get("message") or reason
            return PodState(
                failure=f"image {image!r} cannot be pulled ({reason}): {detail}",
                retryable=False,
            )
        if reason in CONFIG_REASONS:
            detail = waiting.get("message") or _event(events, "Failed") or reason
            return PodState(
                failure=f"container {container.get('name')!r} ({image}) cannot start "
                f"({reason}): {detail}",
                retryable=False,
            )
        terminated = (container.get("state") or {}).get("terminated")
        if terminated is not None:
            return PodState(
                failure=f"container {container.get('name')!r} ({image}) ended at start "
                f"({terminated_text(terminated)})",
                retryable=terminated.get("reason") != "OOMKilled",
            )
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        why = status.get("reason") or phase
        return PodState(failure=f"pod {name} ended ({why}): {status.get('message', '')}")
    statuses = status.get("containerStatuses") or []
    running = statuses and all((c.get("state") or {}).get("running") for c in statuses)
    return PodState(ready=bool(phase == "Running" and running and len(statuses) >= len(images)))


def container_terminated(pod: dict[str, Any] | None, container: str) -> dict[str, Any] | None:
    """The ``terminated`` state of a container of the pod, or None while it runs."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            terminated: dict[str, Any] | None = (status.get("state") or {}).get("terminated")
            return terminated
    return None


def terminated_text(terminated: dict[str, Any]) -> str:
    """``OOMKilled, exit code 137``."""
    parts = [str(terminated.get("reason") or "terminated")]
    if terminated.get("exitCode") is not None:
        parts.append(f"exit code {terminated['exitCode']}")
    return ", ".join(parts)


def _event(events: list[dict[str, Any]] | None, reason: str) -> str:
    """The message of the newest event of that reason, or ''."""
    found = [e for e in events or [] if e.get("reason") == reason and e.get("message")]
    return str(found[-1]["message"]) if found else ""


def _selector(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
