"""Bearer tokens checked against stored hashes, and the admin token's first-start set-up.

Two authenticators behind the same port: ``TokenAuthenticator`` knows a fixed set of
hashes (tests, automation), ``StoredTokenAuthenticator`` also knows the tokens issued
through the API and kept (hashed) in the store, with their revocation and expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from faena.domain.events import new_id
from faena.security.port import Forbidden, Principal, Unauthenticated
from faena.store.port import Store, TokenRecord

ADMIN = Principal(subject="admin", scopes=frozenset({"*"}), token_id="admin")
AGENT_SCOPES = ("node:register",)
# A revocation reaches every request within this many seconds.
CACHE_SECONDS = 5.0


def hash_token(token: str) -> str:
    """sha256 hex of a token: tokens are high-entropy, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "fa_" + secrets.token_urlsafe(32)


class TokenAuthenticator:
    """Knows tokens only by their hashes; compares in constant time."""

    def __init__(self, hashes: dict[str, Principal]) -> None:
        self._hashes = dict(hashes)

    def find(self, digest: str) -> Principal | None:
        for known, principal in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        principal = self.find(hash_token(token))
        if principal is None:
            raise Unauthenticated("invalid token")
        return principal


class StoredTokenAuthenticator:
    """Fixed tokens (the admin's) first, then the store's; answers are cached briefly."""

    def __init__(
        self,
        store: Store,
        fixed: TokenAuthenticator,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._fixed = fixed
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def forget(self) -> None:
        """Drop cached answers (after a revocation in this process)."""
        self._cache.clear()

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        digest = hash_token(token)
        principal = self._fixed.find(digest)
        if principal is not None:
            return principal
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is None or now - cached[0] > CACHE_SECONDS:
            record = await self._store.token_by_hash(digest)
            cached = (now, _principal(record, now) if record else None)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = cached
        if cached[1] is None:
            raise Unauthenticated("invalid, revoked or expired token")
        return cached[1]


def _principal(record: TokenRecord, now: float) -> Principal | None:
    if record.revoked_at is not None or (record.expires_at and record.expires_at <= now):
        return None
    return Principal(record.subject, frozenset(record.scopes), record.tenant_id, record.token_id)


async def issue_token(
    store: Store,
    *,
    subject: str,
    scopes: tuple[str, ...],
    kind: str,
    tenant_id: str,
    ttl: float | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[TokenRecord, str]:
    """Create a token; returns its record and the token itself (shown once, never kept)."""
    token = new_token()
    now = clock()
    record = TokenRecord(
        token_id="tk-" + new_id()[-12:],
        token_hash=hash_token(token),
        subject=subject,
        scopes=tuple(sorted(set(scopes))),
        tenant_id=tenant_id,
        kind=kind,
        created_at=now,
        expires_at=now + ttl if ttl else None,
    )
    await store.put_token(record)
    return record, token


class ScopeAuthorizer:
    """Allows a request when the principal holds its scope (Cedar policies come later)."""

    def authorize(self, principal: Principal, scope: str) -> None:
        if not principal.has(scope):
            raise Forbidden(f"{principal.subject} lacks scope {scope}")


def admin_token_hash(home: Path, given: str | None) -> tuple[str, str | None]:
    """The admin token's hash, and the token itself when it was just created.

    A given token (``--admin-token``/``FAENA_ADMIN_TOKEN``) wins; otherwise the hash kept
    in ``home`` from an earlier start; otherwise a new token, returned once to be shown.
    """
    path = home / "admin-token.sha256"
    if given:
        return hash_token(given), None
    if path.exists():
        return path.read_text().strip(), None
    token = new_token()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hash_token(token) + "\n")
    return hash_token(token), token
