"""The shells a step may name, as GitHub Actions runs them, and custom shell templates."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from faena.workers.providers.exit_codes import EXIT_NOT_FOUND

# GitHub Actions' command lines for its named shells; {0} is the script file.
SHELLS: dict[str, tuple[tuple[str, ...], str]] = {
    "bash": (("bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"), ".sh"),
    "sh": (("sh", "-e", "{0}"), ".sh"),
    "python": (("python3", "{0}"), ".py"),
    "pwsh": (("pwsh", "-command", ". '{0}'"), ".ps1"),
}


class ShellError(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_shell(shell: str) -> tuple[list[str], str]:
    """A named or custom shell's command line with ``{0}`` for the script, unresolved."""
    if shell in SHELLS:
        return list(SHELLS[shell][0]), SHELLS[shell][1]
    try:
        words = shlex.split(shell)
    except ValueError as exc:
        raise ShellError(EXIT_NOT_FOUND, f"cannot parse shell {shell!r}: {exc}") from None
    if not words:
        raise ShellError(EXIT_NOT_FOUND, f"cannot parse shell {shell!r}")
    if not any("{0}" in word for word in words):
        words.append("{0}")
    return words, ""


def shell_template(shell: str | None, search_path: str) -> tuple[list[str], str]:
    """The shell's command line with ``{0}`` for the script, executable resolved; and suffix."""
    if shell is None:
        shell = "bash" if shutil.which("bash", path=search_path) else "sh"
    words, suffix = parse_shell(shell)
    if "{0}" in words[0] or "/" in words[0]:
        return words, suffix  # a path (or the script itself): the spawn reports failures
    found = shutil.which(words[0], path=search_path)
    if found is None and shell == "python":
        found = sys.executable
    if found is None:
        raise ShellError(EXIT_NOT_FOUND, f"shell {words[0]!r} not found on PATH")
    words[0] = found
    return words, suffix


def fill_template(template: list[str], script: Path, *, pwsh: bool) -> list[str]:
    path = str(script).replace("'", "''") if pwsh else str(script)
    return [word.replace("{0}", path) for word in template]
