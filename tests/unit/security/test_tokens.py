"""Token authentication, scope checks and the admin token's first start."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from faena.domain.errors import ErrorCode
from faena.security.port import Forbidden, Principal, Unauthenticated
from faena.security.tokens import (
    ADMIN,
    ScopeAuthorizer,
    TokenAuthenticator,
    admin_token_hash,
    hash_token,
)

READER = Principal(subject="ci-bot", scopes=frozenset({"job:read"}))


async def test_tokens_are_known_by_hash_only() -> None:
    auth = TokenAuthenticator({hash_token("s3cret"): READER})
    assert await auth.authenticate("s3cret") is READER
    for bad in (None, "", "s3cret ", "other"):
        with pytest.raises(Unauthenticated) as err:
            await auth.authenticate(bad)
        assert err.value.code is ErrorCode.SEC_TOK


def test_scopes() -> None:
    authz = ScopeAuthorizer()
    authz.authorize(READER, "job:read")
    authz.authorize(ADMIN, "exec:run")
    with pytest.raises(Forbidden) as err:
        authz.authorize(READER, "job:create")
    assert err.value.code is ErrorCode.ORC_AUTH


def test_admin_token_created_once_and_stored_hashed(tmp_path: Path) -> None:
    digest, token = admin_token_hash(tmp_path, None)
    assert token is not None and digest == hash_token(token)
    stored = tmp_path / "admin-token.sha256"
    assert token not in stored.read_text()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    again, shown = admin_token_hash(tmp_path, None)
    assert again == digest and shown is None
    given, shown = admin_token_hash(tmp_path, "mine")
    assert given == hash_token("mine") and shown is None
