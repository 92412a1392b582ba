"""Bearer tokens checked against stored hashes, and the admin token's first-start set-up."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from faena.security.port import Forbidden, Principal, Unauthenticated

ADMIN = Principal(subject="admin", scopes=frozenset({"*"}))


def hash_token(token: str) -> str:
    """sha256 hex of a token: tokens are high-entropy, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenAuthenticator:
    """Knows tokens only by their hashes; compares in constant time."""

    def __init__(self, hashes: dict[str, Principal]) -> None:
        self._hashes = dict(hashes)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        digest = hash_token(token)
        for known, principal in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("invalid token")


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
    token = "fa_" + secrets.token_urlsafe(32)
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hash_token(token) + "\n")
    return hash_token(token), token
