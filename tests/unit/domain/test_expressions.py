"""Unit tests for the GitHub-Actions-style expression language."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faena.domain.errors import ErrorCode, FaenaError
from faena.domain.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    Call,
    Compare,
    Expr,
    ExpressionError,
    Index,
    Literal,
    Logical,
    NamedValue,
    Not,
    evaluate,
    find_expressions,
    interpolate,
    parse,
    references,
    strip_wrapper,
    uses_status_function,
)

CONTEXT: dict[str, Any] = {
    "env": {"FOO": "bar", "EMPTY": "", "NUM": "42"},
    "matrix": {"py": "3.12", "os": ["linux", "macos"], "shard": 2},
    "needs": {
        "build": {"result": "success", "outputs": {"version": "1.2.3"}},
        "my-job": {"result": "failure", "outputs": {}},
    },
    "steps": {"x": {"outputs": {"y": "out"}, "outcome": "success"}},
    "items": [{"name": "a", "n": 1}, {"name": "b"}, {"other": True}],
}


def ev(source: str, context: dict[str, Any] | None = None) -> Any:
    return evaluate(source, CONTEXT if context is None else context)


def error_of(source: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    return info.value


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("null", None),
        ("true", True),
        ("false", False),
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("1.5", 1.5),
        (".5", 0.5),
        ("2.", 2.0),
        ("1e3", 1000.0),
        ("2.5E-1", 0.25),
        ("0x1F", 31),
        ("0xff", 255),
        ("0o17", 15),
        ("Infinity", math.inf),
        ("-Infinity", -math.inf),
        ("'hello'", "hello"),
        ("''", ""),
        ("'it''s'", "it's"),
        ("''''", "'"),
        ("'a}}b'", "a}}b"),
        ("'multi\nline'", "multi\nline"),
    ],
)
def test_literals(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_nan_literal_is_nan() -> None:
    assert math.isnan(ev("NaN"))


def test_integer_literal_stays_int() -> None:
    value = ev("12")
    assert value == 12
    assert isinstance(value, int)


@pytest.mark.parametrize("source", ["True", "NULL", "FALSE"])
def test_keywords_are_case_sensitive(source: str) -> None:
    # Capitalised keywords are context names, which are missing here.
    assert isinstance(parse(source), NamedValue)
    assert ev(source) is None


@pytest.mark.parametrize("source", ["1.2.3", "0x", "0xZZ", "1e", "--1", "-", "12abc"])
def test_malformed_numbers(source: str) -> None:
    err = error_of(source)
    assert err.detail == f"unexpected symbol '{source}'"
    assert err.position == 0


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("env.FOO", "bar"),
        ("env.foo", "bar"),  # property names are case-insensitive
        ("ENV.Foo", "bar"),
        ("matrix.py", "3.12"),
        ("matrix['py']", "3.12"),
        ("matrix['PY']", "3.12"),
        ("needs.build.result", "success"),
        ("needs.build.outputs.version", "1.2.3"),
        ("needs['build']['outputs'].version", "1.2.3"),
        ("needs.my-job.result", "failure"),
        ("steps.x.outputs.y", "out"),
        ("matrix.os[0]", "linux"),
        ("matrix.os[1]", "macos"),
        ("matrix.os[1.7]", "macos"),  # indexes are floored
        ("matrix.os['1']", "macos"),  # and coerced from strings
        ("matrix[env.missing || 'py']", "3.12"),
        ("items[0].name", "a"),
        ('fromJSON(\'{"a": {"b": [10, 20]}}\').a.b[1]', 20),
    ],
)
def test_property_access(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "nope",
        "env.MISSING",
        "env.MISSING.deeper.still",
        "needs.absent.outputs.v",
        "matrix.os[2]",
        "matrix.os[-1]",
        "matrix.os['x']",
        "matrix.os.length",
        "matrix.py.deeper",
        "matrix[null]",
        "matrix[matrix]",
        "env.FOO[0]",
    ],
)
def test_missing_properties_are_null(source: str) -> None:
    assert ev(source) is None


def test_property_names_may_be_keywords() -> None:
    context = {"x": {"true": 1, "null": 2, "NaN": 3}}
    assert ev("x.true", context) == 1
    assert ev("x.null", context) == 2
    assert ev("x.NaN", context) == 3


def test_exact_key_wins_over_case_insensitive_match() -> None:
    context = {"env": {"foo": "lower", "FOO": "upper"}}
    assert ev("env.FOO", context) == "upper"
    assert ev("env.foo", context) == "lower"


def test_lookup_does_not_mutate_defaultdict() -> None:
    env: defaultdict[str, str] = defaultdict(str, {"A": "1"})
    assert ev("env.B", {"env": env}) is None
    assert "B" not in env


def test_tuples_are_arrays() -> None:
    assert ev("t[1]", {"t": ("a", "b")}) == "b"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("needs.*.result", ["success", "failure"]),
        ("items.*.name", ["a", "b"]),
        ("items[*].name", ["a", "b"]),
        ("matrix.os.*", ["linux", "macos"]),
        ("needs.*.outputs.*", ["1.2.3"]),
        ("env.FOO.*", []),
        ("nope.*", []),
    ],
)
def test_object_filters(source: str, expected: list[Any]) -> None:
    result = ev(source)
    assert result == expected
    assert type(result) is list


def test_filter_keeps_present_nulls() -> None:
    context = {"items": [{"v": None}, {}, {"v": 1}]}
    assert ev("items.*.v", context) == [None, 1]


def test_filter_with_contains() -> None:
    assert ev("contains(needs.*.result, 'failure')") is True
    assert ev("contains(needs.*.result, 'cancelled')") is False


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("source", "rendered"),
    [
        ("a || b && c", "(a || (b && c))"),
        ("a && b || c", "((a && b) || c)"),
        ("a && b && c", "(a && b && c)"),
        ("a || b || c || d", "(a || b || c || d)"),
        ("(a || b) && c", "((a || b) && c)"),
        ("a == b && c != d", "((a == b) && (c != d))"),
        ("a < b == c > d", "((a < b) == (c > d))"),
        ("a == b == c", "((a == b) == c)"),
        ("!a == b", "(!a == b)"),
        ("!(a == b)", "!(a == b)"),
        ("!!a", "!!a"),
        ("!a.b[0]", "!a.b[0]"),
        ("a <= b || a >= b", "((a <= b) || (a >= b))"),
        ("a['b c'].d", "a['b c'].d"),
        ("a[b.c]", "a[b.c]"),
        ("a[0]", "a[0]"),
        ("a.*.b", "a.*.b"),
        ("CONTAINS(a, 'x')", "contains(a, 'x')"),
        ("toJson(a)", "toJSON(a)"),
        ("fromjson('1')", "fromJSON('1')"),
        ("'it''s'", "'it''s'"),
        ("( ( a ) )", "a"),
        ("\n  a\n  &&\tb\n", "(a && b)"),
    ],
)
def test_precedence_and_rendering(source: str, rendered: str) -> None:
    assert str(parse(source)) == rendered


def test_tree_shape() -> None:
    tree = parse("success() && needs.build.outputs['v'] == '1'")
    assert tree == Logical(
        "&&",
        (
            Call("success", ()),
            Compare(
                "==",
                Index(
                    Index(Index(NamedValue("needs"), Literal("build")), Literal("outputs")),
                    Literal("v"),
                ),
                Literal("1"),
            ),
        ),
    )
    assert isinstance(tree, Expr)


def test_positions_recorded() -> None:
    tree = parse("a && !contains(b, 'x')")
    assert isinstance(tree, Logical)
    negation = tree.operands[1]
    assert isinstance(negation, Not)
    assert negation.position == 5
    assert negation.operand.position == 6


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true && 'x'", "x"),
        ("'' && 'x'", ""),
        ("0 && 'x'", 0),
        ("null && 'x'", None),
        ("'a' || 'b'", "a"),
        ("'' || 'b'", "b"),
        ("false || 0", 0),
        ("null || false || ''", ""),
        ("env.MISSING || 'default'", "default"),
        ("env.FOO && env.NUM", "42"),
        ("1 && 2 && 3", 3),
    ],
)
def test_logical_operators_return_operands(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_logical_operators_short_circuit() -> None:
    # fromJSON('nope') raises when evaluated; short-circuiting must skip it.
    assert ev("false && fromJSON('nope')") is False
    assert ev("true || fromJSON('nope')") is True
    with pytest.raises(ExpressionError):
        ev("true && fromJSON('nope')")


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        (0, False),
        (0.0, False),
        (-0.0, False),
        (math.nan, False),
        ("", False),
        (True, True),
        (1, True),
        (-1, True),
        (0.1, True),
        (math.inf, True),
        ("0", True),
        ("false", True),
        (" ", True),
        ([], True),
        ({}, True),
    ],
)
def test_truthiness(value: Any, truthy: bool) -> None:
    assert ev("!v", {"v": value}) is (not truthy)
    assert ev("!!v", {"v": value}) is truthy


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        (None, None, True),
        (None, 0, True),
        (None, False, True),
        (None, "", True),
        (None, "0", True),
        (None, "a", False),
        (True, 1, True),
        (True, "1", True),
        (True, "true", False),  # 'true' is NaN as a number
        (False, 0, True),
        (False, "", True),
        (False, "0", True),
        (1, "1", True),
        (1, "1.0", True),
        (1, " 1 ", True),
        (255, "0xff", True),
        (1000, "1e3", True),
        (0, "", True),
        (0, "  ", True),
        (1, "one", False),
        (2, 2.0, True),
        (0.0, -0.0, True),
        (math.nan, math.nan, False),
        (math.inf, "Infinity", True),
        ("abc", "ABC", True),
        ("Straße", "STRASSE", True),
        ("a", "b", False),
        ("", "", True),
        ([], [], False),  # distinct instances
        ({}, {}, False),
        ([], "", False),
        ({}, None, False),
        ([1], 1, False),
    ],
)
def test_loose_equality(left: Any, right: Any, equal: bool) -> None:
    context = {"l": left, "r": right}
    assert ev("l == r", context) is equal
    assert ev("r == l", context) is equal
    assert ev("l != r", context) is (not equal)


def test_same_instance_is_equal() -> None:
    shared = {"k": 1}
    assert ev("a == b", {"a": shared, "b": shared}) is True


def test_dotless_i_is_not_folded_to_i() -> None:
    assert ev("'\u0131' == 'i'") is False
    assert ev("'\u0131' == '\u0131'") is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 < 2", True),
        ("2 < 1", False),
        ("1 <= 1", True),
        ("2 >= 3", False),
        ("3 > 2", True),
        ("'a' < 'B'", True),  # case-insensitive ordering
        ("'B' > 'a'", True),
        ("'abc' <= 'ABC'", True),
        ("'10' > 9", True),  # string coerced to number
        ("'10' > '9'", False),  # both strings: text order
        ("true > false", True),
        ("false < true", True),
        ("true < true", False),
        ("null < 1", True),
        ("null >= 0", True),
        ("null <= null", True),
        ("null < null", False),
        ("'x' < 1", False),  # NaN never compares
        ("'x' > 1", False),
        ("NaN >= NaN", False),
        ("matrix > matrix", False),
        ("matrix >= matrix", True),  # equal instances
        ("matrix.shard >= 2", True),
        ("matrix.py > '3.9'", False),  # strings, not versions
        ("matrix.py > 3.9", False),  # 3.12 as a number
    ],
)
def test_comparisons(source: str, expected: bool) -> None:
    assert ev(source) is expected


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("contains('Hello World', 'WORLD')", True),
        ("contains('Hello', 'bye')", False),
        ("contains('abc', '')", True),
        ("contains(matrix.os, 'LINUX')", True),
        ("contains(matrix.os, 'windows')", False),
        ("contains(fromJSON('[1, 2]'), '2')", True),  # loose element equality
        ("contains(fromJSON('[1, 2]'), 3)", False),
        ("contains(12345, 34)", True),
        ("contains(true, 'ru')", True),
        ("contains(null, '')", True),
        ("contains(matrix, 'py')", False),  # objects are not searched
        ("contains('abc', matrix)", False),
        ("startsWith('Hello', 'he')", True),
        ("startsWith('Hello', 'lo')", False),
        ("startsWith('', '')", True),
        ("startsWith(matrix, '')", False),
        ("endsWith('Hello', 'LO')", True),
        ("endsWith('Hello', 'he')", False),
        ("endsWith(1.50, '5')", True),
        ("endsWith(matrix.os, 'macos')", False),
    ],
)
def test_search_functions(source: str, expected: bool) -> None:
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("format('{0} {1}', 'a', 'b')", "a b"),
        ("format('{1}{0}{1}', 'a', 'b')", "bab"),
        ("format('no placeholders')", "no placeholders"),
        ("format('{{0}}', 'x')", "{0}"),
        ("format('{{{0}}}', 'x')", "{x}"),
        ("format('}}{{', 'x')", "}{"),
        ("format('{0}', null)", ""),
        ("format('{0}/{1}', true, false)", "true/false"),
        ("format('{0}', 3.0)", "3"),
        ("format('{0}', 0.5)", "0.5"),
        ("format('{00}', 'zero')", "zero"),
        ("format('{0}', matrix.os)", '[\n  "linux",\n  "macos"\n]'),
        ("format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')", "Hello Mona the Octocat"),
    ],
)
def test_format(source: str, expected: str) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("format('{0}')", "references {0} but 0 values were given"),
        ("format('{2}', 'a', 'b')", "references {2} but 2 values were given"),
        ("format('{1}', 'a')", "references {1} but 1 value was given"),
        ("format('{', 'a')", "invalid format string '{'"),
        ("format('}', 'a')", "invalid format string '}'"),
        ("format('{x}', 'a')", "invalid format string '{x}'"),
        ("format('{}', 'a')", "invalid format string '{}'"),
        ("format('{0:x}', 'a')", "invalid format string '{0:x}'"),
        ("format('{-1}', 'a')", "invalid format string '{-1}'"),
    ],
)
def test_format_errors(source: str, detail: str) -> None:
    with pytest.raises(ExpressionError) as info:
        ev("true && " + source)
    assert detail in info.value.detail
    assert info.value.position == len("true && ")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("join(matrix.os)", "linux,macos"),
        ("join(matrix.os, ', ')", "linux, macos"),
        ("join(matrix.os, '')", "linuxmacos"),
        ("join(fromJSON('[1, true, null, 2.5]'), '|')", "1|true||2.5"),
        ("join(fromJSON('[]'))", ""),
        ("join('solo', '-')", "solo"),
        ("join(42)", "42"),
        ("join(null)", ""),
        ("join(matrix)", ""),
        ("join(matrix.os, matrix)", "linux,macos"),  # non-primitive separator ignored
        ("join(needs.*.result, ' ')", "success failure"),
    ],
)
def test_join(source: str, expected: str) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (3, "3"),
        (3.0, "3"),
        (2.5, "2.5"),
        (math.nan, "null"),
        ("x", '"x"'),
        ("ñ", '"ñ"'),
        ([], "[]"),
        ({}, "{}"),
        ({"a": [1, {"b": None}]}, '{\n  "a": [\n    1,\n    {\n      "b": null\n    }\n  ]\n}'),
        (("t", 1), '[\n  "t",\n  1\n]'),
    ],
)
def test_to_json(value: Any, expected: str) -> None:
    assert ev("toJSON(v)", {"v": value}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("1", 1),
        ("2.5", 2.5),
        ("null", None),
        ('"s"', "s"),
        ("[1, 2]", [1, 2]),
        ('{"a": {"b": 1}}', {"a": {"b": 1}}),
        ('  {"include": [{"py": "3.12"}]}  ', {"include": [{"py": "3.12"}]}),
    ],
)
def test_from_json(text: str, expected: Any) -> None:
    assert ev("fromJSON(t)", {"t": text}) == expected


def test_from_json_round_trips_to_json() -> None:
    value = {"a": [1, "two", None, True, {"b": 2.5}]}
    assert ev("fromJSON(toJSON(v))", {"v": value}) == value


@pytest.mark.parametrize("text", ["", "nope", "{", "NaN", "[1,]", "{'a': 1}"])
def test_from_json_errors(text: str) -> None:
    with pytest.raises(ExpressionError) as info:
        ev("fromJSON(t)", {"t": text})
    assert info.value.detail.startswith("fromJSON() got invalid JSON")
    assert info.value.position == 0


def test_from_json_of_a_number_value_parses_its_text() -> None:
    assert ev("fromJSON(12)") == 12
    assert ev("fromJSON(true)") is True


def test_status_functions_default_without_status() -> None:
    assert ev("success()", {}) is True
    assert ev("failure()", {}) is False
    assert ev("cancelled()", {}) is False
    assert ev("always()", {}) is True


@pytest.mark.parametrize(
    ("status", "success", "failure", "cancelled"),
    [
        ({"success": True, "failure": False, "cancelled": False}, True, False, False),
        ({"success": False, "failure": True, "cancelled": False}, False, True, False),
        ({"success": False, "failure": False, "cancelled": True}, False, False, True),
        ({}, True, False, False),  # missing keys keep their defaults
        ({"failure": 1}, True, True, False),
    ],
)
def test_status_functions_read_status(
    status: dict[str, Any], success: bool, failure: bool, cancelled: bool
) -> None:
    context = {"__status__": status}
    assert ev("success()", context) is success
    assert ev("failure()", context) is failure
    assert ev("cancelled()", context) is cancelled
    assert ev("always()", context) is True


def test_status_functions_case_insensitive() -> None:
    context = {"__status__": {"success": False, "failure": True}}
    assert ev("FAILURE() && !Success()", context) is True


def test_hash_files_uses_the_context_hasher() -> None:
    seen: list[list[str]] = []

    def hasher(patterns: list[str]) -> str:
        seen.append(patterns)
        return "abc123"

    context = {"__hash_files__": hasher}
    assert ev("format('deps-{0}', hashFiles('**/*.lock', 'x.txt'))", context) == "deps-abc123"
    assert seen == [["**/*.lock", "x.txt"]]


def test_hash_files_without_hasher_is_an_error() -> None:
    with pytest.raises(ExpressionError) as info:
        ev("hashFiles('a')", {})
    assert "hashFiles() is only available" in info.value.detail


def test_function_arguments_are_expressions() -> None:
    assert ev("contains(format('{0}-{1}', matrix.py, env.FOO), '12-B')") is True
    assert ev("startsWith(needs.build.outputs.version, format('{0}.', 1))") is True


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ("a == b )", "unexpected token ')' at 7", 7),
        ("a ==", "unexpected end of expression at 4", 4),
        ("(a", "unexpected end of expression (expected ')') at 2", 2),
        ("f(a", "unknown function 'f' at 0", 0),
        ("a b", "unexpected token 'b' at 2", 2),
        ("a 'b'", "unexpected string 'b' at 2", 2),
        ("a && || b", "unexpected token '||' at 5", 5),
        ("", "empty expression at 0", 0),
        ("   ", "empty expression at 3", 3),
        ("()", "unexpected token ')' at 1", 1),
        ("a.", "unexpected end of expression (expected a property name after '.') at 2", 2),
        ("a.'b'", "unexpected string 'b' (expected a property name after '.') at 2", 2),
        ("a[", "unexpected end of expression at 2", 2),
        ("a[0", "unexpected end of expression (expected ']') at 3", 3),
        ("a[]", "unexpected token ']' at 2", 2),
        ("'abc", "unterminated string at 0", 0),
        ("x == 'it''s", "unterminated string at 5", 5),
        ("a = b", "unexpected symbol '=' (did you mean '=='?) at 2", 2),
        ("a & b", "unexpected symbol '&' (did you mean '&&'?) at 2", 2),
        ("a | b", "unexpected symbol '|' (did you mean '||'?) at 2", 2),
        ('a == "b"', "unexpected symbol '\"b\"' (strings use single quotes) at 5", 5),
        ("a @ b", "unexpected symbol '@' at 2", 2),
        ("a } b", "unexpected symbol '}' (unbalanced '}') at 2", 2),
        ("${{ a }}", "unexpected symbol '${{' ('${{' cannot appear inside an expression) at 0", 0),
        ("1.foo", "unexpected symbol '1.foo' at 0", 0),
        ("'a'.b", "unexpected symbol '.b' at 3", 3),
        ("true()", "unexpected token '(' at 4", 4),
        ("a.b()", "unexpected token '(' at 3", 3),
        ("1[0]", "unexpected token '[' at 1", 1),
        ("contains(a, b,)", "unexpected token ')' at 14", 14),
        ("contains(a b)", "unexpected token 'b' (expected ')') at 11", 11),
        ("a ! b", "unexpected token '!' at 2", 2),
        ("a.*[", "unexpected end of expression at 4", 4),
        ("*", "unexpected token '*' at 0", 0),
    ],
)
def test_parse_errors(source: str, message: str, position: int) -> None:
    err = error_of(source)
    assert err.message.startswith(message)
    assert err.position == position


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("contians(a, b)", "unknown function 'contians' (did you mean 'contains'?) at 0"),
        ("startswith2(a, b)", "unknown function 'startswith2' (did you mean 'startsWith'?) at 0"),
        ("a && tojsn(a)", "unknown function 'tojsn' (did you mean 'toJSON'?) at 5"),
        ("frobnicate()", "unknown function 'frobnicate' at 0"),
        ("contains(a)", "contains() takes 2 arguments but got 1 at 0"),
        ("contains(a, b, c)", "contains() takes 2 arguments but got 3 at 0"),
        ("join()", "join() takes 1 to 2 arguments but got 0 at 0"),
        ("join(a, b, c)", "join() takes 1 to 2 arguments but got 3 at 0"),
        ("format()", "format() takes at least 1 argument but got 0 at 0"),
        ("toJSON()", "toJSON() takes 1 argument but got 0 at 0"),
        ("x || success(1)", "success() takes no arguments but got 1 at 5"),
        ("always(true)", "always() takes no arguments but got 1 at 0"),
        ("hashFiles()", "hashFiles() takes at least 1 argument but got 0 at 0"),
    ],
)
def test_function_errors_at_parse_time(source: str, message: str) -> None:
    assert error_of(source).message == message


def test_error_type_and_code() -> None:
    err = error_of("a ==")
    assert isinstance(err, FaenaError)
    assert err.code is ErrorCode.ORC_VALID
    assert str(err) == "ORC-VALID: unexpected end of expression at 4"


def test_nesting_limit() -> None:
    ok = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert ev(ok, {"a": 1}) == 1
    too_deep = "(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1)
    assert "nested too deeply" in error_of(too_deep).message
    assert "nested too deeply" in error_of("!" * 1000 + "a").message
    assert "nested too deeply" in error_of("a" + "[0]" * 1000).message
    assert "nested too deeply" in error_of(" == ".join(["a"] * 1000)).message


def test_long_logical_chains_are_flat() -> None:
    source = " || ".join(["false"] * 2000) + " || 'last'"
    assert ev(source) == "last"


def test_length_limit() -> None:
    err = error_of("'" + "x" * MAX_LENGTH + "'")
    assert "longer than" in err.message


def test_evaluation_error_position() -> None:
    with pytest.raises(ExpressionError) as info:
        ev("a || fromJSON('{')")
    assert info.value.position == 5
    assert info.value.message.endswith(" at 5")


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-0.0, "0"),
        (42, "42"),
        (3.0, "3"),
        (-2.0, "-2"),
        (0.1, "0.1"),
        (1.5, "1.5"),
        (0.1 + 0.2, "0.3"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-7"),
        (12345678901234567890, "12345678901234567890"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        ("text", "text"),
        ([1, "a"], '[\n  1,\n  "a"\n]'),
        ({"k": 1.0}, '{\n  "k": 1\n}'),
    ],
)
def test_value_to_string(value: Any, expected: str) -> None:
    assert interpolate("${{ v }}", {"v": value}) == expected
    assert ev("format('{0}', v)", {"v": value}) == expected


# --------------------------------------------------------------------------- interpolate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        ("${{ env.FOO }}", "bar"),
        ("pre-${{ env.FOO }}-post", "pre-bar-post"),
        ("${{env.FOO}}${{ matrix.py }}", "bar3.12"),
        ("${{ '}}' }}", "}}"),
        ("${{ format('{0}}}', 'x') }}", "x}"),
        ("a ${{ '${{ nested }}' }} b", "a ${{ nested }} b"),
        ("${{ 'it''s' }}", "it's"),
        ("${{ env.MISSING }}|", "|"),
        ("${{ 1 }}}", "1}"),
        ("{{ not }} $ {{ an }} ${ expression }", "{{ not }} $ {{ an }} ${ expression }"),
        ("$${{ env.FOO }}", "$bar"),
        ("${{ matrix.shard == 2 }}", "true"),
        ("${{\n  needs.build.outputs.version\n}}", "1.2.3"),
        ("echo ${{ toJSON(matrix.os) }}", 'echo [\n  "linux",\n  "macos"\n]'),
        ("${{ env.FOO }} and ${{ env.FOO }}", "bar and bar"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, CONTEXT) == expected


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("echo ${{ env.FOO", "unterminated '${{' (missing '}}') at 5", 5),
        ("ok ${{ a }} then ${{ b", "unterminated '${{' (missing '}}') at 17", 17),
        ("echo ${{ '}} }}", "unterminated string at 9", 9),
        ("echo ${{ }}", "empty expression at 9", 9),
        ("echo ${{ a == }}", "unexpected end of expression at 14", 14),
        ("x ${{ a ) }}", "unexpected token ')' at 8", 8),
        (
            "x ${{ contians('a', 'b') }}",
            "unknown function 'contians' (did you mean 'contains'?) at 6",
            6,
        ),
    ],
)
def test_interpolate_errors_point_into_text(text: str, message: str, position: int) -> None:
    with pytest.raises(ExpressionError) as info:
        interpolate(text, CONTEXT)
    assert info.value.message == message
    assert info.value.position == position


def test_interpolate_evaluation_error_points_into_text() -> None:
    with pytest.raises(ExpressionError) as info:
        interpolate("run: ${{ fromJSON('x') }}", {})
    assert info.value.position == 9
    assert info.value.message.endswith(" at 9")


def test_interpolate_uses_status() -> None:
    context = {"__status__": {"success": False, "failure": True}}
    assert interpolate("${{ failure() }}/${{ success() }}", context) == "true/false"


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("nothing here", []),
        ("${{ a }}", [(0, " a ")]),
        ("x ${{a}} y ${{ b.c }}", [(2, "a"), (11, " b.c ")]),
        ("${{ '}}' }} tail", [(0, " '}}' ")]),
        ("${{ format('{0}}}', a) }}", [(0, " format('{0}}}', a) ")]),
        ("$${{ x }}", [(1, " x ")]),
    ],
)
def test_find_expressions(text: str, found: list[tuple[int, str]]) -> None:
    assert find_expressions(text) == found


def test_find_expressions_inner_offsets_map_back_to_text() -> None:
    text = "echo ${{ a == ) }}"
    ((offset, inner),) = find_expressions(text)
    with pytest.raises(ExpressionError) as info:
        parse(inner)
    assert text[offset + 3 + info.value.position] == ")"


def test_find_expressions_unterminated() -> None:
    with pytest.raises(ExpressionError) as info:
        find_expressions("a ${{ b }} c ${{ d")
    assert info.value.position == 13


@pytest.mark.parametrize(
    ("source", "stripped"),
    [
        ("a == b", "a == b"),
        ("${{ a == b }}", "a == b"),
        ("  ${{ a == b }}  ", "a == b"),
        ("${{a}}", "a"),
        ("${{ '}}' == x }}", "'}}' == x"),
        ("${{ a }} && ${{ b }}", "${{ a }} && ${{ b }}"),
        ("${{ a }} == 'b'", "${{ a }} == 'b'"),
        ("success() && ${{ a }}", "success() && ${{ a }}"),
    ],
)
def test_strip_wrapper(source: str, stripped: str) -> None:
    assert strip_wrapper(source) == stripped


def test_strip_wrapper_with_two_wrappers_then_fails_to_parse() -> None:
    # The classic mistake that GitHub silently treats as an always-true string.
    err = error_of(strip_wrapper("${{ a }} && ${{ b }}"))
    assert err.position == 0


def test_strip_wrapper_unterminated() -> None:
    with pytest.raises(ExpressionError):
        strip_wrapper("${{ a")


@pytest.mark.parametrize(
    ("source", "refs"),
    [
        ("true", set()),
        ("github", {("github",)}),
        ("needs.build.outputs.v", {("needs", "build", "outputs", "v")}),
        ("needs.my-job.result == 'success'", {("needs", "my-job", "result")}),
        ("needs['build'].result", {("needs", "build", "result")}),
        ("matrix[env.KEY]", {("matrix",), ("env", "KEY")}),
        ("items[0].name", {("items",)}),
        ("needs.*.result", {("needs", "*", "result")}),
        (
            "contains(needs.a.outputs.x, steps.s.outputs.y) && format('{0}', env.Z)",
            {("needs", "a", "outputs", "x"), ("steps", "s", "outputs", "y"), ("env", "Z")},
        ),
        ("fromJSON(needs.a.outputs.m).include", {("needs", "a", "outputs", "m")}),
        ("a.b || a.b.c", {("a", "b"), ("a", "b", "c")}),
        ("!success()", set()),
    ],
)
def test_references(source: str, refs: set[tuple[str, ...]]) -> None:
    assert references(source) == refs
    assert references(parse(source)) == refs


@pytest.mark.parametrize(
    ("source", "uses"),
    [
        ("success()", True),
        ("always()", True),
        ("!cancelled()", True),
        ("FAILURE() || a", True),
        ("a && contains(format('{0}', always()), 'true')", True),
        ("needs.build.result == 'success'", False),
        ("success", False),  # a context name, not a call
        ("steps.success.outputs.x", False),
        ("toJSON(a)", False),
    ],
)
def test_uses_status_function(source: str, uses: bool) -> None:
    assert uses_status_function(source) is uses
    assert uses_status_function(parse(source)) is uses


def test_parse_is_cached() -> None:
    assert parse("a && b") is parse("a && b")


def test_evaluate_accepts_parsed_expr() -> None:
    tree = parse("matrix.shard > 1")
    assert evaluate(tree, CONTEXT) is True
    assert evaluate(tree, {"matrix": {"shard": 0}}) is False


def test_module_is_pure() -> None:
    import faena.domain.expressions as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    for forbidden in ("eval(", "exec(", "literal_eval", "import asyncio", "import yaml"):
        assert forbidden not in source.replace("_eval(", "")


# --------------------------------------------------------------------------- properties

_text_without_expressions = st.text().filter(lambda s: "${{" not in s)


@given(_text_without_expressions)
def test_interpolate_without_expressions_is_identity(text: str) -> None:
    assert interpolate(text, CONTEXT) == text
    assert find_expressions(text) == []


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@given(st.text(max_size=200))
def test_string_literals_round_trip(text: str) -> None:
    assert evaluate(_quote(text), {}) == text
    assert evaluate(f"format('{{0}}', {_quote(text)})", {}) == text
    assert interpolate("${{ " + _quote(text) + " }}", {}) == text
    assert str(parse(_quote(text))) == _quote(text)


@given(st.text(max_size=50).filter(lambda s: "{" not in s and "}" not in s))
def test_format_without_placeholders_is_identity(text: str) -> None:
    assert evaluate(f"format({_quote(text)})", {}) == text


@given(st.from_type(type(None)) | st.booleans() | st.integers() | st.text(max_size=20))
def test_primitives_equal_themselves(value: Any) -> None:
    assert evaluate("v == v", {"v": value}) is True


_names = st.sampled_from(["a", "b", "env", "needs", "my-job", "x_1"])
_atoms = st.one_of(
    _names,
    st.sampled_from(["null", "true", "false", "0", "1.5", "-2", "'s'", "'it''s'", "NaN"]),
    st.builds(lambda n, p: f"{n}.{p}", _names, _names),
    st.builds(lambda n: f"{n}['k y']", _names),
    st.builds(lambda n: f"{n}.*.v", _names),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.sampled_from(["&&", "||", "==", "!=", "<", "<=", ">", ">="])
    return st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", children, ops, children),
        st.builds(lambda a: f"!{a}", children),
        st.builds(lambda a: f"({a})", children),
        st.builds(lambda a, b: f"contains({a}, {b})", children, children),
        st.builds(lambda a: f"format('{{0}}', {a})", children),
        st.builds(lambda a: f"{a}[0]", _names),
    )


_expressions = st.recursive(_atoms, _combine, max_leaves=12)


@given(_expressions)
def test_rendering_reparses_to_the_same_tree(source: str) -> None:
    tree = parse(source)
    assert parse(str(tree)) == tree


@given(_expressions)
def test_evaluation_never_crashes_and_interpolation_is_consistent(source: str) -> None:
    context = {"a": 1, "b": "B", "env": {"k y": [1]}, "needs": {"x": {"v": None}}}
    value = evaluate(source, context)
    assert json.dumps(value, default=str) is not None
    assert isinstance(interpolate("${{ " + source + " }}", context), str)
