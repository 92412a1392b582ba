"""The fake's pods, backed by the real dockerd: a sandbox container holds the pod's network
namespace (as the pause container does), each container of the pod joins it, emptyDir
volumes are host directories bind-mounted where the pod mounts them, limits are docker's.
So images, limits, OOM kills and process trees are real; only scheduling is made up (one
node with fixed labels)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker

from kube_fake.recorded import now, recorded

SANDBOX_IMAGE = "faena/busybox:local"
SANDBOX_CMD = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
NODE = "fake-node"
_PULL_BACKOFF_AFTER = 0.3
_MONITOR_EVERY = 0.2

Changed = Callable[["FakePod", str], None]  # (pod, reason of the change)
Event = Callable[["FakePod", str, str, str, str], None]  # pod, type, reason, message, field


@dataclass
class FakePod:
    obj: dict[str, Any]
    root: Path
    sandbox: str | None = None
    containers: dict[str, str] = field(default_factory=dict)  # name -> docker id
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def images(self) -> dict[str, str]:
        return {c["name"]: c["image"] for c in self.obj["spec"]["containers"]}


class DockerPods:
    """Runs pods in dockerd; tells the server of every status change."""

    def __init__(self, root: Path, tag: str, node_labels: dict[str, str]) -> None:
        self._root = root
        self.tag = tag  # a label on every container, for the last-resort cleanup
        self.node_labels = node_labels
        self._docker: aiodocker.Docker | None = None

    async def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker()
        return self._docker

    def start(self, pod: FakePod, changed: Changed, event: Event) -> None:
        pod.task = asyncio.ensure_future(self._run(pod, changed, event))

    async def _run(self, pod: FakePod, changed: Changed, event: Event) -> None:
        spec, status = pod.obj["spec"], pod.obj["status"]
        selector = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            status["conditions"] = [recorded("condition_unschedulable")]
            event(
                pod,
                "Warning",
                "FailedScheduling",
                recorded("events_messages")["FailedScheduling"],
                "",
            )
            changed(pod, "unschedulable")
            return
        spec["nodeName"] = NODE
        status.update(hostIP="10.89.0.2", hostIPs=[{"ip": "10.89.0.2"}], startTime=now())
        msgs = recorded(
            "events_messages", namespace=pod.obj["metadata"]["namespace"], name=pod.name, host=NODE
        )
        event(pod, "Normal", "Scheduled", msgs["Scheduled"], "")
        status["containerStatuses"] = [
            self._status(n, i, "state_waiting_creating") for n, i in pod.images.items()
        ]
        self._conditions(pod, ready=False)
        changed(pod, "scheduled")
        docker = await self.docker()
        missing = [n for n, image in pod.images.items() if not await self._has(docker, image)]
        if missing:
            await self._pull_fails(pod, missing, changed, event)
            return
        await self._create_containers(pod, docker, event)
        status["phase"] = "Running"
        status["podIP"] = "10.244.0.7"
        status["podIPs"] = [{"ip": "10.244.0.7"}]
        status["containerStatuses"] = [
            self._status(n, i, "state_running", ready=True) for n, i in pod.images.items()
        ]
        self._conditions(pod, ready=True)
        changed(pod, "running")
        await self._monitor(pod, docker, changed)

    async def _pull_fails(
        self, pod: FakePod, missing: list[str], changed: Changed, event: Event
    ) -> None:
        status = pod.obj["status"]
        for state in ("state_waiting_err_image_pull", "state_waiting_image_pull_backoff"):
            for entry in status["containerStatuses"]:
                if entry["name"] in missing:
                    entry["state"] = recorded(state, image=pod.images[entry["name"]])
            for name in missing:
                msgs = recorded("events_messages", image=pod.images[name])
                where = f"spec.containers{{{name}}}"
                if state.endswith("err_image_pull"):
                    event(pod, "Normal", "Pulling", msgs["Pulling"], where)
                    event(pod, "Warning", "Failed", msgs["Failed"], where)
                else:
                    event(pod, "Normal", "BackOff", msgs["BackOff"], where)
            self._conditions(pod, ready=False)
            changed(pod, state)
            await asyncio.sleep(_PULL_BACKOFF_AFTER)

    async def _create_containers(
        self, pod: FakePod, docker: aiodocker.Docker, event: Event
    ) -> None:
        labels = {"faena.kube-fake": self.tag, "faena.kube-fake.pod": pod.obj["metadata"]["uid"]}
        sandbox = await docker.containers.create(
            {
                "Image": SANDBOX_IMAGE,
                "Cmd": SANDBOX_CMD,
                "Labels": labels,
                "HostConfig": {"NetworkMode": "none"},
            },
            name=f"kfake-{pod.obj['metadata']['uid'][:13]}-pause",
        )
        pod.sandbox = sandbox.id
        await sandbox.start()
        volumes = {}
        for volume in pod.obj["spec"].get("volumes") or []:
            path = pod.root / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # as the kubelet makes an emptyDir
            volumes[volume["name"]] = path
        for container in pod.obj["spec"]["containers"]:
            config: dict[str, Any] = {
                "Image": container["image"],
                "Env": [f"{e['name']}={e.get('value', '')}" for e in container.get("env") or []],
                "Labels": labels,
                "HostConfig": {
                    "NetworkMode": f"container:{sandbox.id}",
                    "Binds": [
                        f"{volumes[m['name']]}:{m['mountPath']}"
                        for m in container.get("volumeMounts") or []
                    ],
                    **_limits((container.get("resources") or {}).get("limits") or {}),
                },
            }
            if "command" in container:
                config["Entrypoint"] = container["command"]
                config["Cmd"] = container.get("args") or []
            elif "args" in container:
                config["Cmd"] = container["args"]
            if container.get("workingDir"):
                config["WorkingDir"] = container["workingDir"]
            made = await docker.containers.create(
                config, name=f"kfake-{pod.obj['metadata']['uid'][:13]}-{container['name']}"
            )
            pod.containers[container["name"]] = made.id
            await made.start()
            msgs = recorded(
                "events_messages", image=container["image"], container=container["name"]
            )
            where = f"spec.containers{{{container['name']}}}"
            for reason in ("Pulled", "Created", "Started"):
                event(pod, "Normal", reason, msgs[reason], where)

    async def _monitor(self, pod: FakePod, docker: aiodocker.Docker, changed: Changed) -> None:
        """The kubelet's part: report containers that ended (OOMKilled, Error, Completed)."""
        ended: set[str] = set()
        while len(ended) < len(pod.containers):
            await asyncio.sleep(_MONITOR_EVERY)
            for name, cid in pod.containers.items():
                if name in ended:
                    continue
                try:
                    state = (await docker.containers.container(cid).show())["State"]
                except aiodocker.DockerError:
                    return  # deleted
                if state.get("Running"):
                    continue
                ended.add(name)
                code = int(state.get("ExitCode") or 0)
                reason = (
                    "OOMKilled" if state.get("OOMKilled") else ("Error" if code else "Completed")
                )
                for entry in pod.obj["status"]["containerStatuses"]:
                    if entry["name"] == name:
                        entry["state"] = recorded(
                            "state_terminated", reason=reason, containerID=cid
                        )
                        entry["state"]["terminated"]["exitCode"] = code
                        entry["ready"] = entry["started"] = False
                if len(ended) == len(pod.containers):
                    pod.obj["status"]["phase"] = "Failed" if code else "Succeeded"
                self._conditions(pod, ready=False)
                changed(pod, f"{name} ended")

    async def remove(self, pod: FakePod) -> None:
        """Delete at once (grace 0): the containers, the volumes."""
        if pod.task is not None:
            pod.task.cancel()
            with contextlib.suppress(BaseException):
                await pod.task
        docker = await self.docker()
        for cid in [*pod.containers.values(), *([pod.sandbox] if pod.sandbox else [])]:
            with contextlib.suppress(aiodocker.DockerError):
                await docker.containers.container(cid).delete(force=True, v=True)
        await asyncio.to_thread(shutil.rmtree, pod.root, True)

    async def close(self) -> None:
        docker = await self.docker()
        with contextlib.suppress(aiodocker.DockerError):
            for c in await docker.containers.list(
                all=True, filters={"label": [f"faena.kube-fake={self.tag}"]}
            ):
                await c.delete(force=True, v=True)
        await docker.close()
        self._docker = None

    @staticmethod
    async def _has(docker: aiodocker.Docker, image: str) -> bool:
        try:
            await docker.images.inspect(image)
        except aiodocker.DockerError:
            return False
        return True

    @staticmethod
    def _status(name: str, image: str, state: str, *, ready: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = recorded("container_status", container=name, image=image)
        entry["state"] = recorded(state)
        entry["ready"] = entry["started"] = ready
        if ready:
            entry["imageID"] = f"docker.io/{image}@sha256:{uuid.uuid4().hex * 2}"
            entry["containerID"] = f"containerd://{uuid.uuid4().hex * 2}"
        return entry

    @staticmethod
    def _conditions(pod: FakePod, *, ready: bool) -> None:
        waiting = [
            s["name"]
            for s in pod.obj["status"].get("containerStatuses") or []
            if not s.get("ready")
        ]
        values: dict[str, Any] = {"ready": "True" if ready else "False"}
        if not ready:
            values["notReadyReason"] = "ContainersNotReady"
            values["notReadyMessage"] = f"containers with unready status: [{' '.join(waiting)}]"
        pod.obj["status"]["conditions"] = recorded("conditions_scheduled", **values)


def _limits(limits: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "cpu" in limits:
        found["NanoCpus"] = int(_cpu(limits["cpu"]) * 1e9)
    if "memory" in limits:
        found["Memory"] = found["MemorySwap"] = _bytes(limits["memory"])
    return found


def _cpu(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}


def _bytes(text: str) -> int:
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)
