"""An in-process Kubernetes API for the provider's tests: the REST shapes it uses (pods:
create, get, list, watch, delete, log, exec; events: list, watch) over aiohttp, with pods
run by ``DockerPods`` and objects filled in from the recorded responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import kubernetes_validate
from aiohttp import WSMsgType, web

from kube_fake.pods import NODE, DockerPods, FakePod
from kube_fake.recorded import now, recorded

EXEC_PROTOCOL = "v4.channel.k8s.io"
K8S_VERSION = "1.30"


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str, name: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.name = code, reason, message, name

    def response(self) -> web.Response:
        body = recorded("status_error", message=self.message, reason=self.reason, name=self.name)
        body["code"] = self.code
        return web.json_response(body, status=self.code)


class FakeKube:
    """The fake API server; ``url`` once started. ``node_labels`` are its one node's."""

    def __init__(self, root: Path, node_labels: dict[str, str] | None = None) -> None:
        labels = {
            "kubernetes.io/hostname": NODE,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(node_labels or {}),
        }
        self.pods = DockerPods(root, uuid.uuid4().hex[:12], labels)
        self._root = root
        self._objects: dict[str, dict[tuple[str, str], Any]] = {"pods": {}, "events": {}}
        self._changes: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, kind, type, obj
        self._version = 1000
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Future[None]] = set()
        self._runner: web.AppRunner | None = None
        self.requests: list[str] = []  # "METHOD path", for tests that look at the traffic
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[_statuses])
        base = "/api/v1/namespaces/{ns}"
        app.router.add_post(base + "/pods", self._create)
        app.router.add_get(base + "/pods", self._list_pods)
        app.router.add_get(base + "/pods/{name}", self._get)
        app.router.add_patch(base + "/pods/{name}", self._patch)
        app.router.add_delete(base + "/pods/{name}", self._delete)
        app.router.add_get(base + "/pods/{name}/log", self._log)
        app.router.add_get(base + "/pods/{name}/exec", self._exec)
        app.router.add_get(base + "/events", self._list_events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        for pod in list(self._objects["pods"].values()):
            await self.pods.remove(pod)
        self._objects["pods"].clear()
        await self.pods.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def remove(self, namespace: str, name: str) -> None:
        """Delete a pod as the API would (a test's last-resort cleanup)."""
        pod = self._objects["pods"].pop((namespace, name), None)
        if pod is not None:
            await self.pods.remove(pod)
            self._bump("pods", "DELETED", pod.obj)

    def pod(self, namespace: str, name: str) -> FakePod | None:
        return self._objects["pods"].get((namespace, name))

    def pods_named(self, namespace: str | None = None) -> list[str]:
        return [n for (ns, n) in self._objects["pods"] if namespace in (None, ns)]

    # -- bookkeeping --------------------------------------------------------------------

    def _bump(self, kind: str, change: str, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._changes.append((self._version, kind, change, json.loads(json.dumps(obj))))
        task = asyncio.ensure_future(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _pod_changed(self, pod: FakePod, _why: str) -> None:
        self._bump("pods", "MODIFIED", pod.obj)

    def _event(self, pod: FakePod, kind: str, reason: str, message: str, where: str) -> None:
        meta = pod.obj["metadata"]
        component = (
            "default-scheduler" if reason in ("Scheduled", "FailedScheduling") else "kubelet"
        )
        obj = recorded(
            "event",
            name=pod.name,
            suffix=uuid.uuid4().hex[:16],
            namespace=meta["namespace"],
            uid=str(uuid.uuid4()),
            podUID=meta["uid"],
            podResourceVersion=meta["resourceVersion"],
            fieldPath=where or None,
            reason=reason,
            message=message,
            component=component,
            host=NODE if component == "kubelet" else None,
            type=kind,
            resourceVersion="0",
        )
        self._objects["events"][(meta["namespace"], obj["metadata"]["name"])] = obj
        self._bump("events", "ADDED", obj)

    # -- pods ---------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        self.requests.append(f"POST pods {ns}")
        manifest = await request.json()
        name = (manifest.get("metadata") or {}).get("name", "")
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ApiStatus(
                422, "Invalid", f'Pod "{name}" is invalid: {path}: {exc.message}', name
            ) from None
        if (ns, name) in self._objects["pods"]:
            return ApiStatus(409, "AlreadyExists", f'pods "{name}" already exists', name).response()
        obj = recorded("pod", name=name, namespace=ns, uid=str(uuid.uuid4()), resourceVersion="0")
        obj["metadata"]["labels"] = manifest["metadata"].get("labels") or {}
        obj["metadata"]["annotations"] = manifest["metadata"].get("annotations") or {}
        defaults = recorded("container_defaults")
        spec = {**obj["spec"], **manifest["spec"]}
        spec["containers"] = [{**defaults, **c} for c in manifest["spec"]["containers"]]
        obj["spec"] = spec
        obj["status"]["qosClass"] = _qos(spec["containers"])
        root = self._root / obj["metadata"]["uid"]
        pod = FakePod(obj, root)
        self._objects["pods"][(ns, name)] = pod
        self._bump("pods", "ADDED", obj)
        self.pods.start(pod, self._pod_changed, self._event)
        return web.json_response(obj, status=201)

    def _found(self, request: web.Request) -> FakePod:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self._objects["pods"].get((ns, name))
        if pod is None:
            raise ApiStatus(404, "NotFound", f'pods "{name}" not found', name)
        return pod

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._found(request).obj)

    async def _patch(self, request: web.Request) -> web.Response:
        pod = self._found(request)
        patch = await request.json()
        for key in ("labels", "annotations"):
            pod.obj["metadata"].setdefault(key, {}).update(
                (patch.get("metadata") or {}).get(key) or {}
            )
        self._bump("pods", "MODIFIED", pod.obj)
        return web.json_response(pod.obj)

    async def _delete(self, request: web.Request) -> web.Response:
        pod = self._found(request)
        self.requests.append(f"DELETE pods {pod.name}")
        ns = request.match_info["ns"]
        del self._objects["pods"][(ns, pod.name)]
        await self.pods.remove(pod)
        pod.obj["metadata"]["deletionTimestamp"] = now()
        pod.obj["metadata"]["deletionGracePeriodSeconds"] = 0
        self._bump("pods", "DELETED", pod.obj)
        return web.json_response(pod.obj)

    async def _log(self, request: web.Request) -> web.Response:
        pod = self._found(request)
        container = request.query.get("container") or next(iter(pod.containers), "")
        cid = pod.containers.get(container)
        if cid is None:
            raise ApiStatus(
                400,
                "BadRequest",
                f'container "{container}" in pod "{pod.name}" '
                "is waiting to start: ContainerCreating",
            )
        docker = await self.pods.docker()
        tail = request.query.get("tailLines", "all")
        stamped = request.query.get("timestamps", "false") == "true"
        lines = await docker.containers.container(cid).log(
            stdout=True, stderr=True, tail=tail, timestamps=stamped
        )
        return web.Response(text="".join(lines), content_type="text/plain")

    # -- lists and watches --------------------------------------------------------------

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "pods", "Pod")

    async def _list_events(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "events", "Event")

    async def _list(self, request: web.Request, kind: str, title: str) -> web.StreamResponse:
        ns = request.match_info["ns"]
        match = _selector(request.query.get("labelSelector"), request.query.get("fieldSelector"))
        if request.query.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request, kind, ns, match)
        items = [_obj(o) for (n, _), o in self._objects[kind].items() if n == ns]
        body = recorded("list", kind=title, resourceVersion=str(self._version))
        body["items"] = [o for o in items if match(o)]
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, kind: str, ns: str, match: Any
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self._version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while True:
                for rv, k, change, obj in self._changes:
                    if (
                        rv > since
                        and k == kind
                        and obj["metadata"].get("namespace") == ns
                        and match(obj)
                    ):
                        line = json.dumps({"type": change, "object": obj}) + "\n"
                        await response.write(line.encode())
                since = self._version
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait(), max(deadline - loop.time(), 0.01))
        return response

    # -- exec ---------------------------------------------------------------------------

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        pod = self._found(request)
        command = request.query.getall("command", [])
        container = request.query.get("container") or pod.obj["spec"]["containers"][0]["name"]
        stdin = request.query.get("stdin", "").lower() in ("true", "1")
        cid = pod.containers.get(container)
        if cid is None or pod.obj["status"].get("phase") != "Running":
            raise ApiStatus(
                400,
                "BadRequest",
                f'unable to upgrade connection: container not found ("{container}")',
            )
        docker = await self.pods.docker()
        try:
            execution = await docker.containers.container(cid).exec(command, stdin=stdin)
        except aiodocker.DockerError as exc:
            raise ApiStatus(500, "InternalError", str(exc.message)) from None
        ws = web.WebSocketResponse(protocols=(EXEC_PROTOCOL,))
        await ws.prepare(request)
        for channel in (1, 2, 3):
            await ws.send_bytes(bytes([channel]))  # as the API server opens each channel
        stream = execution.start(detach=False)
        async with stream:
            pump = asyncio.ensure_future(_stdin(ws, stream)) if stdin else None
            try:
                while (message := await stream.read_out()) is not None:
                    await ws.send_bytes(bytes([message.stream]) + message.data)
            except (ConnectionResetError, aiodocker.DockerError):
                pass
            finally:
                if pump is not None:
                    pump.cancel()
        info = await execution.inspect()
        code = int(info.get("ExitCode") or 0)
        shown = " ".join(command)[:80]
        status = (
            recorded("exec_success")
            if code == 0
            else recorded("exec_exit_code", command=shown, code=str(code))
        )
        with contextlib.suppress(ConnectionResetError):
            await ws.send_bytes(bytes([3]) + json.dumps(status).encode())
        await ws.close()
        return ws


