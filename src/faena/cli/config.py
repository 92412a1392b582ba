"""Where the client commands find their server and token.

Each value is taken from the first place that has it: the command's flag (``--server``,
``--token``), the environment (``FAENA_SERVER``, ``FAENA_TOKEN``), then the config file:
``$FAENA_CONFIG``, else ``$XDG_CONFIG_HOME/faena/config.toml``, else
``~/.config/faena/config.toml``::

    server = "https://ci.example.com"
    token = "fa_..."

    [profiles.staging]              # chosen with --profile staging or FAENA_PROFILE
    server = "https://ci-staging.example.com"
    token = "fa_..."

A profile's values replace the top-level ones. A token from the file is only sent to the
server it sits with: a profile naming another server does not inherit the top-level
token, and when the server comes from a flag or the environment and is not the file's,
the file's token stays home. Only the standard library is used here: the
CLI's start-up budget has no room for more.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faena.settings import SettingsError

KEYS = ("server", "token")
_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


class ConfigError(SettingsError):
    """The config file, or a server or token setting, cannot be used (exit 2)."""


@dataclass(frozen=True)
class ClientConfig:
    """A server and a token, each with where it came from (for messages)."""

    server: str | None = None
    token: str | None = None
    server_from: str = ""
    token_from: str = ""
    file: Path | None = None


def config_path(env: Mapping[str, str], home: Path | None = None) -> tuple[Path, bool]:
    """The config file to read, and whether it was asked for explicitly (FAENA_CONFIG),
    in which case it must exist."""
    if env.get("FAENA_CONFIG"):
        return Path(env["FAENA_CONFIG"]).expanduser(), True
    base = env.get("XDG_CONFIG_HOME")
    root = Path(base) if base else (home or Path.home()) / ".config"
    return root / "faena" / "config.toml", False


def read_config_file(path: Path, *, required: bool) -> dict[str, Any] | None:
    """The parsed file, None if it does not exist (and was not required).

    Raises ConfigError naming the file (and line and column when TOML says where)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"FAENA_CONFIG={path}: no such file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the config file is not UTF-8 ({exc.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _WHERE.search(message)
        if where:
            line, column = where.groups()
            detail = message[: where.start()]
            raise ConfigError(f"{path}:{line}:{column}: {detail} (config file)") from None
        raise ConfigError(f"{path}: {message} (config file)") from None


def _section(doc: Mapping[str, Any], path: Path, where: str) -> dict[str, str]:
    """The server and token of one table of the file, checked."""
    out: dict[str, str] = {}
    for key in KEYS:
        if key not in doc:
            continue
        value = doc[key]
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {where}{key} must be a string, got {value!r}")
        if value:
            out[key] = value
    return out


def _holds_token(doc: Mapping[str, Any]) -> bool:
    if doc.get("token"):
        return True
    profiles = doc.get("profiles")
    return isinstance(profiles, dict) and any(
        isinstance(p, dict) and p.get("token") for p in profiles.values()
    )


def _file_values(
    doc: dict[str, Any], path: Path, profile: str | None, warn: Callable[[str], None]
) -> dict[str, str]:
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a table ([profiles.NAME])")
    for key in doc:
        if key not in (*KEYS, "profiles"):
            warn(f"warning: {path}: unknown setting '{key}' ignored (known: server, token, "
                 "[profiles.NAME])")  # fmt: skip
    values = _section(doc, path, "")
    if profile is not None:
        chosen = profiles.get(profile)
        if not isinstance(chosen, dict):
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"{path}: no profile '{profile}' (profiles: {known})")
        own = _section(chosen, path, f"profiles.{profile}.")
        moved = "server" in own and values.get("server", own["server"]) != own["server"]
        if moved and "token" not in own:
            values.pop("token", None)  # the top-level token is the top-level server's
        values.update(own)
    return values


def _check_mode(path: Path, warn: Callable[[str], None]) -> None:
    """ssh's rule, as a warning: a file holding a secret should be readable by its owner
    alone."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and mode & 0o077:
        warn(f"warning: {path} holds a token and can be read by other users "
             f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}")  # fmt: skip


def _check_url(url: str, source: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{source}: the server must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def resolve(
    *,
    server: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    warn: Callable[[str], None] = _stderr,
) -> ClientConfig:
    """Server and token from the flags, else the environment, else the config file.

    ``server`` is None when none of them names one (``faena logs`` then reads the local
    store; the other client commands use the default server)."""
    e = os.environ if env is None else env
    profile = profile or e.get("FAENA_PROFILE") or None
    path, required = config_path(e, home)
    doc = read_config_file(path, required=required)
    if doc is None and profile is not None:
        raise ConfigError(f"profile '{profile}': there is no config file ({path})")
    file_values: dict[str, str] = {}
    if doc is not None:
        file_values = _file_values(doc, path, profile, warn)
    where = f"{path}" + (f" [profiles.{profile}]" if profile else "")

    chosen_server: tuple[str, str] | None = None
    if server:
        chosen_server = (_check_url(server, "--server"), "--server")
    elif e.get("FAENA_SERVER"):
        chosen_server = (_check_url(e["FAENA_SERVER"], "FAENA_SERVER"), "FAENA_SERVER")
    elif "server" in file_values:
        chosen_server = (_check_url(file_values["server"], where), where)

    chosen_token: tuple[str, str] | None = None
    if token:
        chosen_token = (token, "--token")
    elif e.get("FAENA_TOKEN"):
        chosen_token = (e["FAENA_TOKEN"], "FAENA_TOKEN")
    elif "token" in file_values:
        file_server = file_values.get("server")
        other = (
            chosen_server is not None
            and file_server is not None
            and chosen_server[0] != file_server.rstrip("/")
        )
        # The file's token belongs to the file's server: never hand it to another one.
        if not other:
            chosen_token = (file_values["token"], where)
    if doc is not None and _holds_token(doc):
        _check_mode(path, warn)
    return ClientConfig(
        server=chosen_server[0] if chosen_server else None,
        token=chosen_token[0] if chosen_token else None,
        server_from=chosen_server[1] if chosen_server else "",
        token_from=chosen_token[1] if chosen_token else "",
        file=path if doc is not None else None,
    )
