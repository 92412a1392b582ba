"""GitHub-Actions-style expressions: ``success() && matrix.py == '3.12'``.

A real tokenizer and recursive-descent parser (no ``eval``) that follows the semantics of
GitHub's own evaluator: loose equality, case-insensitive strings and property names,
``&&``/``||`` returning operand values, missing properties evaluating to null.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from faena.domain.errors import ErrorCode, FaenaError

__all__ = [
    "HASH_FILES_KEY",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "STATUS_KEY",
    "Call",
    "Compare",
    "Expr",
    "ExpressionError",
    "Index",
    "Literal",
    "Logical",
    "NamedValue",
    "Not",
    "evaluate",
    "find_expressions",
    "interpolate",
    "parse",
    "references",
    "strip_wrapper",
    "uses_status_function",
]

# GitHub's own limits; they also keep the recursive parser and evaluator far from
# Python's recursion limit.
MAX_LENGTH = 21_000
MAX_DEPTH = 50

STATUS_KEY = "__status__"
HASH_FILES_KEY = "__hash_files__"
_STATUS_DEFAULTS = {"success": True, "failure": False, "cancelled": False}


class ExpressionError(FaenaError):
    """An expression failed to parse or evaluate; ``position`` is a 0-based offset."""

    code = ErrorCode.ORC_VALID

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position
        # The message without its trailing " at N", so the error can be re-located.
        self.detail = message


def _fail(detail: str, position: int) -> ExpressionError:
    error = ExpressionError(f"{detail} at {position}", position)
    error.detail = detail
    return error


class _FunctionError(Exception):
    """Raised by function bodies; the caller attaches the call's position."""


# --------------------------------------------------------------------------- values

_NULL, _BOOL, _NUM, _STR, _ARR, _OBJ = range(6)


class _Filtered(list[Any]):
    """The result of a ``*`` filter: later property accesses map over its items."""


class _Missing:
    pass


_MISSING = _Missing()


def _kind(value: Any) -> int:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float):
        return _NUM
    if isinstance(value, str):
        return _STR
    if isinstance(value, list | tuple):
        return _ARR
    return _OBJ


def _is_primitive(value: Any) -> bool:
    return _kind(value) <= _STR


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0 and value == value  # NaN is falsy
    if isinstance(value, str):
        return value != ""
    return True


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RADIX = {"0x": (16, "0123456789abcdefABCDEF"), "0o": (8, "01234567"), "0b": (2, "01")}


def _number_from_int(value: int) -> int | float:
    # Past 2**53 a JavaScript number is a float anyway, and huge ints break str().
    if abs(value) <= 2**53:
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _parse_number(text: str) -> int | float | None:
    """JavaScript ``Number(text)`` rules, returning None where JavaScript gives NaN."""
    s = text.strip()
    if not s:
        return 0
    if s in ("Infinity", "+Infinity"):
        return math.inf
    if s == "-Infinity":
        return -math.inf
    if _DECIMAL.fullmatch(s):
        # int() refuses more than 4300 digits; such numbers are floats in JavaScript too.
        if len(s) <= 4000 and not any(c in s for c in ".eE"):
            return int(s)
        return float(s)
    radix = _RADIX.get(s[:2].lower())
    if radix is not None and len(s) > 2 and all(c in radix[1] for c in s[2:]):
        return _number_from_int(int(s[2:], radix[0]))
    return None


def _to_number(value: Any) -> int | float:
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        number = _parse_number(value)
        return math.nan if number is None else number
    return math.nan


