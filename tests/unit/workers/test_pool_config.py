"""parse_pools: the FAENA_POOLS syntax and its errors."""

from __future__ import annotations

import pytest

from faena.domain.errors import ErrorCode
from faena.workers.pool_config import PoolConfig, PoolConfigError, parse_pools


def test_the_documented_example() -> None:
    pools = parse_pools("docker:provider=docker,labels=linux,min=1,max=4;local:provider=local")
    assert pools == (
        PoolConfig("docker", "docker", frozenset({"linux"}), 1, 4),
        PoolConfig("local", "local", frozenset(), 0, 4),
    )


def test_defaults_spaces_and_several_labels() -> None:
    (pool,) = parse_pools("  big : labels = linux + gpu , min=6 ; ")
    assert pool == PoolConfig("big", "big", frozenset({"linux", "gpu"}), 6, 6)
    assert parse_pools("") == ()
    assert parse_pools("local") == (PoolConfig("local", "local"),)


def test_serves() -> None:
    linux = PoolConfig("d", "docker", frozenset({"linux", "amd64"}))
    assert linux.serves(()) and linux.serves(("linux",)) and linux.serves(["amd64", "linux"])
    assert not linux.serves(("gpu",))
    assert PoolConfig("any", "local").serves(("gpu", "linux"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":provider=local", "pool 1: a pool starts with its name"),
        ("bad name:provider=local", "a pool starts with its name"),
        ("a:provider", "pool 1 ('a'): 'provider' is not key=value"),
        ("a:size=3", "unknown key 'size' (keys: provider, labels, min, max)"),
        ("a:min=1,min=2", "'min' is given twice"),
        ("a:min=-1", "min='-1' is not a whole number >= 0"),
        ("a:max=four", "max='four' is not a whole number >= 0"),
        ("a:max=²", "max='²' is not a whole number"),
        ("a:min=3,max=2", "min=3 is more than max=2"),
        ("a:max=17", "max=17 is more than 16 warm workers"),
        ("a:min=20", "min=20 is more than 16 warm workers"),
        ("a:provider=no/such", "provider 'no/such' is not a provider name"),
        ("a:labels=linux+x y", "label 'x y' is not a label"),
        ("a;b;a:min=1", "pool 'a' is defined twice"),
        ("ok;b:mx=1", "pool 2 ('b'): unknown key 'mx'"),
    ],
)
def test_bad_input_is_named(text: str, message: str) -> None:
    with pytest.raises(PoolConfigError) as raised:
        parse_pools(text)
    assert message in raised.value.message
    assert raised.value.message.startswith("FAENA_POOLS: ")
    assert raised.value.code is ErrorCode.ORC_VALID


def test_known_providers_are_checked() -> None:
    assert parse_pools("d:provider=docker", providers={"docker", "local"})
    with pytest.raises(
        PoolConfigError, match=r"unknown provider 'k8s' \(providers: docker, local\)"
    ):
        parse_pools("k:provider=k8s", providers={"docker", "local"})
