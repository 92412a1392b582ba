"""Named pools from configuration (``FAENA_POOLS``), parsed by one pure function.

Syntax: pools separated by ``;``, each ``name:key=value,key=value``::

    docker:provider=docker,labels=linux+amd64,min=1,max=4;local:provider=local

Keys: ``provider`` (default: the pool's name), ``labels`` (``+``-separated; none: the pool
serves any job), ``min`` and ``max`` (idle warm workers the autoscaler keeps; default 0
and 4, at most ``MAX_WARM``). Order matters: a job goes to the first pool that serves it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from faena.domain.errors import ErrorCode, FaenaError
from faena.workers.pool import MAX_WARM

DEFAULT_MAX = 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEYS = ("provider", "labels", "min", "max")


class PoolConfigError(FaenaError):
    """``FAENA_POOLS`` does not parse (ORC-VALID); the message says where and why."""

    code = ErrorCode.ORC_VALID


@dataclass(frozen=True)
class PoolConfig:
    """One named pool: which provider it uses, which jobs it serves, how warm it stays."""

    name: str
    provider: str
    labels: frozenset[str] = frozenset()
    min_warm: int = 0
    max_warm: int = DEFAULT_MAX

    def serves(self, runs_on: Collection[str]) -> bool:
        """Whether a job with these ``runs-on`` labels may run here: all of them are the
        pool's, or the pool has none (it serves any job)."""
        return not self.labels or set(runs_on) <= self.labels


def parse_pools(text: str, *, providers: Collection[str] | None = None) -> tuple[PoolConfig, ...]:
    """The pools ``text`` describes, in order; ``providers``: the provider names allowed
    (None: any). Raises PoolConfigError naming the pool and the key at fault."""
    pools: list[PoolConfig] = []
    for n, chunk in enumerate(text.split(";"), 1):
        chunk = chunk.strip()
        if not chunk:
            continue
        pools.append(_parse_pool(chunk, n, providers))
    seen: set[str] = set()
    for pool in pools:
        if pool.name in seen:
            raise PoolConfigError(f"FAENA_POOLS: pool {pool.name!r} is defined twice")
        seen.add(pool.name)
    return tuple(pools)


def _parse_pool(chunk: str, n: int, providers: Collection[str] | None) -> PoolConfig:
    name, colon, rest = chunk.partition(":")
    name = name.strip()
    where = f"FAENA_POOLS: pool {n} ({name!r})" if name else f"FAENA_POOLS: pool {n}"
    if not _NAME.match(name):
        raise PoolConfigError(
            f"{where}: a pool starts with its name (letters, digits, '.', '_', '-'; "
            f"at most 64), then ':' and its settings, e.g. 'docker:provider=docker,max=4'"
        )
    values: dict[str, str] = {}
    for item in rest.split(",") if colon else []:
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise PoolConfigError(f"{where}: {item!r} is not key=value")
        if key not in _KEYS:
            raise PoolConfigError(f"{where}: unknown key {key!r} (keys: {', '.join(_KEYS)})")
        if key in values:
            raise PoolConfigError(f"{where}: {key!r} is given twice")
        values[key] = value
    provider = values.get("provider", name)
    if not _NAME.match(provider):
        raise PoolConfigError(f"{where}: provider {provider!r} is not a provider name")
    if providers is not None and provider not in providers:
        known = ", ".join(sorted(providers)) or "none"
        raise PoolConfigError(f"{where}: unknown provider {provider!r} (providers: {known})")
    labels = frozenset(x.strip() for x in values.get("labels", "").split("+") if x.strip())
    for label in labels:
        if not _NAME.match(label):
            raise PoolConfigError(f"{where}: label {label!r} is not a label")
    low = _count(values, "min", 0, where)
    if low > MAX_WARM:
        raise PoolConfigError(f"{where}: min={low} is more than {MAX_WARM} warm workers")
    high = _count(values, "max", max(DEFAULT_MAX, low), where)
    if high > MAX_WARM:
        raise PoolConfigError(f"{where}: max={high} is more than {MAX_WARM} warm workers")
    if low > high:
        raise PoolConfigError(f"{where}: min={low} is more than max={high}")
    return PoolConfig(name, provider, labels, low, high)


def _count(values: dict[str, str], key: str, default: int, where: str) -> int:
    raw = values.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise PoolConfigError(f"{where}: {key}={raw!r} is not a whole number >= 0")
    return int(raw)
