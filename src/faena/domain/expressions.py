"""GitHub-Actions-style expressions: ``success() && matrix.py == '3.12'``.

A real tokenizer and parser (no ``eval``). Public API below; implementation pending.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faena.domain.errors import ErrorCode, FaenaError


class ExpressionError(FaenaError):
    """An expression failed to parse or evaluate; ``position`` is a 0-based offset."""

    code = ErrorCode.ORC_VALID

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class Expr:
    """A parsed expression tree node."""


def parse(source: str) -> Expr:
    """Parse an expression (without the ``${{ }}`` wrapper)."""
    raise NotImplementedError


def evaluate(expr: Expr | str, context: Mapping[str, Any]) -> Any:
    """Evaluate against a context of ``env``, ``matrix``, ``needs``, ``steps`` and status."""
    raise NotImplementedError


def interpolate(text: str, context: Mapping[str, Any]) -> str:
    """Replace every ``${{ expr }}`` in ``text`` by its value as a string."""
    raise NotImplementedError
