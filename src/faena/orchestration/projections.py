"""Rebuild the run and job rows from the event log (``faena events replay``).

The event log is the truth; the rows are projections of it. Replaying the events of
every run touched since a point folds them again (``PipelineRun.apply``) and writes the
rows back, so a projection that went wrong, or a new projection, comes out of the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faena.domain.run import rebuild
from faena.store.port import Commit, Store

PAGE = 1000


@dataclass
class Replay:
    """What a replay did: runs rebuilt, and those whose stored rows differed."""

    events: int = 0
    runs: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)


async def replay(
    store: Store,
    *,
    since_seq: int = 0,
    since_time: float | None = None,
    in_flight: bool = False,
) -> Replay:
    """Rebuild the rows of every finished run with an event after ``since_seq`` (and at or
    after ``since_time``, epoch seconds, when given); unfinished runs too with ``in_flight``.

    Unfinished runs are left alone by default: a live orchestrator (a server, or a replica
    sharing the database) writes their rows on every change, and a replay racing it could
    write rows older than its last commit."""
    report = Replay()
    touched: dict[str, None] = {}
    seq = since_seq
    while batch := await store.events_after(seq, limit=PAGE):
        for stored in batch:
            seq = stored.seq
            if since_time is not None and stored.event.occurred_at < since_time:
                continue
            report.events += 1
            if stored.event.subject.startswith(("ci.run.", "ci.job.", "ci.step.", "ci.worker.",
                                                "ci.assignment.", "ci.exec.")):  # fmt: skip
                touched.setdefault(stored.event.correlation_id, None)
    for run_id in touched:
        events = [s.event for s in await store.run_events(run_id)]
        if not events:
            continue
        run = rebuild(run_id, events)
        if not run.state.terminal and not in_flight:
            report.in_flight.append(run_id)
            continue
        rows = []
        for job in run.jobs.values():
            row = job.to_row()
            row["run_id"] = run_id
            row["position"] = int(job.job_id.rsplit(".", 1)[1])
            rows.append(row)
        before = await store.get_run(run_id)
        await store.commit(Commit(runs=[run.to_row()], jobs=rows))
        report.runs.append(run_id)
        if before is None or _differs(before, run.to_row(), rows):
            report.changed.append(run_id)
    return report


def _differs(before: dict[str, Any], run: dict[str, Any], jobs: list[dict[str, Any]]) -> bool:
    if before.get("state") != run.get("state") or before.get("attempt") != run.get("attempt"):
        return True
    stored = {str(j["job_id"]): j for j in before.get("jobs", [])}
    for job in jobs:
        old = stored.get(str(job["job_id"]))
        if old is None or any(old.get(k) != job.get(k) for k in ("state", "attempt", "result")):
            return True
    return len(stored) != len(jobs)
