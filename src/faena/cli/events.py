"""``faena events replay``: rebuild run and job rows from the event log."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime

from faena.settings import Settings, SettingsError


def parse_since(text: str | None) -> tuple[int, float | None]:
    """``--since``: an event sequence number, or an ISO time (``2026-11-26T10:00``)."""
    if not text:
        return 0, None
    if text.isdigit():
        return int(text), None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SettingsError(
            f"--since {text!r}: expected an event number or a time like 2026-11-26T10:00"
        ) from None
    return 0, moment.timestamp()


def replay_command(since: str | None, *, json_out: bool, in_flight: bool = False) -> int:
    from faena.app import open_store
    from faena.orchestration.projections import replay

    since_seq, since_time = parse_since(since)
    settings = Settings.from_env()

    async def main() -> int:
        store = open_store(settings)
        await store.open()
        try:
            leader = await store.leader() if in_flight else None
            if leader is not None:
                print(
                    f"warning: faena server replicas use this database (last leader "
                    f"{leader.holder} at {leader.url}); --in-flight races their orchestrator "
                    "unless every replica is stopped",
                    file=sys.stderr,
                )
            report = await replay(
                store, since_seq=since_seq, since_time=since_time, in_flight=in_flight
            )
        finally:
            await store.close()
        if json_out:
            print(json.dumps({"events": report.events, "runs": report.runs,
                              "changed": report.changed,
                              "in_flight": report.in_flight}))  # fmt: skip
        else:
            print(f"replayed {report.events} event(s): {len(report.runs)} run(s) rebuilt, "
                  f"{len(report.changed)} differed from their stored rows")  # fmt: skip
            for run_id in report.changed:
                print(f"  fixed {run_id}")
            if report.in_flight:
                print(f"left {len(report.in_flight)} unfinished run(s) to their orchestrator "
                      "(--in-flight rebuilds them too: only when no server runs them)")  # fmt: skip
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
