"""A real PostgreSQL server for tests: initdb + pg_ctl in a temp dir on a free loopback port.

One server per pytest process (so one per xdist worker), started when a test first asks
for it and stopped, its directory removed, at the end of the session. Each test gets a
database of its own (CREATE DATABASE, dropped afterwards), so tests never share state.

As root the server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root),
on a directory that user owns. The binaries are found on PATH, else in the newest
/usr/lib/postgresql/<version>/bin. When they are missing the tests skip, except in CI
(CI=true), where a missing component is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from components import missing

T = TypeVar("T")

_SERVER_USER = "postgres"
_SUPERUSER = "postgres"  # the database role initdb creates (-U)
# Test servers trade durability for speed: a crash loses the (throwaway) data.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        # Debian links them into /usr/local/bin or /usr/bin: the real directory holds them all.
        for bindir in (Path(on_path).resolve().parent, Path(on_path).parent):
            if _complete(bindir):
                return bindir
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(versions):
        if _complete(bindir):
            return bindir
    return None


def _complete(bindir: Path) -> bool:
    return all((bindir / name).exists() for name in ("initdb", "pg_ctl"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on a loop of its own, on another thread: callable from sync
    code, fixtures included, whether or not the calling thread runs an event loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # handed back to the caller
            error.append(exc)

    thread = threading.Thread(target=target, name="postgres-admin")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class PostgresServer:
    """One throwaway server; ``start`` and ``stop`` are blocking."""

    def __init__(self, bindir: Path, *, fast: bool = True) -> None:
        self.bindir = bindir
        self.fast = fast
        self.root = Path(tempfile.mkdtemp(prefix="faena-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.sockets.mkdir()
        if self._as_postgres:
            user = pwd.getpwnam(_SERVER_USER)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            _SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        # A free port can be taken between the probe and the server's bind: try again.
        for attempt in range(3):
            self.port = free_port()
            try:
                self._pg_start()
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            self._started = True
            return

    def _pg_start(self) -> None:
        options = [
            f"-p {self.port}",
            f"-k {self.sockets}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
        ]
        if self.fast:
            options += [f"-c {setting}" for setting in _FAST_SETTINGS]
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o",
                  " ".join(options), "-w", "-t", "60", "start")  # fmt: skip

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (fast: connections are cut) and start it again on the same
        port and data, after ``down_for`` seconds."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(down_for)
        self._pg_start()

    def stop(self) -> None:
        try:
            if self._started:
                self._started = False
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ---------------------------------------------------------------------

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that failed may have left connections open.
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def admin(self, sql: str) -> None:
        """Run one statement on the maintenance database (outside a transaction)."""
        run_async(self._admin(sql))

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=_SUPERUSER, database="postgres"
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # -- helpers -----------------------------------------------------------------------

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = self.logfile.read_text()[-4000:]
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stdout}\n{done.stderr}\n{log}".strip()
            )


def start_server(*, fast: bool = True) -> PostgresServer:
    """A started server, or a skip (a failure in CI) naming what is missing."""
    bindir = find_bindir()
    if bindir is None:
        missing("PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql")
    assert bindir is not None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            missing(f"the '{_SERVER_USER}' OS user to run PostgreSQL as (running as root)")
        if shutil.which("runuser") is None:
            missing("runuser, to start PostgreSQL as the postgres user")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing("the asyncpg driver")
    server = PostgresServer(bindir, fast=fast)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


async def end_leader_session(url: str) -> None:
    """End the database session holding the leadership lock, as a network cut or the
    leader's death would (orchestration/postgres_lease.py)."""
    import asyncpg

    from faena.orchestration.postgres_lease import LOCK_CLASS, LOCK_KEY, connect_args

    admin = await asyncpg.connect(**connect_args(url))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = $1 AND objid = $2 AND granted",
            LOCK_CLASS,
            LOCK_KEY,
        )
    finally:
        await admin.close()