def _format_number(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    # 15 significant digits like GitHub, so 0.1 + 0.2 style noise never shows.
    text = f"{value:.15g}"
    mantissa, sep, exponent = text.partition("e")
    if not sep:
        return text
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def _plain(value: Any) -> Any:
    """A JSON-ready copy: integral floats as ints, NaN and infinities as null."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 1e21 else value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _to_json(value: Any) -> str:
    try:
        return json.dumps(_plain(value), indent=2, ensure_ascii=False)
    except (RecursionError, ValueError):
        raise _FunctionError("value cannot be converted to JSON") from None


def _to_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than str() allows
            return _format_number(float(_number_from_int(value)))
    if isinstance(value, float):
        return _format_number(value)
    if isinstance(value, list | tuple | Mapping):
        return _to_json(value)
    return str(value)


_DOTLESS_I = "\u0131"


def _upper(text: str) -> str:
    # GitHub upper-cases for case-insensitive comparison but leaves the dotless i
    # alone, so that it does not become equal to 'i'.
    if _DOTLESS_I not in text:
        return text.upper()
    return _DOTLESS_I.join(part.upper() for part in text.split(_DOTLESS_I))


def _coerce(left: Any, right: Any) -> tuple[Any, int, Any, int]:
    lk, rk = _kind(left), _kind(right)
    if lk == rk:
        return left, lk, right, rk
    if lk == _NUM and rk == _STR:
        return left, lk, _to_number(right), _NUM
    if lk == _STR and rk == _NUM:
        return _to_number(left), _NUM, right, rk
    if lk in (_NULL, _BOOL):
        return _coerce(_to_number(left), right)
    if rk in (_NULL, _BOOL):
        return _coerce(left, _to_number(right))
    return left, lk, right, rk


def _equals(left: Any, right: Any) -> bool:
    left, lk, right, rk = _coerce(left, right)
    if lk != rk:
        return False
    if lk == _NULL:
        return True
    if lk in (_NUM, _BOOL):
        return bool(left == right)  # NaN == NaN is already False
    if lk == _STR:
        return _upper(left) == _upper(right)
    return left is right  # arrays and objects: same instance only


def _less(left: Any, right: Any) -> bool:
    left, lk, right, rk = _coerce(left, right)
    if lk != rk:
        return False
    if lk == _NUM:
        return bool(left < right)
    if lk == _STR:
        return _upper(left) < _upper(right)
    if lk == _BOOL:
        return not left and bool(right)
    return False


def _greater(left: Any, right: Any) -> bool:
    left, lk, right, rk = _coerce(left, right)
    if lk != rk:
        return False
    if lk == _NUM:
        return bool(left > right)
    if lk == _STR:
        return _upper(left) > _upper(right)
    if lk == _BOOL:
        return bool(left) and not right
    return False


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equals,
    "!=": lambda a, b: not _equals(a, b),
    "<": _less,
    "<=": lambda a, b: _equals(a, b) or _less(a, b),
    ">": _greater,
    ">=": lambda a, b: _equals(a, b) or _greater(a, b),
}


def _get_key(mapping: Mapping[Any, Any], key: str) -> Any:
    """Case-insensitive lookup (exact match first, as it is the common case)."""
    # .get() rather than [] so that a defaultdict is never mutated by a read.
    value = mapping.get(key, _MISSING)
    if value is not _MISSING:
        return value
    folded = key.lower()
    for candidate, value in mapping.items():
        if isinstance(candidate, str) and candidate.lower() == folded:
            return value
    return _MISSING


def _array_index(key: Any) -> int | None:
    number = _to_number(key)
    if number != number or math.isinf(number) or number < 0:
        return None
    return math.floor(number)


def _index(container: Any, key: Any) -> Any:
    if isinstance(container, Mapping):
        return _get_key(container, _to_string(key)) if _is_primitive(key) else _MISSING
    if isinstance(container, list | tuple):
        position = _array_index(key)
        if position is not None and position < len(container):
            return container[position]
    return _MISSING


def _expand(container: Any) -> list[Any]:
    if isinstance(container, Mapping):
        return list(container.values())
    if isinstance(container, list | tuple):
        return list(container)
    return []


# --------------------------------------------------------------------------- functions


def _fn_contains(args: list[Any], _ctx: Mapping[str, Any]) -> bool:
    search, item = args
    if isinstance(search, list | tuple):
        return any(_equals(element, item) for element in search)
    if _is_primitive(search) and _is_primitive(item):
        return _upper(_to_string(item)) in _upper(_to_string(search))
    return False


def _fn_starts_with(args: list[Any], _ctx: Mapping[str, Any]) -> bool:
    text, prefix = args
    if _is_primitive(text) and _is_primitive(prefix):
        return _upper(_to_string(text)).startswith(_upper(_to_string(prefix)))
    return False


def _fn_ends_with(args: list[Any], _ctx: Mapping[str, Any]) -> bool:
    text, suffix = args
    if _is_primitive(text) and _is_primitive(suffix):
        return _upper(_to_string(text)).endswith(_upper(_to_string(suffix)))
    return False


def _fn_format(args: list[Any], _ctx: Mapping[str, Any]) -> str:
    template = _to_string(args[0])
    values = args[1:]
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        left, right = template.find("{", i), template.find("}", i)
        if left >= 0 and (right < 0 or left < right):
            if template.startswith("{", left + 1):
                out.append(template[i : left + 1])
                i = left + 2
                continue
            digits = template[left + 1 : right]
            if right > left + 1 and digits.isascii() and digits.isdigit():
                number = int(digits)
                if number >= len(values):
                    given = _plural(len(values), "value")
                    raise _FunctionError(
                        f"format string {template!r} references {{{number}}} "
                        f"but {given} {'was' if len(values) == 1 else 'were'} given"
                    )
                out.append(template[i:left])
                out.append(_to_string(values[number]))
                i = right + 1
                continue
            raise _FunctionError(f"invalid format string {template!r} (use '{{{{' for '{{')")
        if right >= 0:
            if not template.startswith("}", right + 1):
                raise _FunctionError(f"invalid format string {template!r} (use '}}}}' for '}}')")
            out.append(template[i : right + 1])
            i = right + 2
            continue
        out.append(template[i:])
        break
    return "".join(out)


def _fn_join(args: list[Any], _ctx: Mapping[str, Any]) -> str:
    items = args[0]
    separator = ","
    if len(args) > 1 and _is_primitive(args[1]):
        separator = _to_string(args[1])
    if isinstance(items, list | tuple):
        return separator.join(_to_string(item) for item in items)
    return _to_string(items) if _is_primitive(items) else ""


def _fn_to_json(args: list[Any], _ctx: Mapping[str, Any]) -> str:
    return _to_json(args[0])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _fn_from_json(args: list[Any], _ctx: Mapping[str, Any]) -> Any:
    text = _to_string(args[0])
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        preview = text if len(text) <= 40 else text[:40] + "..."
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _FunctionError(f"fromJSON() got invalid JSON {preview!r}: {reason}") from None


def _fn_hash_files(args: list[Any], ctx: Mapping[str, Any]) -> str:
    hasher = ctx.get(HASH_FILES_KEY)
    if not callable(hasher):
        raise _FunctionError("hashFiles() is only available where the workspace is")
    try:
        return str(hasher([_to_string(pattern) for pattern in args]))
    except (ValueError, OSError) as exc:
        raise _FunctionError(str(exc)) from None


def _status(name: str) -> Callable[[list[Any], Mapping[str, Any]], bool]:
    default = _STATUS_DEFAULTS[name]

    def status(_args: list[Any], ctx: Mapping[str, Any]) -> bool:
        current = ctx.get(STATUS_KEY)
        if isinstance(current, Mapping):
            return bool(current.get(name, default))
        return default

    return status


class _Function(NamedTuple):
    name: str
    min_args: int
    max_args: int | None  # None: no upper bound
    impl: Callable[[list[Any], Mapping[str, Any]], Any]


_FUNCTIONS: dict[str, _Function] = {
    f.name.lower(): f
    for f in (
        _Function("contains", 2, 2, _fn_contains),
        _Function("startsWith", 2, 2, _fn_starts_with),
        _Function("endsWith", 2, 2, _fn_ends_with),
        _Function("format", 1, None, _fn_format),
        _Function("join", 1, 2, _fn_join),
        _Function("toJSON", 1, 1, _fn_to_json),
        _Function("fromJSON", 1, 1, _fn_from_json),
        _Function("hashFiles", 1, None, _fn_hash_files),
        _Function("success", 0, 0, _status("success")),
        _Function("failure", 0, 0, _status("failure")),
        _Function("cancelled", 0, 0, _status("cancelled")),
        _Function("always", 0, 0, lambda _args, _ctx: True),
    )
}
_STATUS_FUNCTIONS = frozenset({"success", "failure", "cancelled", "always"})


# --------------------------------------------------------------------------- tree


class Expr:
    """A parsed expression tree node; ``str()`` renders it back as fully bracketed source."""

    __slots__ = ()
    position: int
    depth: int

    def children(self) -> tuple[Expr, ...]:
        """The direct sub-expressions."""
        return ()

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _render(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self._render()

    def _set_depth(self) -> None:
        depth = 1 + max((child.depth for child in self.children()), default=0)
        object.__setattr__(self, "depth", depth)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_KEYWORDS = frozenset({"true", "false", "null", "NaN", "Infinity"})


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, float) and not value.is_integer():
        return repr(value) if math.isfinite(value) else _format_number(value)
    return _to_string(value) if value is not None else "null"


@dataclass(frozen=True, slots=True)
class Literal(Expr):
    """``null``, ``true``, a number or a string."""

    value: Any
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        return self.value

    def _render(self) -> str:
        return _render_value(self.value)


@dataclass(frozen=True, slots=True)
class NamedValue(Expr):
    """A top-level context name such as ``matrix`` or ``needs``."""

    name: str
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        value = _get_key(ctx, self.name)
        return None if value is _MISSING else value

    def _render(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Index(Expr):
    """``obj.name``, ``obj[key]`` or, with ``key`` None, the ``obj.*`` filter."""

    obj: Expr
    key: Expr | None
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return (self.obj,) if self.key is None else (self.obj, self.key)

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        container = self.obj._eval(ctx)
        if self.key is None:
            if isinstance(container, _Filtered):
                return _Filtered(v for item in container for v in _expand(item))
            return _Filtered(_expand(container))
        key = self.key._eval(ctx)
        if isinstance(container, _Filtered):
            found = (_index(item, key) for item in container)
            return _Filtered(v for v in found if v is not _MISSING)
        value = _index(container, key)
        return None if value is _MISSING else value

    def _render(self) -> str:
        if self.key is None:
            return f"{self.obj}.*"
        key = self.key
        if (
            isinstance(key, Literal)
            and isinstance(key.value, str)
            and _IDENTIFIER.fullmatch(key.value)
        ):
            return f"{self.obj}.{key.value}"
        return f"{self.obj}[{key}]"


@dataclass(frozen=True, slots=True)
class Not(Expr):
    """``!operand``: true when the operand is falsy."""

    operand: Expr
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        return not _truthy(self.operand._eval(ctx))

    def _render(self) -> str:
        return f"!{self.operand}"


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    """A comparison: ``==``, ``!=``, ``<``, ``<=``, ``>`` or ``>=``."""

    op: str
    left: Expr
    right: Expr
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        return _COMPARISONS[self.op](self.left._eval(ctx), self.right._eval(ctx))

    def _render(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True, slots=True)
class Logical(Expr):
    """A chain of ``&&`` or ``||`` that short-circuits and returns an operand's value."""

    op: str
    operands: tuple[Expr, ...]
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return self.operands

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        stop_when = self.op == "||"
        value: Any = None
        for operand in self.operands:
            value = operand._eval(ctx)
            if _truthy(value) is stop_when:
                break
        return value

    def _render(self) -> str:
        return "(" + f" {self.op} ".join(str(o) for o in self.operands) + ")"


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """A function call; ``name`` is the canonical spelling (``startsWith``)."""

    name: str
    args: tuple[Expr, ...]
    position: int = field(default=0, compare=False)
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def _eval(self, ctx: Mapping[str, Any]) -> Any:
        values = [arg._eval(ctx) for arg in self.args]
        try:
            return _FUNCTIONS[self.name.lower()].impl(values, ctx)
        except _FunctionError as exc:
            raise _fail(str(exc), self.position) from None

    def _render(self) -> str:
        return f"{self.name}(" + ", ".join(str(a) for a in self.args) + ")"


# --------------------------------------------------------------------------- lexer


class _Token(NamedTuple):
    kind: str  # "num", "str", "lit", "ident", "eof", or the punctuation itself
    text: str
    value: Any
    position: int


_BOUNDARY = frozenset("()[],.!<>=&|}")
_TWO_CHAR = frozenset({"==", "!=", "<=", ">=", "&&", "||"})
_SINGLE = frozenset("()[],!<>*")
# After these a '.' dereferences; anywhere else it starts a number such as '.5'.
_DEREFERENCEABLE = frozenset({"ident", ")", "]", "*"})
_SYMBOL_HINTS = {
    '"': "strings use single quotes",
    "=": "did you mean '=='?",
    "&": "did you mean '&&'?",
    "|": "did you mean '||'?",
    "$": "'${{' cannot appear inside an expression",
    "}": "unbalanced '}'",
}


def _symbol_error(lexeme: str, position: int) -> ExpressionError:
    hint = _SYMBOL_HINTS.get(lexeme[:1])
    suffix = f" ({hint})" if hint else ""
    return _fail(f"unexpected symbol '{lexeme}'{suffix}", position)


def _lex(source: str, start: int = 0, open_at: int | None = None) -> tuple[list[_Token], int]:
    """Tokens from ``start``; with ``open_at`` (the ``${{`` offset) stop at ``}}``.

    Returns the tokens (ending with an "eof" token) and the offset where lexing stopped.
    """
    tokens: list[_Token] = []
    i, n = start, len(source)
    previous = ""
    while True:
        if i >= n:
            if open_at is not None:
                raise _fail("unterminated '${{' (missing '}}')", open_at)
            tokens.append(_Token("eof", "", None, n))
            return tokens, n
        c = source[i]
        if c.isspace():
            i += 1
            continue
        if c == "}" and open_at is not None and source.startswith("}}", i):
            tokens.append(_Token("eof", "", None, i))
            return tokens, i
        pair = source[i : i + 2]
        if pair in _TWO_CHAR:
            token = _Token(pair, pair, None, i)
            i += 2
        elif c in _SINGLE or (c == "." and previous in _DEREFERENCEABLE):
            token = _Token(c, c, None, i)
            i += 1
        elif c == "'":
            token, i = _lex_string(source, i)
        elif c in "+-." or "0" <= c <= "9":
            j = i + 1
            while j < n and (
                source[j] == "." or not (source[j] in _BOUNDARY or source[j].isspace())
            ):
                j += 1
            lexeme = source[i:j]
            number = _parse_number(lexeme)
            if number is None:
                raise _symbol_error(lexeme, i)
            token = _Token("num", lexeme, number, i)
            i = j
        else:
            j = i + 1
            while j < n and not (source[j] in _BOUNDARY or source[j].isspace()):
                j += 1
            lexeme = source[i:j]
            if not _IDENTIFIER.fullmatch(lexeme):
                raise _symbol_error(lexeme, i)
            if previous == "." or lexeme not in _KEYWORDS:
                token = _Token("ident", lexeme, lexeme, i)
            elif lexeme in ("NaN", "Infinity"):
                token = _Token("num", lexeme, math.nan if lexeme == "NaN" else math.inf, i)
            else:
                token = _Token("lit", lexeme, {"true": True, "false": False}.get(lexeme), i)
            i = j
        tokens.append(token)
        previous = token.kind


def _lex_string(source: str, start: int) -> tuple[_Token, int]:
    i = start + 1
    while True:
        quote = source.find("'", i)
        if quote < 0:
            raise _fail("unterminated string", start)
        if source.startswith("''", quote):
            i = quote + 2
            continue
        text = source[start : quote + 1]
        return _Token("str", text, text[1:-1].replace("''", "'"), start), quote + 1


# --------------------------------------------------------------------------- parser


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _arity(spec: _Function) -> str:
    if spec.max_args is None:
        return f"at least {_plural(spec.min_args, 'argument')}"
    if spec.min_args == spec.max_args:
        return "no arguments" if spec.min_args == 0 else _plural(spec.min_args, "argument")
    return f"{spec.min_args} to {spec.max_args} arguments"


class _Parser:
    """Recursive descent over GitHub's precedence: ``||`` < ``&&`` < ``== !=`` < ``< <= > >=``
    < ``!`` < postfix ``.``/``[ ]`` < primary."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.nesting = 0

    def parse(self) -> Expr:
        if self.peek().kind == "eof":
            raise _fail("empty expression", self.peek().position)
        node = self.expression()
        if self.peek().kind != "eof":
            raise self.unexpected(self.peek())
        return node

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "eof":
            self.i += 1
        return token

    def expect(self, kind: str) -> _Token:
        token = self.advance()
        if token.kind != kind:
            raise self.unexpected(token, f"expected '{kind}'")
        return token

    def unexpected(self, token: _Token, hint: str = "") -> ExpressionError:
        if token.kind == "eof":
            what = "unexpected end of expression"
        elif token.kind == "str":
            what = f"unexpected string {token.text}"
        else:
            what = f"unexpected token '{token.text}'"
        return _fail(f"{what} ({hint})" if hint else what, token.position)

    def checked(self, node: Expr) -> Expr:
        if node.depth > MAX_DEPTH:
            raise _fail(f"expression is nested too deeply (limit {MAX_DEPTH})", node.position)
        return node

    def nest(self, position: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise _fail(f"expression is nested too deeply (limit {MAX_DEPTH})", position)

    def expression(self) -> Expr:
        return self.logical("||", self.and_chain)

    def and_chain(self) -> Expr:
        return self.logical("&&", self.equality)

    def logical(self, op: str, operand: Callable[[], Expr]) -> Expr:
        first = operand()
        operands = [first]
        while self.peek().kind == op:
            self.advance()
            operands.append(operand())
        if len(operands) == 1:
            return first
        return self.checked(Logical(op, tuple(operands), first.position))

    def equality(self) -> Expr:
        node = self.comparison()
        while self.peek().kind in ("==", "!="):
            op = self.advance().kind
            node = self.checked(Compare(op, node, self.comparison(), node.position))
        return node

    def comparison(self) -> Expr:
        node = self.unary()
        while self.peek().kind in ("<", "<=", ">", ">="):
            op = self.advance().kind
            node = self.checked(Compare(op, node, self.unary(), node.position))
        return node

    def unary(self) -> Expr:
        if self.peek().kind != "!":
            return self.postfix()
        bang = self.advance()
        self.nest(bang.position)
        node = self.checked(Not(self.unary(), bang.position))
        self.nesting -= 1
        return node

    def postfix(self) -> Expr:
        node = self.primary()
        if isinstance(node, Literal):
            return node
        while True:
            token = self.peek()
            if token.kind == ".":
                self.advance()
                name = self.advance()
                if name.kind == "*":
                    node = self.checked(Index(node, None, node.position))
                elif name.kind == "ident":
                    key = Literal(name.value, name.position)
                    node = self.checked(Index(node, key, node.position))
                else:
                    raise self.unexpected(name, "expected a property name after '.'")
            elif token.kind == "[":
                self.advance()
                self.nest(token.position)
                if self.peek().kind == "*":
                    self.advance()
                    node = self.checked(Index(node, None, node.position))
                else:
                    node = self.checked(Index(node, self.expression(), node.position))
                self.expect("]")
                self.nesting -= 1
            else:
                return node

    def primary(self) -> Expr:
        token = self.advance()
        if token.kind in ("num", "str", "lit"):
            return Literal(token.value, token.position)
        if token.kind == "ident":
            if self.peek().kind == "(":
                return self.call(token)
            return NamedValue(token.value, token.position)
        if token.kind == "(":
            self.nest(token.position)
            node = self.expression()
            self.expect(")")
            self.nesting -= 1
            return node
        raise self.unexpected(token)

    def call(self, name: _Token) -> Expr:
        spec = _FUNCTIONS.get(name.text.lower())
        if spec is None:
            raise _fail(_unknown_function(name.text), name.position)
        self.nest(name.position)
        self.advance()  # "("
        args: list[Expr] = []
        if self.peek().kind != ")":
            args.append(self.expression())
            while self.peek().kind == ",":
                self.advance()
                args.append(self.expression())
        self.expect(")")
        self.nesting -= 1
        count = len(args)
        if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
            raise _fail(
                f"{spec.name}() takes {_arity(spec)} but got {count}",
                name.position,
            )
        return self.checked(Call(spec.name, tuple(args), name.position))


def _unknown_function(name: str) -> str:
    message = f"unknown function '{name}'"
    close = difflib.get_close_matches(name.lower(), list(_FUNCTIONS), n=1, cutoff=0.6)
    if close:
        message += f" (did you mean '{_FUNCTIONS[close[0]].name}'?)"
    return message


@lru_cache(maxsize=4096)
def _parse_cached(source: str) -> Expr:
    if len(source) > MAX_LENGTH:
        raise _fail(f"expression is longer than {MAX_LENGTH} characters", MAX_LENGTH)
    tokens, _ = _lex(source)
    return _Parser(tokens).parse()


def parse(source: str) -> Expr:
    """Parse an expression (without the ``${{ }}`` wrapper); results are cached."""
    return _parse_cached(source)


def evaluate(expr: Expr | str, context: Mapping[str, Any]) -> Any:
    """Evaluate against a context of ``env``, ``matrix``, ``needs``, ``steps`` and status."""
    node = parse(expr) if isinstance(expr, str) else expr
    value = node._eval(context)
    return list(value) if isinstance(value, _Filtered) else value


# --------------------------------------------------------------------------- templates


def _embedded(text: str) -> Iterator[tuple[int, int, list[_Token]]]:
    """Each ``${{ ... }}`` as (offset of ``${{``, offset of ``}}``, its tokens)."""
    pos = 0
    while (start := text.find("${{", pos)) >= 0:
        tokens, end = _lex(text, start + 3, open_at=start)
        if end - start - 3 > MAX_LENGTH:
            raise _fail(f"expression is longer than {MAX_LENGTH} characters", start)
        yield start, end, tokens
        pos = end + 2


@lru_cache(maxsize=1024)
def _compile_template(text: str) -> tuple[str | Expr, ...]:
    # Tokens keep their offsets in ``text``, so errors point into the whole template.
    parts: list[str | Expr] = []
    pos = 0
    for start, end, tokens in _embedded(text):
        if start > pos:
            parts.append(text[pos:start])
        parts.append(_Parser(tokens).parse())
        pos = end + 2
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def interpolate(text: str, context: Mapping[str, Any]) -> str:
    """Replace every ``${{ expr }}`` in ``text`` by its value as a string."""
    if "${{" not in text:
        return text
    out: list[str] = []
    for part in _compile_template(text):
        if isinstance(part, str):
            out.append(part)
            continue
        try:
            out.append(_to_string(part._eval(context)))
        except _FunctionError as exc:
            raise _fail(str(exc), part.position) from None
    return "".join(out)


def find_expressions(text: str) -> list[tuple[int, str]]:
    """Each embedded expression as (offset of its ``${{``, source between the delimiters).

    An error at position p of that source is at offset + 3 + p of ``text``.
    """
    return [(start, text[start + 3 : end]) for start, end, _ in _embedded(text)]


def strip_wrapper(source: str) -> str:
    """Remove one ``${{ }}`` enclosing the whole of ``source``; otherwise return it as is."""
    stripped = source.strip()
    if not stripped.startswith("${{"):
        return source
    _, end = _lex(stripped, 3, open_at=0)
    if end + 2 != len(stripped):
        return source
    return stripped[3:end].strip()


def _path(node: Expr) -> tuple[str, ...] | None:
    keys: list[str] = []
    while isinstance(node, Index):
        if node.key is None:
            keys.append("*")
        elif isinstance(node.key, Literal) and isinstance(node.key.value, str):
            keys.append(node.key.value)
        else:
            return None
        node = node.obj
    if not isinstance(node, NamedValue):
        return None
    keys.append(node.name)
    return tuple(reversed(keys))


def _walk(node: Expr) -> Iterator[Expr]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children())


def references(expr: Expr | str) -> set[tuple[str, ...]]:
    """Property paths read by ``expr``, e.g. ``('needs', 'build', 'outputs', 'v')``.

    Paths are as long as the constant part of each access; ``*`` filters appear as ``'*'``.
    """
    stack = [parse(expr) if isinstance(expr, str) else expr]
    found: set[tuple[str, ...]] = set()
    while stack:
        node = stack.pop()
        path = _path(node)
        if path is not None:
            found.add(path)
        else:
            stack.extend(node.children())
    return found


def uses_status_function(expr: Expr | str) -> bool:
    """Whether ``expr`` calls success(), failure(), cancelled() or always()."""
    node = parse(expr) if isinstance(expr, str) else expr
    return any(isinstance(n, Call) and n.name.lower() in _STATUS_FUNCTIONS for n in _walk(node))
