"""Step outputs: the ``$FAENA_OUTPUT`` file, in GitHub Actions' ``$GITHUB_OUTPUT`` format.

Two forms, one per line: ``key=value``, and the multiline ``key<<DELIMITER`` followed by the
value's lines and a line holding exactly ``DELIMITER``. Like GitHub's runner, whichever of
``=`` and ``<<`` comes first on a line decides its form, a later key overrides an earlier one,
and blank lines between entries are ignored (inside a multiline value they are kept).
"""

from __future__ import annotations

__all__ = ["parse_output_file"]


def parse_output_file(text: str) -> dict[str, str]:
    """Parse an output file into ``{key: value}``; raise ``ValueError`` naming the bad line."""
    # Split on "\n" only: str.splitlines() would also break values on \v, \f, \x1c, U+2028...
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    outputs: dict[str, str] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        number = index + 1
        index += 1
        if not line.strip():
            continue
        equals = line.find("=")
        heredoc = line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            key, value = line[:equals], line[equals + 1 :]
            _check_key(key, number, line)
            outputs[key] = value
            continue
        if heredoc < 0:
            raise ValueError(
                f"line {number}: expected 'key=value' or 'key<<DELIMITER', got {_show(line)}"
            )
        key, delimiter = line[:heredoc], line[heredoc + 2 :]
        _check_key(key, number, line)
        if not delimiter:
            raise ValueError(f"line {number}: empty heredoc delimiter for output {key!r}")
        try:
            end = lines.index(delimiter, index)
        except ValueError:
            raise ValueError(
                f"line {number}: output {key!r} is not terminated: "
                f"no line reading exactly {delimiter!r} follows"
            ) from None
        outputs[key] = "\n".join(lines[index:end])
        index = end + 1
    return outputs


def _check_key(key: str, number: int, line: str) -> None:
    if not key.strip():
        raise ValueError(f"line {number}: missing output name in {_show(line)}")


def _show(line: str, limit: int = 80) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")
