"""``faena server``: the control plane over HTTP, optionally with an in-process agent."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from dataclasses import replace
from types import FrameType

from faena.settings import Settings

DEPOSED_EXIT = 3
RESTART_PAUSE = 2.0  # seconds


def server_command(
    host: str,
    port: int,
    admin_token: str | None,
    jobs: int | None,
    *,
    with_agent: bool,
    advertise_url: str | None = None,
    replica: str | None = None,
) -> int:
    import uvicorn

    from faena.app import build_server, check_backends
    from faena.domain.errors import FaenaError

    settings = Settings.from_env(jobs=jobs, advertise_url=advertise_url, replica=replica)
    if settings.advertise_url is None:
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        settings = replace(settings, advertise_url=f"http://{shown}:{port}")
    if settings.replica is None:
        settings = replace(settings, replica=f"{socket.gethostname()}-{port}")
    token = admin_token or os.environ.get("FAENA_ADMIN_TOKEN") or None
    try:
        asyncio.run(check_backends(settings))
    except (FaenaError, ConnectionError) as exc:
        code = "" if isinstance(exc, FaenaError) else "ORC-INFRA: "
        print(f"error: cannot start: {code}{exc}", file=sys.stderr)
        return 1
    deposed: list[str] = []

    def on_deposed(why: str) -> None:
        # Its in-memory view may be stale: stop, and start again as a follower.
        deposed.append(why)
        server.should_exit = True

    api, system, created = build_server(
        settings, token, with_agent=with_agent, on_deposed=on_deposed
    )
    if created:
        print(
            f"admin token (shown once; stored hashed in {settings.home}/admin-token.sha256):\n"
            f"  {created}\n"
            f"use it as: Authorization: Bearer <token>",
            file=sys.stderr,
        )
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        # Long polls of agents end at once on shutdown; nothing else should take long.
        timeout_graceful_shutdown=5,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Before connections drain: agents that cannot reach a stopping server are
            # not lost, and their long polls are answered now.
            try:
                asyncio.get_running_loop().call_soon_threadsafe(system.begin_shutdown)
            except RuntimeError:
                system.begin_shutdown()
            super().handle_exit(sig, frame)

    server = Server(config)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    logging.getLogger("faena.replica").setLevel(logging.INFO)
    print(f"faena server listening on http://{host}:{port} (API under /api/v1)", file=sys.stderr)
    if system.leadership.fenced:
        print(
            f"replica {settings.replica} (reached at {settings.advertise_url}): serves now, "
            "leads orchestration when it wins the lease",
            file=sys.stderr,
        )
    if with_agent:
        print(f"this machine runs jobs too ({settings.jobs} at once)", file=sys.stderr)
    else:
        print("jobs run on agents: faena agent --server URL --token T", file=sys.stderr)
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        return 130
    if deposed:
        print(
            f"faena server: this replica no longer leads ({deposed[0]}); "
            "starting again as a follower",
            file=sys.stderr,
            flush=True,
        )
        # A fresh process: nothing of the deposed leader's memory survives. The same
        # process id, so a supervisor sees no exit. The pause keeps a replica that fails
        # to lead (and so stops) from starting again in a tight loop.
        time.sleep(RESTART_PAUSE)
        try:
            os.execv(sys.executable, [sys.executable, "-m", "faena", *sys.argv[1:]])
        except OSError as exc:
            print(f"error: could not start again ({exc}); start it by hand", file=sys.stderr)
        return DEPOSED_EXIT
    print("faena server stopped", file=sys.stderr)
    return 0
