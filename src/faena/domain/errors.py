"""Domain errors carrying the seed error codes (distributed_use_cases.md, Tabla 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ErrorCode(StrEnum):
    """Error codes of the seed catalogue, spelled in ASCII."""

    ORC_VALID = "ORC-VALID"
    ORC_AUTH = "ORC-AUTH"
    ORC_INFRA = "ORC-INFRA"
    ORC_STATE = "ORC-STATE"
    SCH_CAP = "SCH-CAP"
    SCH_POL = "SCH-POL"
    WKM_PROV = "WKM-PROV"
    WKM_CREDS = "WKM-CREDS"
    TEL_DROP = "TEL-DROP"
    SEC_TOK = "SEC-TOK"
    SEC_AVP = "SEC-AVP"
    ART_CHK = "ART-CHK"
    # Not in the seed table: outcomes of user code, reported on failed steps and jobs.
    EXEC_FAILED = "EXEC-FAILED"
    EXEC_TIMEOUT = "EXEC-TIMEOUT"


class FaenaError(Exception):
    """Base error: a code and a human message."""

    code: ErrorCode = ErrorCode.ORC_INFRA

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in a pipeline file, located by file, line, column and field path."""

    message: str
    path: str = ""
    file: str = ""
    line: int = 0
    column: int = 0
    code: ErrorCode = ErrorCode.ORC_VALID

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line:
            where += f":{self.line}:{self.column}"
        if self.path:
            return f"{where} {self.path}: {self.message}"
        # `file: message` when nothing narrower is known, `file:line:col message` otherwise.
        return f"{where}{'' if self.line else ':'} {self.message}"


@dataclass
class SpecValidationError(FaenaError):
    """A pipeline spec is invalid; carries every issue found, not just the first."""

    issues: list[ValidationIssue] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.issues)
        summary = "; ".join(str(i) for i in self.issues[:3])
        more = f" (+{count - 3} more)" if count > 3 else ""
        FaenaError.__init__(self, f"{count} error(s): {summary}{more}", code=ErrorCode.ORC_VALID)

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


class IllegalTransition(FaenaError):
    """A state change not allowed by the FROM/TO rules."""

    code = ErrorCode.ORC_STATE

    def __init__(self, entity: str, current: str, target: str) -> None:
        super().__init__(f"{entity}: illegal transition {current} -> {target}")
        self.entity = entity
        self.current = current
        self.target = target


class NotFound(FaenaError):
    """A referenced run, job or step does not exist."""

    code = ErrorCode.ORC_VALID
