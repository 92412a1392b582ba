"""Who is calling and what they may do: the Authenticator and Authorizer ports.

Scopes are ``<resource>:<action>`` (DESIGN.md, "API"). The OIDC authenticator and the
Cedar authorizer arrive in a later issue; until then a token authenticator and a scope
check stand in, behind the same ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from faena.domain.errors import ErrorCode, FaenaError
from faena.domain.events import DEFAULT_TENANT


class Unauthenticated(FaenaError):
    """No credentials, or credentials that are not valid (401, SEC-TOK)."""

    code = ErrorCode.SEC_TOK


class Forbidden(FaenaError):
    """Valid credentials without the scope the request needs (403, ORC-AUTH)."""

    code = ErrorCode.ORC_AUTH


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    tenant_id: str = DEFAULT_TENANT
    token_id: str | None = None

    def has(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


class Authenticator(Protocol):
    async def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token stands for; raises Unauthenticated."""
        ...


class Authorizer(Protocol):
    def authorize(self, principal: Principal, scope: str) -> None:
        """Return if ``principal`` may act with ``scope``; raises Forbidden."""
        ...
