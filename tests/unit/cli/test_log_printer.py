"""``faena logs`` rendering, local and remote alike, with a scripted page source."""

from __future__ import annotations

import json
from typing import Any

import pytest

from faena.cli.inspect import print_logs


def job(job_id: str, name: str, state: str, steps: list[str]) -> dict[str, Any]:
    return {"job_id": job_id, "name": name, "key": name, "state": state, "attempt": 1,
            "step_names": steps}  # fmt: skip


def line(i: int, job_id: str, text: str, step: int = 0, attempt: int = 1) -> dict[str, Any]:
    return {"id": i, "job_id": job_id, "attempt": attempt, "step_index": step,
            "stream": "stdout", "ts": 0.0, "text": text}  # fmt: skip


class Script:
    """Answers each fetch with the next page (``next`` and ``run_id`` filled in)."""

    def __init__(self, pages: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]):
        self.pages = pages
        self.calls: list[tuple[str, str | None, int]] = []

    def __call__(self, ref: str, wanted: str | None, after: int, limit: int) -> dict[str, Any]:
        self.calls.append((ref, wanted, after))
        state, jobs, lines = self.pages.pop(0)
        return {"run_id": "r1", "state": state, "jobs": jobs, "lines": lines,
                "next": lines[-1]["id"] if lines else after}  # fmt: skip


def test_finished_run_groups_by_job(capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [job("r1.1", "a", "SUCCEEDED", ["one", "two"]), job("r1.2", "b", "SKIPPED", [])]
    lines = [line(1, "r1.1", "x"), line(2, "r1.1", "y", step=1), line(3, "r1.1", "z", attempt=2)]
    fetch = Script([("SUCCEEDED", jobs, lines)])
    assert print_logs(fetch, "last", None, json_out=False, timestamps=False, follow=True) == 0
    assert capsys.readouterr().out.splitlines() == [
        "=== a [SUCCEEDED]", "--- one", "x", "--- two", "y", "--- one (job attempt 2)", "z",
        "=== b [SKIPPED]",
    ]  # fmt: skip


def test_follow_prints_as_lines_come_and_stops_at_the_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = job("r1.1", "a", "RUNNING", ["s"]), job("r1.2", "b", "RUNNING", ["t"])
    done = [{**a, "state": "SUCCEEDED"}, {**b, "state": "FAILED"}]
    fetch = Script([
        ("RUNNING", [a, b], [line(1, "r1.1", "a1"), line(2, "r1.2", "b1")]),
        ("RUNNING", [a, b], []),
        ("RUNNING", [a, b], [line(3, "r1.1", "a2")]),
        ("FAILED", done, [line(4, "r1.1", "a3")]),
    ])  # fmt: skip
    assert print_logs(fetch, "last", None, json_out=False, timestamps=False, follow=True,
                      poll=0) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines() == [
        "=== a [RUNNING]", "--- s", "a1",
        "=== b [RUNNING]", "--- t", "b1",
        "=== a [RUNNING]", "--- s", "a2", "a3",
    ]  # fmt: skip
    # `last` is pinned to the run the first page found; each read starts after the last.
    assert fetch.calls == [("last", None, 0), ("r1", None, 2), ("r1", None, 2), ("r1", None, 3)]


def test_following_one_job_stops_when_that_job_ends(capsys: pytest.CaptureFixture[str]) -> None:
    a = job("r1.1", "a", "RUNNING", ["s"])
    fetch = Script([
        ("RUNNING", [a], [line(1, "r1.1", "a1")]),
        ("RUNNING", [{**a, "state": "SUCCEEDED"}], []),
    ])  # fmt: skip
    assert print_logs(fetch, "r1", "a", json_out=True, timestamps=False, follow=True,
                      poll=0) == 0  # fmt: skip
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out == [{"job": "a", "job_id": "r1.1", "attempt": 1, "step": 0, "stream": "stdout",
                    "ts": 0.0, "text": "a1"}]  # fmt: skip


def test_without_follow_a_running_run_prints_what_there_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fetch = Script([("RUNNING", [job("r1.1", "a", "RUNNING", [])], [line(1, "r1.1", "x")])])
    assert print_logs(fetch, "r1", None, json_out=False, timestamps=True, follow=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["=== a [RUNNING]", "--- 0"]
    assert out[2].endswith(" x") and out[2][2] == ":" and out[2][8] == "."


def test_follow_view_prints_what_happened_between_polls_in_time_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from faena.cli.client import FollowView

    view = FollowView(json_out=True)
    produce = {"job_id": "r.1", "name": "produce", "state": "SUCCEEDED", "attempt": 1,
               "started_at": 10.0, "finished_at": 12.0}  # fmt: skip
    consume = {"job_id": "r.2", "name": "consume", "state": "RUNNING", "attempt": 1,
               "started_at": 12.5}  # fmt: skip
    lines = [
        {"job_id": "r.1", "attempt": 1, "step_index": 0, "stream": "stdout", "ts": t,
         "text": f"line {t}"}
        for t in (10.5, 11.0, 11.5)
    ]  # fmt: skip
    view.update({"run_id": "r", "jobs": [produce, consume]}, lines)
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    order = [(o["type"], o.get("job"), o.get("state") or o.get("text")) for o in out]
    assert order == [
        ("log", "produce", "line 10.5"),
        ("log", "produce", "line 11.0"),
        ("log", "produce", "line 11.5"),
        ("job", "produce", "SUCCEEDED"),
        ("job", "consume", "RUNNING"),
    ]
