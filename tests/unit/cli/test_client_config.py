"""Where the client commands find their server and token: flags, environment, file."""

from __future__ import annotations

from pathlib import Path

import pytest

from faena.cli.config import ConfigError, config_path, resolve
from faena.settings import SettingsError


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_nothing_configured(home: Path) -> None:
    warnings: list[str] = []
    config = resolve(env={}, home=home, warn=warnings.append)
    assert config.server is None and config.token is None and config.file is None
    assert warnings == []


def test_flags_beat_environment_beat_file(home: Path) -> None:
    write(home / ".config/faena/config.toml", 'server = "http://file:1"\ntoken = "file-t"\n')
    env = {"FAENA_SERVER": "http://env:2", "FAENA_TOKEN": "env-t"}
    flags = resolve(server="http://flag:3/", token="flag-t", env=env, home=home)
    assert (flags.server, flags.token) == ("http://flag:3", "flag-t")
    assert (flags.server_from, flags.token_from) == ("--server", "--token")
    from_env = resolve(env=env, home=home)
    assert (from_env.server, from_env.token) == ("http://env:2", "env-t")
    assert (from_env.server_from, from_env.token_from) == ("FAENA_SERVER", "FAENA_TOKEN")
    from_file = resolve(env={}, home=home)
    assert (from_file.server, from_file.token) == ("http://file:1", "file-t")
    assert from_file.server_from.endswith("config.toml")


def test_each_value_on_its_own(home: Path) -> None:
    write(home / ".config/faena/config.toml", 'server = "http://file:1"\ntoken = "file-t"\n')
    config = resolve(env={"FAENA_TOKEN": "env-t"}, home=home)
    assert (config.server, config.token) == ("http://file:1", "env-t")


def test_empty_environment_values_count_as_unset(home: Path) -> None:
    write(home / ".config/faena/config.toml", 'server = "http://file:1"\n')
    config = resolve(env={"FAENA_SERVER": "", "FAENA_TOKEN": ""}, home=home)
    assert config.server == "http://file:1" and config.token is None


def test_file_token_never_goes_to_another_server(home: Path) -> None:
    write(home / ".config/faena/config.toml", 'server = "http://file:1"\ntoken = "file-t"\n')
    other = resolve(server="http://elsewhere:9", env={}, home=home)
    assert other.server == "http://elsewhere:9" and other.token is None
    same = resolve(server="http://file:1/", env={}, home=home)
    assert same.token == "file-t"
    # A file that names no server: its token goes with whatever server is chosen.
    write(home / ".config/faena/config.toml", 'token = "any-t"\n')
    assert resolve(server="http://elsewhere:9", env={}, home=home).token == "any-t"


def test_faena_config_and_xdg(tmp_path: Path, home: Path) -> None:
    explicit = write(tmp_path / "mine.toml", 'server = "http://explicit:1"\n')
    write(tmp_path / "xdg/faena/config.toml", 'server = "http://xdg:1"\n')
    write(home / ".config/faena/config.toml", 'server = "http://home:1"\n')
    assert config_path({}, home) == (home / ".config/faena/config.toml", False)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert resolve(env=env, home=home).server == "http://xdg:1"
    env["FAENA_CONFIG"] = str(explicit)
    assert resolve(env=env, home=home).server == "http://explicit:1"
    # /dev/null: no file at all, whatever the home directory holds.
    assert resolve(env={"FAENA_CONFIG": "/dev/null"}, home=home).server is None


def test_a_named_config_file_must_exist(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ConfigError, match=r"FAENA_CONFIG=.*nope\.toml: no such file"):
        resolve(env={"FAENA_CONFIG": str(tmp_path / "nope.toml")}, home=home)


def test_profiles(home: Path) -> None:
    write(
        home / ".config/faena/config.toml",
        'server = "http://default:1"\ntoken = "default-t"\n\n'
        '[profiles.staging]\nserver = "http://staging:1"\ntoken = "staging-t"\n\n'
        '[profiles.tokenless]\nserver = "http://tokenless:1"\n',
    )
    staging = resolve(profile="staging", env={}, home=home)
    assert (staging.server, staging.token) == ("http://staging:1", "staging-t")
    assert staging.server_from.endswith("[profiles.staging]")
    by_env = resolve(env={"FAENA_PROFILE": "staging"}, home=home)
    assert by_env.server == "http://staging:1"
    flag_wins = resolve(profile="tokenless", env={"FAENA_PROFILE": "staging"}, home=home)
    assert flag_wins.server == "http://tokenless:1"
    # The top-level token belongs to the top-level server, not the profile's.
    assert flag_wins.token is None
    with pytest.raises(ConfigError, match="no profile 'prod' \\(profiles: staging, tokenless\\)"):
        resolve(profile="prod", env={}, home=home)


def test_a_profile_needs_a_file(home: Path) -> None:
    with pytest.raises(ConfigError, match="profile 'x': there is no config file"):
        resolve(profile="x", env={}, home=home)


def test_malformed_file_names_file_line_and_column(home: Path) -> None:
    path = write(home / ".config/faena/config.toml", 'server = "http://a:1"\ntoken = \n')
    with pytest.raises(ConfigError) as caught:
        resolve(env={}, home=home)
    assert str(caught.value).startswith(f"{path}:2:")
    assert isinstance(caught.value, SettingsError)  # the CLI turns it into exit 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = 8080\n", "server must be a string"),
        ('[profiles.a]\ntoken = ["x"]\n', "profiles.a.token must be a string"),
        ('profiles = "x"\n', "'profiles' must be a table"),
        ('server = "localhost:8080"\n', "must be an http:// or https:// URL"),
    ],
)
def test_wrong_values(home: Path, text: str, message: str) -> None:
    write(home / ".config/faena/config.toml", text)
    with pytest.raises(ConfigError, match=message):
        resolve(env={}, home=home, profile="a" if "profiles.a" in text else None)


def test_bad_server_from_flag_or_environment(home: Path) -> None:
    with pytest.raises(ConfigError, match="--server"):
        resolve(server="ftp://x", env={}, home=home)
    with pytest.raises(ConfigError, match="FAENA_SERVER"):
        resolve(env={"FAENA_SERVER": "x:1"}, home=home)


def test_not_utf8(home: Path) -> None:
    path = home / ".config/faena/config.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'server = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve(env={}, home=home)


def test_readable_token_file_warns_but_works(home: Path) -> None:
    path = write(home / ".config/faena/config.toml", 'token = "t"\n', mode=0o644)
    warnings: list[str] = []
    config = resolve(env={}, home=home, warn=warnings.append)
    assert config.token == "t"
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and str(path) in warnings[0]
    path.chmod(0o600)
    warnings.clear()
    resolve(env={}, home=home, warn=warnings.append)
    assert warnings == []
    # Without a token, readable is fine.
    write(path, 'server = "http://a:1"\n', mode=0o644)
    resolve(env={}, home=home, warn=warnings.append)
    assert warnings == []


def test_token_in_a_profile_counts_too(home: Path) -> None:
    write(home / ".config/faena/config.toml", '[profiles.p]\ntoken = "t"\n', mode=0o640)
    warnings: list[str] = []
    resolve(env={}, home=home, warn=warnings.append)
    assert any("chmod 600" in w for w in warnings)


def test_unknown_keys_warn(home: Path) -> None:
    write(home / ".config/faena/config.toml", 'sever = "http://typo:1"\n')
    warnings: list[str] = []
    assert resolve(env={}, home=home, warn=warnings.append).server is None
    assert len(warnings) == 1 and "'sever'" in warnings[0]
