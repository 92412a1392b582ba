"""YAML loading that keeps the 1-based line and column of every node.

We compose (not construct) with PyYAML and convert nodes ourselves, which lets us report
positions, reject duplicate keys, keep mapping keys as the text the user wrote (``on`` stays
``"on"``), and resolve plain scalars by the YAML 1.2 core rules: ``yes``/``on``/``1:30`` stay
strings instead of YAML 1.1 booleans and sexagesimal integers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from faena.domain.errors import ValidationIssue

__all__ = [
    "MappingNode",
    "Node",
    "ScalarNode",
    "ScalarValue",
    "SequenceNode",
    "describe",
    "load_yaml",
    "to_python",
]

ScalarValue = str | int | float | bool | None

try:  # libyaml is several times faster; the pure-Python loader is the fallback.
    _Loader: type[yaml.CSafeLoader | yaml.SafeLoader] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_TAG = "tag:yaml.org,2002:"
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_INT8 = re.compile(r"0o[0-7]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"([-+]?)\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
MAX_NODES = 1_000_000  # nodes a document may expand to once aliases are followed
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})


@dataclass(eq=False)
class Node:
    """A YAML node with its 1-based position."""

    line: int
    column: int


@dataclass(eq=False)
class ScalarNode(Node):
    """A scalar: ``value`` resolved by YAML 1.2 core rules, ``raw`` as written (unquoted)."""

    value: ScalarValue
    raw: str


@dataclass(eq=False)
class MappingNode(Node):
    """A mapping with string keys in file order; ``keys`` holds each key's own node."""

    items: dict[str, Node] = field(default_factory=dict)
    keys: dict[str, ScalarNode] = field(default_factory=dict)


@dataclass(eq=False)
class SequenceNode(Node):
    """A sequence of nodes."""

    items: list[Node] = field(default_factory=list)


