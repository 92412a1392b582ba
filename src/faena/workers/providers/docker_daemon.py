"""The docker provider's calls to the daemon, through aiodocker: every failure becomes a
ProviderError that says what failed (``Unreachable`` when the daemon did not answer)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from faena.workers.port import ProviderError

_UNREACHABLE = 900  # aiodocker's status for a connection that failed


class Unreachable(ProviderError):
    """The daemon did not answer (stopped, or a wrong socket)."""


class DockerDaemon:
    """One connection to a docker daemon, made on first use (in the running loop)."""

    def __init__(self, url: str | None = None, *, pull: bool = False) -> None:
        self._url = url
        self._pull = pull
        self._docker: Any = None

    @property
    def connected(self) -> bool:
        return self._docker is not None

    async def client(self) -> Any:
        if self._docker is None:
            import aiodocker  # here, not at import: the CLI starts without it

            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def call(self, what: str, call: Any) -> Any:
        """Await a daemon call; its failures become ProviderErrors that say what failed."""
        import aiodocker
        import aiohttp

        try:
            return await call
        except aiodocker.DockerError as exc:
            if exc.status == _UNREACHABLE:
                message = f"{what}: cannot reach the docker daemon ({exc.message})"
                raise Unreachable(message) from exc
            raise ProviderError(f"{what}: {exc.message} (docker {exc.status})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{what}: cannot reach the docker daemon ({exc})") from exc

    async def create_container(self, config: dict[str, Any], name: str, what: str) -> Any:
        """Create a container of ``config["Image"]``; an image not here is pulled (when
        pulling is on) or fails for good, naming it. No image look-up before: one call less
        on every job's start."""
        import aiodocker

        docker = await self.client()
        try:
            return await self.call(what, docker.containers.create(config, name=name))
        except ProviderError as exc:
            cause = exc.__cause__
            if not (
                isinstance(cause, aiodocker.DockerError)
                and cause.status == 404
                and "image" in str(cause.message).lower()
            ):
                raise
        await self._fetch_image(str(config["Image"]))
        return await self.call(what, docker.containers.create(config, name=name))

    async def _fetch_image(self, image: str) -> None:
        docker = await self.client()
        if self._pull:
            with contextlib.suppress(ProviderError):
                await self.call(f"cannot pull {image!r}", docker.images.pull(image))
                return
        raise ProviderError(
            f"image {image!r} is not on this docker host"
            + (" and could not be pulled" if self._pull else " (pulling is off)")
            + ": build or load it first (docker build / docker load)",
            retryable=False,
        )

    async def containers(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        docker = await self.client()
        data = await self.call(
            "cannot list containers",
            docker._query_json(
                "containers/json", params={"all": "1", "filters": json.dumps(filters)}
            ),
        )
        return list(data)

    async def remove(self, cid: str, *, stop_only: bool = False) -> None:
        import aiodocker

        docker = await self.client()
        container = docker.containers.container(cid)
        try:
            if stop_only:
                await container.kill(signal="SIGKILL")
            else:
                await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status in (404, 409):  # gone already, or being removed / not running
                return
            what = f"cannot remove container {cid[:12]}"
            if exc.status == _UNREACHABLE:
                message = f"{what}: cannot reach the docker daemon ({exc.message})"
                raise Unreachable(message) from exc
            raise ProviderError(f"{what}: {exc.message}") from exc
        except OSError as exc:
            raise Unreachable(f"cannot remove container {cid[:12]}: cannot reach the docker "
                              f"daemon ({exc})") from exc  # fmt: skip

    async def inspect(self, cid: str) -> dict[str, Any]:
        docker = await self.client()
        data = await self.call(
            f"cannot inspect container {cid[:12]}", docker.containers.container(cid).show()
        )
        state: dict[str, Any] = data.get("State", {})
        return state

    async def logs_tail(self, cid: str, lines: int = 20) -> str:
        docker = await self.client()
        with contextlib.suppress(Exception):
            got = await docker.containers.container(cid).log(stdout=True, stderr=True, tail=lines)
            text = "".join(got).strip()
            if text:
                return f"; its last output:\n{text}"
        return ""

    async def log_text(self, cid: str, lines: int) -> str:
        """The last ``lines`` of a container's output (both streams), each line prefixed
        with its RFC 3339 time."""
        docker = await self.client()
        got = await self.call(
            f"cannot read the log of container {cid[:12]}",
            docker.containers.container(cid).log(
                stdout=True, stderr=True, tail=lines, timestamps=True
            ),
        )
        return "".join(got)

    async def run_exec(
        self, cid: str, cmd: list[str], env: dict[str, str] | None, workdir: str | None
    ) -> int:
        """Start an exec and wait for it to end; its exit code."""
        docker = await self.client()
        container = docker.containers.container(cid)
        what = "cannot run a step in the worker's container"
        kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "stdin": False, "tty": False}
        if env is not None:
            kwargs["environment"] = env
        if workdir is not None:
            kwargs["workdir"] = workdir
        execution = await self.call(what, container.exec(cmd, **kwargs))
        async with execution.start(detach=False) as stream:
            while await self.call(what, stream.read_out()) is not None:
                pass
        info = await self.call(what, execution.inspect())
        code = info.get("ExitCode")
        if code is not None and code < 128 and not info.get("Running"):
            return int(code)  # the common case: no signal, no need to look at the container
        try:
            state = await self.inspect(cid)
        except ProviderError:
            state = {}
        if code is None or info.get("Running") or not state.get("Running"):
            # Killed or removed from outside, or the daemon went away mid-step.
            raise ProviderError(f"the worker's container stopped ({describe(state)})")
        return int(code)

    async def exec_capture(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        """Run a command in a container; its exit code and output (for health checks)."""
        import aiodocker

        docker = await self.client()
        container = docker.containers.container(cid)
        what = "cannot run a command in a container"
        execution = await self.call(what, container.exec(cmd, stdout=True, stderr=True))
        chunks: list[bytes] = []
        try:
            async with execution.start(detach=False) as stream:
                while (message := await self.call(what, stream.read_out())) is not None:
                    chunks.append(message.data)
        except aiodocker.DockerError as exc:  # starting it: e.g. the container stopped
            raise ProviderError(f"{what}: {exc.message}") from exc
        info = await self.call(what, execution.inspect())
        return int(info.get("ExitCode") or 0), b"".join(chunks).decode(errors="replace")

    async def close(self) -> None:
        """Close the connection to the daemon."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None


def describe(state: dict[str, Any]) -> str:
    if not state:
        return "it was removed"
    parts = [str(state.get("Status", "unknown"))]
    if state.get("OOMKilled"):
        parts.append("out of memory")
    if state.get("ExitCode") not in (None, 0):
        parts.append(f"exit code {state.get('ExitCode')}")
    return ", ".join(parts)
