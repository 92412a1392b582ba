"""API tokens: issue, list, revoke (``/api/v1/tokens``). Tokens are shown once, kept hashed.

No ``from __future__ import annotations``: FastAPI reads these annotations at runtime.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from faena.domain.errors import ErrorCode, FaenaError, NotFound
from faena.security.port import Principal
from faena.security.tokens import AGENT_SCOPES, StoredTokenAuthenticator, issue_token
from faena.store.port import Store, TokenRecord

# Every scope a token can carry; the table in docs/api.md says which endpoint needs which.
SCOPES = (
    "job:create",
    "job:read",
    "job:cancel",
    "job:retry",
    "node:read",
    "node:register",
    "schedule:assign",
    "worker:create",
    "worker:read",
    "exec:run",
    "token:create",
    "token:read",
    "token:revoke",
    "artifact:upload",
)

Scope = Literal[SCOPES]  # type: ignore[valid-type]


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@:-]+$")]
    kind: Literal["user", "agent"] = "user"
    scopes: Annotated[list[Scope], Field(max_length=len(SCOPES))] = []
    ttl_days: Annotated[float, Field(gt=0, le=3650)] | None = None


def _public(r: TokenRecord) -> dict[str, Any]:
    return {
        "token_id": r.token_id,
        "name": r.subject,
        "kind": r.kind,
        "scopes": list(r.scopes),
        "tenant_id": r.tenant_id,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "revoked_at": r.revoked_at,
    }


def tokens_router(
    *,
    store: Store,
    authenticator: StoredTokenAuthenticator,
    require: Callable[[str], Callable[..., Awaitable[Principal]]],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

    @router.post("", status_code=201)
    async def create(
        body: TokenBody, p: Annotated[Principal, Depends(require("token:create"))]
    ) -> dict[str, Any]:
        """Issue a token; the answer is the only time its secret is shown. An agent token
        (kind ``agent``) may only register a node and run its jobs."""
        if body.kind == "agent" and body.scopes:
            raise FaenaError(
                "an agent token has the scope node:register only; give no scopes",
                code=ErrorCode.ORC_VALID,
            )
        scopes = tuple(AGENT_SCOPES) if body.kind == "agent" else tuple(body.scopes)
        if not scopes:
            raise FaenaError("a user token needs at least one scope", code=ErrorCode.ORC_VALID)
        missing = [s for s in scopes if not p.has(s)]
        if missing:
            raise FaenaError(
                f"cannot grant scopes you do not hold: {', '.join(missing)}",
                code=ErrorCode.ORC_AUTH,
            )
        ttl = body.ttl_days * 86400 if body.ttl_days else None
        record, token = await issue_token(
            store, subject=body.name, scopes=scopes, kind=body.kind, tenant_id=p.tenant_id,
            ttl=ttl,
        )  # fmt: skip
        return {**_public(record), "token": token}

    @router.get("")
    async def listing(
        _: Annotated[Principal, Depends(require("token:read"))],
        kind: Annotated[Literal["user", "agent"] | None, Query()] = None,
    ) -> dict[str, Any]:
        """Issued tokens, without their secrets."""
        return {"items": [_public(r) for r in await store.list_tokens(kind)]}

    @router.delete("/{token_id}", status_code=200)
    async def revoke(
        token_id: Annotated[str, Field(max_length=64)],
        _: Annotated[Principal, Depends(require("token:revoke"))],
    ) -> dict[str, Any]:
        """Revoke a token at once; idempotent."""
        if not await store.revoke_token(token_id, time.time()):
            raise NotFound(f"no token {token_id}")
        authenticator.forget()
        return {"token_id": token_id, "status": "revoked"}

    return router
