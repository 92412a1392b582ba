"""Parsing of human quantities in pipeline files: durations, memory sizes and cpu counts.

Each parser accepts a number (already in the base unit) or a string with a unit, and
raises ``ValueError`` with a message meant for the person who wrote the file.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_cpu", "parse_duration", "parse_size"]

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# Kubernetes quantity suffixes: decimal (k, M, G, ...) and binary (Ki, Mi, Gi, ...).
# "KB"/"MiB" spellings are accepted too because people write them.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
    "pi": 1024**5,
    "pib": 1024**5,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
_CPU = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(m?)")


def _number(value: object, what: str) -> float | None:
    """``value`` as a float if it is a real number; None if it is some other type."""
    # bool is an int subclass, but `timeout: true` is a mistake, not one second.
    if isinstance(value, bool):
        shown = "true" if value else "false"  # as the YAML said it, not Python's True
        raise ValueError(f"invalid {what} {shown}: expected a number or a string with a unit")
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"invalid {what} {value!r}: must be finite")
        if number < 0:
            raise ValueError(f"invalid {what} {value!r}: must not be negative")
        return number
    return None


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number, or a string like ``500ms``, ``30s``, ``1h30m``, ``2d``."""
    number = _number(value, "duration")
    if number is not None:
        return number
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected a number or a string like '30s'")
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return _checked(float(text), value, "duration")
    compact = text.replace(" ", "")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ValueError(
            f"invalid duration {value!r}: use a number of seconds or units ms, s, m, h, d "
            "(e.g. '500ms', '30s', '5m', '1h30m')"
        )
    return total


def parse_size(value: object) -> int:
    """Bytes in ``value``: an integer, ``512Mi``, ``2Gi`` (binary) or ``1G``, ``100M`` (decimal)."""
    number = _number(value, "size")
    if number is not None:
        return _whole_bytes(number, value)
    if not isinstance(value, str):
        raise ValueError(
            f"invalid size {value!r}: expected a number of bytes or a string like '512Mi'"
        )
    match = _SIZE.fullmatch(value.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: use bytes or a unit: Ki, Mi, Gi, Ti (1024) "
            "or k, M, G, T (1000), e.g. '512Mi', '2Gi', '1G'"
        )
    return _whole_bytes(float(match.group(1)) * _SIZE_UNITS[unit], value)


def parse_cpu(value: object) -> float:
    """Cores in ``value``: a number (``2``, ``0.5``) or millicores (``500m``)."""
    number = _number(value, "cpu")
    if number is not None:
        return number
    if not isinstance(value, str):
        raise ValueError(
            f"invalid cpu {value!r}: expected a number of cores or millicores like '500m'"
        )
    match = _CPU.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"invalid cpu {value!r}: use a number of cores ('2', '0.5') or millicores ('500m')"
        )
    cores = float(match.group(1))
    return cores / 1000 if match.group(2) else cores


def _checked(number: float, value: object, what: str) -> float:
    if not math.isfinite(number):
        raise ValueError(f"invalid {what} {value!r}: must be finite")
    if number < 0:
        raise ValueError(f"invalid {what} {value!r}: must not be negative")
    return number


def _whole_bytes(number: float, value: object) -> int:
    # "1.5Gi" is a whole number of bytes; "0.5" (half a byte) is not meaningful.
    rounded = round(number)
    if abs(number - rounded) > 1e-6 * max(1.0, number):
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return int(rounded)


def format_size(size: int) -> str:
    """Bytes as people write limits: ``64 MiB``, ``1.5 GiB``, ``512 B``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:g} {unit}" if unit == "B" else f"{value:.4g} {unit}"
        value /= 1024
    return f"{size} B"
