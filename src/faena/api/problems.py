"""RFC 9457 problem details carrying the seed error codes; never a 500 for bad input."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from faena.domain.errors import ErrorCode, FaenaError, NotFound, SpecValidationError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"

_STATUS = {
    ErrorCode.ORC_VALID: 422,
    ErrorCode.ORC_STATE: 409,
    ErrorCode.SEC_TOK: 401,
    ErrorCode.ORC_AUTH: 403,
    ErrorCode.SEC_AVP: 403,
    ErrorCode.ORC_INFRA: 503,
}
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    422: "Invalid input",
    503: "Service unavailable",
}


class PayloadTooLarge(FaenaError):
    """The request body exceeds the server's limit (413)."""

    code = ErrorCode.ORC_VALID


def problem(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": f"https://faena.dev/problems/{code.lower()}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        # Unavailable for now (the database restarting, leadership moving): nothing was
        # done, so clients and agents may send the same request again.
        headers = {"Retry-After": "1"}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(api: FastAPI) -> None:
    """Turn every error into a problem response."""

    @api.exception_handler(SpecValidationError)
    async def _spec(_: Request, exc: SpecValidationError) -> JSONResponse:
        issues = [{**asdict(i), "code": str(i.code)} for i in exc.issues]
        return problem(422, ErrorCode.ORC_VALID, exc.message, errors=issues)

    @api.exception_handler(FaenaError)
    async def _faena(_: Request, exc: FaenaError) -> JSONResponse:
        if isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, PayloadTooLarge):
            status = 413
        else:
            status = _STATUS.get(exc.code, 500)
        if status >= 500:
            log.error("request failed: %s", exc)
        return problem(status, exc.code, exc.message)

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        return problem(422, ErrorCode.ORC_VALID, "the request is not valid", errors=errors)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ErrorCode.SEC_TOK if exc.status_code == 401 else ErrorCode.ORC_VALID
        return problem(exc.status_code, code, str(exc.detail))

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(500, ErrorCode.ORC_INFRA, "internal error; see the server log")


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details with the seed's error code",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "examples": ["ORC-VALID"]},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}
# What any authenticated route may answer besides its own success.
_DECLARED = {
    "400": "Bad request",
    "401": "Missing or invalid token (SEC-TOK)",
    "403": "Token without the route's scope (ORC-AUTH)",
    "404": "Unknown run, job, node, token or worker",
    "409": "Illegal state change (ORC-STATE) or no capacity (SCH-CAP)",
    "413": "Body over the limit",
    "422": "Invalid input (ORC-VALID), with located errors",
    "503": "Store unavailable (ORC-INFRA)",
}


def document(api: FastAPI) -> None:
    """Publish every error of the API as the problem+json it is, in /openapi.json."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        spec = build()
        spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in spec.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                if path.startswith("/api/"):
                    for status, text in _DECLARED.items():
                        responses.setdefault(status, {"description": text})
                for status, response in responses.items():
                    if status[:1] in "45":
                        response["content"] = content
        schemas = spec["components"]["schemas"]
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        api.openapi_schema = spec
        return spec

    api.openapi = openapi  # type: ignore[method-assign]