def load_yaml(text: str, filename: str) -> tuple[Node | None, list[ValidationIssue]]:
    """The document's root node (None if empty or unreadable) and every problem found."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_issue(exc, text, filename)]
    except yaml.YAMLError as exc:
        # Reader errors (bad characters) carry an offset instead of a mark.
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 0
        column = position - text.rfind("\n", 0, position) if isinstance(position, int) else 0
        message = f"invalid YAML: {str(exc).splitlines()[0]}"
        return None, [ValidationIssue(message, file=filename, line=line, column=column)]
    if root is None:
        return None, []
    converter = _Converter(filename)
    try:
        node = converter.convert(root)
    except RecursionError:
        return None, [ValidationIssue("YAML is nested too deeply", file=filename, line=1, column=1)]
    except _TooLarge:
        message = f"YAML expands to more than {MAX_NODES} nodes through aliases"
        return None, [ValidationIssue(message, file=filename, line=1, column=1)]
    return node, converter.issues


def to_python(node: Node) -> Any:
    """Plain Python data (dicts, lists, scalars) for a node."""
    if isinstance(node, ScalarNode):
        return node.value
    if isinstance(node, MappingNode):
        return {k: to_python(v) for k, v in node.items.items()}
    if isinstance(node, SequenceNode):
        return [to_python(v) for v in node.items]
    raise TypeError(f"not a YAML node: {node!r}")


def describe(node: Node) -> str:
    """What a node is, for "expected X, got Y" messages: ``string 'abc'``, ``a list``."""
    if isinstance(node, MappingNode):
        return "a mapping" if node.items else "an empty mapping"
    if isinstance(node, SequenceNode):
        return "a list" if node.items else "an empty list"
    assert isinstance(node, ScalarNode)
    value = node.value
    if value is None:
        return "null"
    text = node.raw if len(node.raw) <= 40 else node.raw[:37] + "..."
    if isinstance(value, bool):
        return f"boolean {text}"
    if isinstance(value, int | float):
        return f"number {text}"
    return f"string {text!r}"


def _syntax_issue(exc: yaml.MarkedYAMLError, text: str, filename: str) -> ValidationIssue:
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if mark is None:
        return ValidationIssue(message, file=filename)
    if text[mark.index : mark.index + 1] == "\t":
        message += " (a tab: YAML indentation must use spaces)"
    start = exc.context_mark
    # The context helps only when it points elsewhere, e.g. where an unclosed '[' opened.
    if exc.context and exc.problem and start is not None and start.index != mark.index:
        message += f" ({exc.context} at line {start.line + 1}, column {start.column + 1})"
    return ValidationIssue(message, file=filename, line=mark.line + 1, column=mark.column + 1)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _Converter:
    """Turns composed PyYAML nodes into ours, collecting issues instead of stopping."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[ValidationIssue] = []
        # Aliases share one composed node: convert it once, and count the size it expands
        # to, so a "billion laughs" document is rejected instead of eating the memory.
        self._done: dict[int, Node] = {}
        self._sizes: dict[int, int] = {}
        self._active: set[int] = set()

    def convert(self, node: yaml.Node, path: str = "") -> Node:
        key = id(node)
        done = self._done.get(key)
        if done is not None:
            return done
        if key in self._active:
            self._issue(node, "a recursive alias is not supported", path)
            placeholder = ScalarNode(node.start_mark.line + 1, node.start_mark.column + 1, None, "")
            self._sizes[id(placeholder)] = 1
            return placeholder
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        result: Node
        self._active.add(key)
        if isinstance(node, yaml.ScalarNode):
            result = self._scalar(node, path)
            size = 1
        elif isinstance(node, yaml.SequenceNode):
            self._check_tag(node, "seq", path)
            items = [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            result = SequenceNode(line, column, items)
            size = 1 + sum(self._sizes[id(item)] for item in items)
        else:
            assert isinstance(node, yaml.MappingNode)
            self._check_tag(node, "map", path)
            result = MappingNode(line, column)
            self._mapping(node, result, path)
            size = 1 + sum(1 + self._sizes[id(value)] for value in result.items.values())
        self._active.discard(key)
        self._done[key] = result
        self._sizes[id(result)] = size
        if size > MAX_NODES:
            raise _TooLarge(size)
        return result

    def _mapping(self, node: yaml.MappingNode, result: MappingNode, path: str) -> None:
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                merged.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(key_node, "mapping keys must be plain strings", path)
                continue
            key = self._scalar(key_node, path)
            name = key.raw
            child = f"{path}.{name}" if path else name
            if name in result.keys:
                first = result.keys[name]
                self._issue(
                    key_node,
                    f"duplicate key '{name}' (first defined at line {first.line}, "
                    f"column {first.column})",
                    child,
                )
                continue
            result.keys[name] = key
            result.items[name] = self.convert(value_node, child)
        if merged:
            # `<<: *base` keys come first and never override keys written in the mapping.
            items: dict[str, Node] = {}
            keys: dict[str, ScalarNode] = {}
            for source in merged:
                for name, value in source.items.items():
                    if name not in items and name not in result.items:
                        items[name] = value
                        keys[name] = source.keys[name]
            result.items = {**items, **result.items}
            result.keys = {**keys, **result.keys}

    def _merge_sources(self, node: yaml.Node, path: str) -> list[MappingNode]:
        converted = self.convert(node, path)
        if isinstance(converted, MappingNode):
            return [converted]
        if isinstance(converted, SequenceNode) and all(
            isinstance(item, MappingNode) for item in converted.items
        ):
            return [item for item in converted.items if isinstance(item, MappingNode)]
        self._issue(node, "a merge key '<<' needs a mapping or a list of mappings", path)
        return []

    def _scalar(self, node: yaml.ScalarNode, path: str) -> ScalarNode:
        raw: str = node.value
        tag: str = node.tag
        value: ScalarValue = raw
        if tag == _TAG + "null":
            value = None
        elif tag == _TAG + "bool":
            value = True if raw in _TRUE else False if raw in _FALSE else raw
        elif tag == _TAG + "int":
            value = _int(raw)
        elif tag == _TAG + "float":
            value = _float(raw)
        elif tag not in (_TAG + "str", _TAG + "timestamp", _TAG + "merge"):
            self._issue(node, f"unsupported YAML tag '{tag}'", path)
        return ScalarNode(node.start_mark.line + 1, node.start_mark.column + 1, value, raw)

    def _check_tag(self, node: yaml.Node, kind: str, path: str) -> None:
        if node.tag != _TAG + kind:
            self._issue(node, f"unsupported YAML tag '{node.tag}'", path)

    def _issue(self, node: yaml.Node, message: str, path: str) -> None:
        self.issues.append(
            ValidationIssue(
                message,
                path=path,
                file=self.filename,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
            )
        )


def _int(raw: str) -> int | str:
    # YAML 1.1 oddities (017 octal, 1_000, 1:30 sexagesimal) are not integers in YAML 1.2.
    if _INT10.fullmatch(raw):
        return int(raw, 10)
    if _INT16.fullmatch(raw):
        return int(raw[2:], 16)
    if _INT8.fullmatch(raw):
        return int(raw[2:], 8)
    return raw


def _float(raw: str) -> float | str:
    if _FLOAT.fullmatch(raw):
        return float(raw)
    inf = _INF.fullmatch(raw)
    if inf:
        return float("-inf") if inf.group(1) == "-" else float("inf")
    if _NAN.fullmatch(raw):
        return float("nan")
    return raw
