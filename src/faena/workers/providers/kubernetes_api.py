"""The kubernetes provider's calls to the API server, through kubernetes_asyncio.

Objects come back as the API's own JSON (dicts), not as generated models: the provider
reads a few fields, and the recorded fixtures of the tests' fake are that JSON too. Every
failure becomes a ProviderError that says what failed: the server unreachable or a 5xx is
retryable, a 4xx (a manifest the server refused, a forbidden verb) is not and carries the
server's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from faena.workers.port import ProviderError

STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
EXEC_PROTOCOL = "v4.channel.k8s.io"


@dataclass(frozen=True)
class KubeConnection:
    """How to reach the API server: ``host`` (a URL, no auth: tests' fake), in-cluster
    (the pod's service account), or a kubeconfig (``$KUBECONFIG`` or ~/.kube/config)."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    host: str | None = None
    request_timeout: float = 10.0


class ApiGone(ProviderError):
    """404: the object is not there."""


class KubeApi:
    """Clients of one API server, made on first use (in the running loop)."""

    def __init__(self, connection: KubeConnection) -> None:
        self._connection = connection
        self._rest: Any = None
        self._ws: Any = None
        self._lock = asyncio.Lock()

    async def _apis(self) -> tuple[Any, Any]:
        async with self._lock:
            if self._rest is None:
                from kubernetes_asyncio import client  # the CLI starts without it
                from kubernetes_asyncio.stream import WsApiClient

                configuration = await _configuration(self._connection)
                self._rest = client.CoreV1Api(client.ApiClient(configuration))
                self._ws = client.CoreV1Api(WsApiClient(configuration))
        return self._rest, self._ws

    async def _call(
        self, what: str, method: str, *args: Any, raw: bool = False, **kwargs: Any
    ) -> Any:
        """One REST call; its JSON body, or a ProviderError that says what failed."""
        import aiohttp

        rest, _ = await self._apis()
        kwargs.setdefault("_request_timeout", self._connection.request_timeout)
        try:
            response = await getattr(rest, method)(*args, _preload_content=False, **kwargs)
            async with response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProviderError(f"{what}: {unreachable(exc)}") from exc
        if 200 <= status < 300:
            if raw:
                return body.decode(errors="replace")
            return json.loads(body) if body else {}
        raise api_error(what, status, body)

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        what = f"cannot create pod {namespace}/{name}"
        pod: dict[str, Any] = await self._call(what, "create_namespaced_pod", namespace, manifest)
        return pod

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, or None if there is none of that name."""
        try:
            pod: dict[str, Any] = await self._call(
                f"cannot read pod {namespace}/{name}", "read_namespaced_pod", name, namespace
            )
        except ApiGone:
            return None
        return pod

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete at once (grace 0); False if it was not there."""
        try:
            await self._call(
                f"cannot delete pod {namespace}/{name}",
                "delete_namespaced_pod",
                name,
                namespace,
                grace_period_seconds=0,
            )
        except ApiGone:
            return False
        return True

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        body = {"metadata": {"annotations": annotations}}
        await self._call(
            f"cannot annotate pod {namespace}/{name}",
            "patch_namespaced_pod",
            name,
            namespace,
            body,
        )

    async def pod_log(
        self, namespace: str, name: str, container: str, lines: int, *, timestamps: bool = False
    ) -> str:
        """The last ``lines`` of a container's log (each line prefixed with its RFC 3339
        time with ``timestamps``)."""
        text: str = await self._call(
            f"cannot read the log of {namespace}/{name} ({container})",
            "read_namespaced_pod_log",
            name,
            namespace,
            container=container,
            tail_lines=lines,
            timestamps=timestamps,
            raw=True,
        )
        return text

    async def list_pods(
        self, namespace: str, *, labels: str | None = None, fields: str | None = None
    ) -> dict[str, Any]:
        """The PodList (its ``resourceVersion`` starts a watch that misses nothing)."""
        pods: dict[str, Any] = await self._call(
            f"cannot list pods in {namespace}",
            "list_namespaced_pod",
            namespace,
            label_selector=labels,
            field_selector=fields,
        )
        return pods

    async def pod_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The events whose involved object is the pod, oldest first."""
        found = await self._call(
            f"cannot list the events of pod {namespace}/{name}",
            "list_namespaced_event",
            namespace,
            field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}",
        )
        return list(found.get("items") or [])

    async def watch_pod(
        self, namespace: str, name: str, resource_version: str, timeout: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, pod) for each change of the pod after ``resource_version``."""
        import aiohttp
        from kubernetes_asyncio import watch

        rest, _ = await self._apis()
        stream = watch.Watch(return_type="object")
        try:
            async with stream.stream(
                rest.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=resource_version,
                timeout_seconds=max(int(timeout), 1),
                _request_timeout=timeout + 5,
            ) as events:
                async for event in events:
                    yield str(event["type"]), event["raw_object"]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProviderError(f"cannot watch pod {namespace}/{name} ({exc!r})") from exc
        except Exception as exc:
            from kubernetes_asyncio.client.exceptions import ApiException

            if isinstance(exc, ApiException):
                raise api_error(f"cannot watch pod {namespace}/{name}", exc.status or 0,
                                exc.body or str(exc.reason).encode()) from exc  # fmt: skip
            raise

    @contextlib.asynccontextmanager
    async def exec(
        self, namespace: str, name: str, container: str, command: list[str], *, stdin: bool
    ) -> AsyncIterator[ExecChannels]:
        """An exec websocket into a container of the pod (v4 channel protocol)."""
        import aiohttp

        _, ws_api = await self._apis()
        what = f"cannot exec in pod {namespace}/{name}"
        try:
            connecting = await ws_api.connect_get_namespaced_pod_exec(
                name,
                namespace,
                command=command,
                container=container,
                stdin=stdin,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
            )
            ws = await connecting.__aenter__()
        except aiohttp.WSServerHandshakeError as exc:
            raise api_error(what, exc.status, str(exc.message).encode()) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProviderError(f"{what}: {unreachable(exc)}") from exc
        try:
            yield ExecChannels(ws, what)
        finally:
            with contextlib.suppress(Exception):
                await connecting.__aexit__(None, None, None)

    async def exec_capture(
        self, namespace: str, name: str, container: str, command: list[str]
    ) -> tuple[int, str]:
        """Run a command in a container; its exit code and output (stdout then stderr)."""
        out: list[bytes] = []
        async with self.exec(namespace, name, container, command, stdin=False) as channels:
            async for channel, data in channels:
                if channel in (STDOUT, STDERR):
                    out.append(data)
            code = channels.exit_code()
        return code, b"".join(out).decode(errors="replace")

    async def close(self) -> None:
        """Close the clients' HTTP sessions."""
        for api in (self._rest, self._ws):
            if api is not None:
                with contextlib.suppress(Exception):
                    await api.api_client.close()
        self._rest = self._ws = None


class ExecChannels:
    """One exec's websocket: frames are (channel, bytes); channel 3 ends it with a Status."""

    def __init__(self, ws: Any, what: str) -> None:
        self._ws = ws
        self._what = what
        self.status: dict[str, Any] | None = None

    async def send(self, data: bytes) -> None:
        """Write to the command's stdin."""
        import aiohttp

        try:
            await self._ws.send_bytes(bytes([STDIN]) + data)
        except (aiohttp.ClientError, OSError, ConnectionError) as exc:
            raise ProviderError(f"{self._what}: the exec stream broke ({exc!r})") from exc

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[tuple[int, bytes]]:
        import aiohttp

        while True:
            try:
                message = await self._ws.receive()
            except (aiohttp.ClientError, OSError, ConnectionError) as exc:
                raise ProviderError(f"{self._what}: the exec stream broke ({exc!r})") from exc
            if message.type == aiohttp.WSMsgType.BINARY:
                data = bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                data = str(message.data).encode()
            else:
                return  # closed: the command ended (its Status came first) or the link broke
            if not data:
                continue
            channel, body = data[0], data[1:]
            if channel == STATUS:
                with contextlib.suppress(ValueError):
                    self.status = json.loads(body)
                continue
            if body:
                yield channel, body

    def exit_code(self) -> int:
        """The command's exit code from its Status; ProviderError if none came."""
        status = self.status
        if status is None:
            raise ProviderError(f"{self._what}: the exec ended without an exit status")
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
                return int(cause["message"])
        raise ProviderError(f"{self._what}: {status.get('message') or status}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()


def api_error(what: str, status: int, body: bytes) -> ProviderError:
    """A ProviderError for an API answer: 4xx final (with the server's message), 5xx not."""
    message = body.decode(errors="replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(body).get("message") or message)
    text = f"{what}: {message} (HTTP {status})"
    if status == 404:
        return ApiGone(text)
    # 409 (already exists, being deleted) and 429 (throttled) pass with time.
    retryable = status >= 500 or status in (409, 429) or status == 0
    return ProviderError(text, retryable=retryable)


async def _configuration(connection: KubeConnection) -> Any:
    from kubernetes_asyncio import client
    from kubernetes_asyncio import config as loaders

    config: Any = loaders  # untyped functions
    configuration = client.Configuration()
    try:
        if connection.host:
            configuration.host = connection.host
        elif connection.in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            path = connection.kubeconfig or os.environ.get("KUBECONFIG") or None
            await config.load_kube_config(
                config_file=path, context=connection.context, client_configuration=configuration
            )
    except Exception as exc:
        raise ProviderError(f"cannot load the Kubernetes configuration: {exc}") from exc
    return configuration


def unreachable(exc: BaseException) -> str:
    """Why the API server could not be reached, in words rather than aiohttp's repr."""
    import aiohttp

    if isinstance(exc, TimeoutError):
        return "the Kubernetes API did not answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        why = exc.os_error.strerror or str(exc.os_error)
        return f"cannot reach the Kubernetes API at {exc.host}:{exc.port} ({why})"
    return f"cannot reach the Kubernetes API ({exc})"