@web.middleware
async def _statuses(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except ApiStatus as status:
        return status.response()
    return response


async def _stdin(ws: web.WebSocketResponse, stream: Any) -> None:
    """Client frames on channel 0 become the command's stdin; the client closing ends it."""
    async for message in ws:
        if message.type == WSMsgType.BINARY and message.data[:1] == b"\x00":
            await stream.write_in(message.data[1:])
        elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
    with contextlib.suppress(Exception):
        await stream.close()


def _obj(o: Any) -> dict[str, Any]:
    return o.obj if isinstance(o, FakePod) else o


def _selector(labels: str | None, fields: str | None) -> Any:
    """Equality selectors only (``a=b,c=d``), which is all the provider sends."""
    wanted_labels = dict(p.split("=", 1) for p in (labels or "").split(",") if "=" in p)
    wanted_fields = dict(p.split("=", 1) for p in (fields or "").split(",") if "=" in p)

    def field(obj: dict[str, Any], path: str) -> Any:
        for part in path.split("."):
            obj = (obj or {}).get(part) if isinstance(obj, dict) else None
        return obj

    def match(obj: dict[str, Any]) -> bool:
        have = obj["metadata"].get("labels") or {}
        return all(have.get(k) == v for k, v in wanted_labels.items()) and all(
            str(field(obj, k)) == v for k, v in wanted_fields.items()
        )

    return match


def _qos(containers: list[dict[str, Any]]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"
    full = all(
        (r.get("limits") or {}).get(k)
        and (r.get("limits") or {}).get(k)
        == (r.get("requests") or {}).get(k, (r.get("limits") or {}).get(k))
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if full else "Burstable"
