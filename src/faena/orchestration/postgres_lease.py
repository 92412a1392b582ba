"""Leadership on PostgreSQL: a session advisory lock held on a connection of its own.

The server releases a session lock the moment the connection ends, so a leader killed with
``kill -9`` frees it at once (the kernel closes the socket) and a follower polling with
``pg_try_advisory_lock`` takes over within ``poll`` seconds. The leader checks its
connection every ``check`` seconds. If the connection drops (a database restart, a network
cut) it takes the lock again and keeps its term when nobody claimed one meanwhile;
otherwise it has lost the lease, and ``hold`` returns. Until then its commits are fenced by
the store, so a leader that has not noticed yet still cannot act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url

from faena.store.port import Deposed, Store

log = logging.getLogger(__name__)

# (class, object) of the lock: the store's own class (store/sql.py), object 3.
LOCK_CLASS = 0x6661656E
LOCK_KEY = 3
_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# The server drops the session of a leader whose host died or was cut off within ~10 s
# (else the OS keepalive, about two hours, would hold the lock that long).
_DEAD_PEER = {
    "tcp_keepalives_idle": "3",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
PING_TIMEOUT = 5.0  # a slow ping is not a lost lock; a lost connection fails at once
_REPORT_EVERY = 30.0  # seconds between repeated "cannot reach the database" warnings


def connect_args(url: str) -> dict[str, Any]:
    """asyncpg.connect's arguments for the URL the store uses, read the way SQLAlchemy's
    asyncpg dialect reads them (its own query options, such as
    ``prepared_statement_cache_size``, are not server settings)."""
    _, params = asyncpg_dialect().create_connect_args(make_url(url))  # type: ignore[no-untyped-call]
    params.pop("prepared_statement_cache_size", None)
    params.pop("prepared_statement_name_func", None)
    params.pop("async_fallback", None)
    return dict(params)


class PostgresLease:
    """Leadership through ``pg_try_advisory_lock`` (see the module doc)."""

    fenced = True

    def __init__(
        self,
        url: str,
        store: Store,
        holder: str,
        advertise: str,
        *,
        poll: float = 0.5,
        check: float = 1.0,
    ) -> None:
        self._connect = connect_args(url)
        self._where = make_url(url).render_as_string(hide_password=True)
        self._reported = 0.0
        self._store = store
        self._holder = holder
        self._url = advertise
        self._poll = poll
        self._check = check
        self._conn: asyncpg.Connection | None = None
        self._term: int | None = None
        self._closed = False

    async def campaign(self) -> int:
        while True:
            if await self._try_lock():
                try:
                    self._term = await self._store.claim_leadership(self._holder, self._url)
                except Exception as exc:
                    log.warning("leadership: could not record the claim (%s); retrying", exc)
                    await self._drop()
                else:
                    log.info("leadership: %s leads, term %d", self._holder, self._term)
                    return self._term
            await asyncio.sleep(self._poll)

    async def hold(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._check)
            if await self._alive():
                continue
            log.warning("leadership: lost the lock connection; taking the lock again")
            if not await self._retake():
                return

    async def _retake(self) -> bool:
        """Re-take the lock after losing its connection; False when another leads."""
        while not self._closed:
            try:
                got = await self._try_lock(quiet=False)
            except _ERRORS as exc:
                log.info("leadership: database unreachable (%s); retrying", exc)
                await asyncio.sleep(self._poll)
                continue
            if not got:
                log.error("leadership: another replica holds the lock; this one is deposed")
                return False
            try:
                await self._store.claim_leadership(self._holder, self._url, keep=self._term)
            except Deposed as exc:
                log.error("leadership: %s", exc)
                await self._drop()
                return False
            except Exception as exc:
                log.info("leadership: could not confirm the term (%s); retrying", exc)
                await self._drop()
                await asyncio.sleep(self._poll)
                continue
            log.info("leadership: still leading, term %s", self._term)
            return True
        return False

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await conn.fetchval("SELECT 1", timeout=max(self._check, PING_TIMEOUT))
        except _ERRORS:
            await self._drop()
            return False
        return True

    async def _try_lock(self, *, quiet: bool = True) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                settings = {**self._connect.get("server_settings", {}), **_DEAD_PEER}
                self._conn = await asyncpg.connect(
                    **{**self._connect, "server_settings": settings},
                    timeout=max(self._check, 1.0),
                )
            got = await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)",
                LOCK_CLASS,
                LOCK_KEY,
                timeout=max(self._check, PING_TIMEOUT),
            )
        except _ERRORS as exc:
            await self._drop()
            if not quiet:
                raise
            self._report(exc)
            return False
        return bool(got)

    def _report(self, exc: BaseException) -> None:
        """Say why the lock cannot be taken (a bad password, a setting the server refuses),
        once in a while rather than at every poll."""
        now = time.monotonic()
        if now - self._reported >= _REPORT_EVERY:
            self._reported = now
            log.warning("leadership: cannot reach %s to contend for the lease: %s",
                        self._where, exc)  # fmt: skip

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self._check)
            if not conn.is_closed():
                conn.terminate()

    async def close(self) -> None:
        self._closed = True
        await self._drop()
