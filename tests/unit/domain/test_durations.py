"""Durations, sizes and cpu quantities as written in pipeline files."""

from __future__ import annotations

import pytest

from faena.domain.durations import parse_cpu, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("90", 90.0),
        ("0.25", 0.25),
        ("1M", 60.0),  # units are case-insensitive: M is minutes here, not a size
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "abc", "5 minutes", "1x", "h", "-5s", "-3", True, None, [1], "1h-30m", "nan"]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_parse_duration_message_shows_the_units() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("5 minutes")
    assert "'5 minutes'" in str(info.value)
    assert "ms, s, m, h, d" in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512Mi", 512 * 1024**2),
        ("2Gi", 2 * 1024**3),
        ("1G", 10**9),
        ("100M", 100 * 10**6),
        ("1.5Gi", int(1.5 * 1024**3)),
        ("64k", 64_000),
        ("64Ki", 65536),
        ("1GB", 10**9),
        ("1GiB", 1024**3),
        ("2048", 2048),
        ("1Ti", 1024**4),
        (1024, 1024),
        (0, 0),
        (2.0, 2),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size
    assert isinstance(parse_size(value), int)


@pytest.mark.parametrize("value", ["", "lots", "5Xi", "-1Gi", "1.5", 0.5, True, None, "Gi"])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "cores"),
    [("0.5", 0.5), ("500m", 0.5), ("2", 2.0), (2, 2.0), (0.25, 0.25), ("1500m", 1.5), (" 4 ", 4.0)],
)
def test_parse_cpu(value: object, cores: float) -> None:
    assert parse_cpu(value) == pytest.approx(cores)


@pytest.mark.parametrize("value", ["", "two", "5k", "-1", -0.5, True, None, "500mm"])
def test_parse_cpu_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="invalid cpu"):
        parse_cpu(value)
