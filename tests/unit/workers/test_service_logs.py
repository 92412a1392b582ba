"""Service logs read from the daemon become the job's lines, with their own times."""

from __future__ import annotations

from datetime import UTC, datetime

from faena.workers.port import OutputLine
from faena.workers.providers.service_logs import hand_over, parse_timestamped


def test_docker_and_kubernetes_timestamps_become_the_lines_times() -> None:
    text = (
        "2026-12-07T21:06:02.123456789Z database system is ready\n"
        "2026-12-07T21:06:03Z  two spaces kept\n"
    )
    lines = parse_timestamped(text)
    assert [line.text for line in lines] == ["database system is ready", " two spaces kept"]
    first = datetime(2026, 12, 7, 21, 6, 2, 123456, tzinfo=UTC).timestamp()
    assert abs(lines[0].ts - first) < 1e-6
    assert lines[1].ts == datetime(2026, 12, 7, 21, 6, 3, tzinfo=UTC).timestamp()


def test_a_line_without_a_time_is_kept_whole() -> None:
    [line] = parse_timestamped("no time here at all\n")
    assert line.text == "no time here at all"
    assert line.ts > 0


async def test_a_failing_sink_does_not_raise() -> None:
    async def broken(name: str, lines: list[OutputLine]) -> None:
        raise RuntimeError("the control plane is gone")

    await hand_over(broken, "db", "2026-12-07T21:06:02Z hello\n")


async def test_nothing_is_handed_over_for_an_empty_log() -> None:
    got: list[str] = []

    async def sink(name: str, lines: list[OutputLine]) -> None:
        got.append(name)

    await hand_over(sink, "db", "")
    await hand_over(None, "db", "2026-12-07T21:06:02Z hello\n")
    assert got == []
