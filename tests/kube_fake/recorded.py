"""The recorded API shapes under recorded/, with their ``${...}`` placeholders filled in."""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from pathlib import Path
from typing import Any

_DIR = Path(__file__).parent / "recorded"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


@functools.cache
def _load(name: str) -> Any:
    return json.loads((_DIR / f"{name}.json").read_text())


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def recorded(_file: str, /, **values: Any) -> Any:
    """A fresh copy of recorded/<name>.json with ``${key}`` replaced by ``values[key]``
    (``now`` defaults to the current time); a placeholder without a value drops its key."""
    values.setdefault("now", now())
    return _fill(copy.deepcopy(_load(_file)), values)


def _fill(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            filled = _fill(value, values)
            if filled is not _MISSING:
                out[key] = filled
        return out
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return values.get(whole.group(1), _MISSING)
        return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "")), node)
    return node


_MISSING: Any = object()
