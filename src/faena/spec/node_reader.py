"""Shape checks of YAML nodes shared by the pipeline readers: every problem is collected
with its file, line, column and dotted field path, never only the first."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

from faena.domain.errors import ValidationIssue
from faena.spec.yaml_positions import MappingNode, Node, ScalarNode, describe

__all__ = ["ID_RULE", "NodeReader", "hint", "join_path", "sorted_issues"]

T = TypeVar("T")

ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
ID_RULE = "use letters, digits, '-' and '_', starting with a letter or '_'"


def sorted_issues(issues: list[ValidationIssue]) -> list[ValidationIssue]:
    return sorted(issues, key=lambda i: (i.line, i.column))


def hint(name: str, choices: Collection[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class NodeReader:
    """Checks of YAML nodes against expected shapes; ``issues`` collects every problem.

    A format's reader subclasses it and adds its schema; ``unsupported`` maps keys people
    bring from elsewhere to the explanation given instead of "unknown field".
    """

    def __init__(self, filename: str, unsupported: Mapping[str, str] | None = None) -> None:
        self.filename = filename
        self.issues: list[ValidationIssue] = []
        self._unsupported = dict(unsupported or {})

    def issue(self, node: Node | None, path: str, message: str) -> None:
        self.issues.append(
            ValidationIssue(
                message,
                path=path,
                file=self.filename,
                line=node.line if node else 0,
                column=node.column if node else 0,
            )
        )

    def expected(self, node: Node, path: str, what: str) -> None:
        self.issue(node, path, f"expected {what}, got {describe(node)}")

    def mapping(
        self, node: Node, path: str, allowed: Collection[str], *, extensions: bool = False
    ) -> MappingNode | None:
        """``node`` as a mapping whose keys are all in ``allowed`` (unknown keys reported).

        With ``extensions``, ``x-*`` keys are ignored: a place to keep YAML anchors.
        """
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping")
            return None
        for key, key_node in node.keys.items():
            if key in allowed or (extensions and key.startswith("x-")):
                continue
            if key in self._unsupported:
                message = self._unsupported[key]
            else:
                message = f"unknown field '{key}'{hint(key, allowed)}"
            self.issue(key_node, join_path(path, key), message)
        return node

    def string(self, node: Node, path: str, *, empty: bool = False) -> str | None:
        """A string; numbers are taken as written (``1.10`` stays ``"1.10"``)."""
        if isinstance(node, ScalarNode) and not isinstance(node.value, bool | None):
            text = node.raw if not isinstance(node.value, str) else node.value
            if not empty and not text.strip():
                self.issue(node, path, "must not be empty")
                return None
            return text
        self.expected(node, path, "a string")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and isinstance(node.value, bool):
            return node.value
        self.expected(node, path, "a boolean (true or false)")
        return None

    def integer(
        self, node: Node, path: str, minimum: int, maximum: int | None = None
    ) -> int | None:
        value = node.value if isinstance(node, ScalarNode) else None
        if not isinstance(value, int) or isinstance(value, bool):
            self.expected(node, path, "an integer")
            return None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.issue(node, path, f"must be {bound}, got {value}")
            return None
        return value

    def identifier(self, node: Node, path: str, what: str, text: str) -> bool:
        if ID.fullmatch(text):
            return True
        self.issue(node, path, f"invalid {what} '{text}': {ID_RULE}")
        return False

    def quantity(self, node: Node, path: str, parse: Callable[[object], T]) -> T | None:
        """A duration, size or cpu value parsed by one of ``faena.domain.durations``."""
        if not isinstance(node, ScalarNode) or node.value is None:
            self.expected(node, path, "a number or a string with a unit")
            return None
        try:
            return parse(node.value)
        except ValueError as exc:
            self.issue(node, path, str(exc))
            return None
