"""parse_output_file: GitHub's $GITHUB_OUTPUT format, as written to $FAENA_OUTPUT."""

from __future__ import annotations

import pytest

from faena.domain.outputs import parse_output_file


def test_empty_file_has_no_outputs() -> None:
    assert parse_output_file("") == {}


def test_key_value_lines() -> None:
    assert parse_output_file("a=1\nb=two words\n") == {"a": "1", "b": "two words"}


def test_value_keeps_everything_after_the_first_equals_sign() -> None:
    assert parse_output_file("url=https://x/?a=1&b=2\n") == {"url": "https://x/?a=1&b=2"}


def test_empty_value() -> None:
    assert parse_output_file("empty=\n") == {"empty": ""}


def test_blank_lines_between_entries_are_ignored() -> None:
    assert parse_output_file("\n\na=1\n   \n\nb=2") == {"a": "1", "b": "2"}


def test_later_key_overrides_earlier() -> None:
    assert parse_output_file("a=1\na=2\n") == {"a": "2"}


def test_crlf_line_endings() -> None:
    text = "a=1\r\nbody<<EOF\r\nx\r\ny\r\nEOF\r\n"
    assert parse_output_file(text) == {"a": "1", "body": "x\ny"}


def test_multiline_value() -> None:
    text = "body<<EOF\nline one\nline two\nEOF\nafter=1\n"
    assert parse_output_file(text) == {"body": "line one\nline two", "after": "1"}


def test_multiline_value_keeps_blank_lines_and_equals_signs() -> None:
    text = "body<<END\n\na=b\nkey<<X\n\nEND\n"
    assert parse_output_file(text) == {"body": "\na=b\nkey<<X\n"}


def test_empty_multiline_value() -> None:
    assert parse_output_file("body<<EOF\nEOF\n") == {"body": ""}


def test_delimiter_must_match_the_whole_line() -> None:
    text = "body<<EOF\nEOF not yet\n EOF\nEOF\n"
    assert parse_output_file(text) == {"body": "EOF not yet\n EOF"}


def test_random_delimiter_as_github_recommends() -> None:
    delimiter = "ghadelimiter_4f1e8b2c"
    text = f'json<<{delimiter}\n{{\n  "a": 1\n}}\n{delimiter}\n'
    assert parse_output_file(text) == {"json": '{\n  "a": 1\n}'}


def test_first_of_equals_and_heredoc_decides_the_form() -> None:
    assert parse_output_file("a=x<<y\n") == {"a": "x<<y"}
    assert parse_output_file("a<<=x\nline\n=x\n") == {"a": "line"}


def test_other_line_separators_stay_in_values() -> None:
    # str.splitlines() would break on these; the format only knows \n.
    assert parse_output_file("a=x\x0by\u2028z\n") == {"a": "x\x0by\u2028z"}


def test_unicode_keys_and_values() -> None:
    assert parse_output_file("saludo=¡hola, señor! ✓\n") == {"saludo": "¡hola, señor! ✓"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("just some text\n", "line 1: expected 'key=value' or 'key<<DELIMITER'"),
        ("a=1\nnope\n", "line 2"),
        ("=value\n", "line 1: missing output name"),
        ("<<EOF\nx\nEOF\n", "line 1: missing output name"),
        ("body<<\nx\n", "line 1: empty heredoc delimiter"),
    ],
)
def test_malformed_lines_raise_value_error_naming_the_line(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="line") as caught:
        parse_output_file(text)
    assert fragment in str(caught.value)


def test_unterminated_heredoc_raises() -> None:
    with pytest.raises(ValueError) as caught:
        parse_output_file("a=1\nbody<<EOF\nline\nEO\n")
    message = str(caught.value)
    assert "line 2" in message
    assert "'body'" in message
    assert "'EOF'" in message


def test_long_malformed_line_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        parse_output_file("x" * 10_000)
    assert len(str(caught.value)) < 200
