"""``faena agent --server``: every replica's URL is checked at start, not at failover."""

from __future__ import annotations

import pytest

from faena.cli.agent import server_url
from faena.settings import SettingsError


@pytest.mark.parametrize("good", ["http://ci:8080", "https://ci.example/prefix", "http://10.0.0.1"])
def test_good_urls_pass(good: str) -> None:
    assert server_url(good) == good


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ("", "an empty URL in the list"),
        ("http://127.0.0.1:99999", "port 99999 is not 1-65535"),
        ("http://:80", "no host"),
        ("ftp://ci", "expected a URL like"),
        ("ci:8080", "expected a URL like"),
        ("http://a b", "expected a URL like"),
    ],
)
def test_bad_urls_say_what_is_wrong(bad: str, said: str) -> None:
    with pytest.raises(SettingsError, match=said):
        server_url(bad)
