"""The Store contract: one suite, run against every adapter of the port."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from faena.domain.events import Event, make_event
from faena.domain.run import PipelineRun, new_job
from faena.domain.states import JobState, RunState
from faena.store.memory import MemoryStore
from faena.store.port import (
    AmbiguousRef,
    Commit,
    Deposed,
    IdempotencyRecord,
    LogLine,
    Store,
    TokenRecord,
)
from faena.store.sql import SqlStore

ADAPTERS = [
    "memory",
    "sqlite",  # the stdlib driver on the store's own thread (the default)
    "sqlite-async",  # aiosqlite through AsyncConnection.run_sync: PostgreSQL's code path
    "postgres",  # asyncpg on a real server (tests/postgres.py), a new database per test
]

# Adapters that keep their data across instances (restarts), and the SQLite-only checks.
DURABLE = [a for a in ADAPTERS if a != "memory"]
SQLITE = [a for a in ADAPTERS if a.startswith("sqlite")]

StoreFactory = Callable[[], Store]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(adapter: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    """Builds a new store object over the same storage on every call (reopen = restart)."""
    if adapter == "memory":
        return MemoryStore
    if adapter == "postgres":
        postgres_url = str(request.getfixturevalue("postgres_url"))
        return lambda: SqlStore(postgres_url)
    url = f"sqlite+aiosqlite:///{tmp_path / 'state' / 'faena.db'}"
    if adapter == "sqlite":
        return lambda: SqlStore(url)
    if adapter == "sqlite-async":
        return lambda: SqlStore(url, run_in_thread=False)
    raise AssertionError(f"no factory for adapter {adapter}")


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


# -- builders --------------------------------------------------------------------------


def job_requested(run_id: str, job_id: str, attempt: int = 1) -> Event:
    payload = {"job_id": job_id, "spec_hash": "h1", "attempt": attempt}
    return make_event("ci.job.v1.requested", payload, correlation_id=run_id)


def run_started(run_id: str) -> Event:
    return make_event("ci.run.v1.started", {"run_id": run_id}, correlation_id=run_id)


def run_row(run_id: str, created_at: float = 1.0, state: str = "PENDING") -> dict[str, Any]:
    return {"run_id": run_id, "pipeline": "ci", "state": state, "created_at": created_at}


def job_row(run_id: str, job_id: str, state: str = "WAITING", attempt: int = 0) -> dict[str, Any]:
    return {"job_id": job_id, "run_id": run_id, "key": job_id, "state": state, "attempt": attempt}


def log(run_id: str, job_id: str, text: str, step: int = 0, chunk: str | None = None) -> LogLine:
    return LogLine(
        run_id, job_id, attempt=1, step_index=step, stream="stdout", ts=1.5, text=text, chunk=chunk
    )


def idem(key: str, body_hash: str, created_at: float, tenant_id: str = "t1") -> IdempotencyRecord:
    result = {"run_id": f"run-{body_hash}", "status": 201, "jobs": ["a", "b"]}
    return IdempotencyRecord(tenant_id, key, body_hash, result, created_at)


def token(token_id: str, created_at: float, kind: str = "user", **fields: Any) -> TokenRecord:
    """A token with hash ``hash-<id>``; ``fields`` override any field."""
    record = TokenRecord(token_id, f"hash-{token_id}", f"sub-{token_id}", ("runs:read",), kind=kind)
    return dataclasses.replace(record, created_at=created_at, **fields)


def json_copy(value: Any) -> Any:
    """What a stored value reads back as: a JSON round trip (StrEnum -> str, tuple -> list)."""
    return json.loads(json.dumps(value))


def dicts(events: list[Event]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


# -- runs and jobs ---------------------------------------------------------------------


async def test_commit_and_get_run_round_trip(store: Store) -> None:
    run = PipelineRun("run-1", "build", "h1", state=RunState.RUNNING, created_at=10.0)
    jobs = [new_job({"job_id": j, "key": j, "steps": ["a", "b"]}) for j in ("zeta", "alpha", "mu")]
    jobs[1].state = JobState.PENDING
    rows = [j.to_row() | {"run_id": run.run_id} for j in jobs]
    run_data = run.to_row() | {"labels": ("x", "y")}

    await store.commit(Commit(runs=[run_data], jobs=rows))
    got = await store.get_run("run-1")

    assert got == json_copy(run_data) | {"jobs": json_copy(rows)}
    assert got is not None
    assert [j["job_id"] for j in got["jobs"]] == ["zeta", "alpha", "mu"]  # creation order
    assert got["state"] == "RUNNING" and type(got["state"]) is str
    assert got["labels"] == ["x", "y"]


async def test_stored_rows_are_copies(store: Store) -> None:
    row = run_row("run-1")
    job = job_row("run-1", "j1")
    await store.commit(Commit(runs=[row], jobs=[job]))
    row["state"] = "MUTATED"
    job["state"] = "MUTATED"
    got = await store.get_run("run-1")
    assert got is not None
    got["pipeline"] = "MUTATED"
    got["jobs"][0]["name"] = "MUTATED"

    again = await store.get_run("run-1")
    assert again == run_row("run-1") | {"jobs": [job_row("run-1", "j1")]}


async def test_recommit_replaces_rows_and_keeps_creation_order(store: Store) -> None:
    await store.commit(Commit(runs=[run_row("r")], jobs=[job_row("r", "j2"), job_row("r", "j1")]))
    await store.commit(
        Commit(
            runs=[run_row("r", state="RUNNING")],
            jobs=[job_row("r", "j3"), job_row("r", "j1", state="PENDING", attempt=1)],
        )
    )

    got = await store.get_run("r")
    assert got is not None
    assert got["state"] == "RUNNING"
    assert got["jobs"] == [
        job_row("r", "j2"),
        job_row("r", "j1", state="PENDING", attempt=1),
        job_row("r", "j3"),
    ]
    assert [r["state"] for r in await store.list_runs()] == ["RUNNING"]
    assert await store.list_runs(state="PENDING") == []


async def test_last_row_wins_within_one_batch(store: Store) -> None:
    await store.commit(
        Commit(
            runs=[run_row("r"), run_row("r", state="RUNNING")],
            jobs=[job_row("r", "j1"), job_row("r", "j2"), job_row("r", "j1", state="PENDING")],
        )
    )
    got = await store.get_run("r")
    assert got is not None
    assert got["state"] == "RUNNING"
    assert got["jobs"] == [job_row("r", "j1", state="PENDING"), job_row("r", "j2")]


async def test_creation_order_per_run_when_one_batch_adds_jobs_to_several_runs(
    store: Store,
) -> None:
    await store.commit(Commit(runs=[run_row("a")], jobs=[job_row("a", "a-old")]))
    # Ids sort against creation order, and the two runs' new jobs interleave.
    jobs = [job_row("b", "b9"), job_row("a", "a9"), job_row("b", "b1"), job_row("a", "a1")]
    jobs += [job_row("a", f"a-{i:04d}") for i in reversed(range(700))]  # many, ids descending
    await store.commit(Commit(runs=[run_row("b")], jobs=jobs))
    await store.commit(Commit(jobs=[job_row("a", "a9", state="PENDING"), job_row("b", "b0")]))

    a, b = await store.get_run("a"), await store.get_run("b")
    assert a is not None and b is not None
    expected_a = ["a-old", "a9", "a1"] + [f"a-{i:04d}" for i in reversed(range(700))]
    assert [j["job_id"] for j in a["jobs"]] == expected_a
    assert a["jobs"][1]["state"] == "PENDING"  # replaced in place
    assert [j["job_id"] for j in b["jobs"]] == ["b9", "b1", "b0"]


async def test_get_run_of_unknown_run_is_none(store: Store) -> None:
    assert await store.get_run("nope") is None


async def test_list_runs_newest_first_with_state_filter_and_paging(store: Store) -> None:
    states = ["SUCCEEDED", "FAILED", "RUNNING", "SUCCEEDED", "PENDING", "SUCCEEDED"]
    rows = [run_row(f"run-{i}", created_at=100.0 + i, state=s) for i, s in enumerate(states)]
    await store.commit(Commit(runs=rows[:3]))
    await store.commit(Commit(runs=rows[3:], jobs=[job_row("run-5", "j")]))

    newest_first = list(reversed(rows))
    assert await store.list_runs() == newest_first  # rows only: no "jobs"
    assert await store.list_runs(limit=2) == newest_first[:2]
    assert await store.list_runs(limit=2, offset=2) == newest_first[2:4]
    assert await store.list_runs(limit=10, offset=6) == []
    assert [r["run_id"] for r in await store.list_runs(state="SUCCEEDED")] == [
        "run-5",
        "run-3",
        "run-0",
    ]
    assert [r["run_id"] for r in await store.list_runs(state=RunState.FAILED)] == ["run-1"]
    assert [r["run_id"] for r in await store.list_runs(limit=1, offset=1, state="SUCCEEDED")] == [
        "run-3"
    ]


async def test_resolve_run_id(store: Store) -> None:
    assert await store.resolve_run_id("last") is None
    # The newest run has the smallest id: "last" goes by creation time, not by id.
    ids = {"abc123": 1.0, "abc456": 2.0, "abd789": 3.0, "aaa000": 4.0, "a_c999": 0.5}
    await store.commit(Commit(runs=[run_row(i, created_at=t) for i, t in ids.items()]))

    assert await store.resolve_run_id("abc123") == "abc123"
    assert await store.resolve_run_id("abd") == "abd789"
    assert await store.resolve_run_id("abc4") == "abc456"
    assert await store.resolve_run_id("last") == "aaa000"
    assert await store.resolve_run_id("x") is None
    assert await store.resolve_run_id("") is None
    assert await store.resolve_run_id("ABD") is None  # case-sensitive
    assert await store.resolve_run_id("a_c") == "a_c999"  # '_' is no wildcard
    assert await store.resolve_run_id("a%") is None
    with pytest.raises(AmbiguousRef) as info:
        await store.resolve_run_id("abc")
    assert "abc123" in str(info.value) and "abc456" in str(info.value)
    assert "abd789" not in str(info.value)


# -- the event log ---------------------------------------------------------------------


async def test_events_are_idempotent_by_event_id(store: Store) -> None:
    e1, e2, e3 = job_requested("r", "j1"), job_requested("r", "j2"), run_started("r")
    await store.commit(Commit(events=[e1, e2]))
    await store.commit(Commit(events=[e1, e3, e3]))
    await store.commit(Commit(events=[e2]))

    assert dicts([s.event for s in await store.run_events("r")]) == dicts([e1, e2, e3])
    assert dicts(await store.outbox_pending()) == dicts([e1, e2, e3])


async def test_run_events_in_log_order_filtered_by_correlation_id(store: Store) -> None:
    a1, b1, a2 = run_started("a"), run_started("b"), job_requested("a", "j1")
    a3, b2 = job_requested("a", "j2"), job_requested("b", "j1")
    await store.commit(Commit(events=[a1, b1, a2]))
    await store.commit(Commit(events=[b2, a3]))

    stored = await store.run_events("a")
    assert dicts([s.event for s in stored]) == dicts([a1, a2, a3])
    assert [s.seq for s in stored] == sorted(s.seq for s in stored)
    assert dicts([s.event for s in await store.run_events("b")]) == dicts([b1, b2])
    assert await store.run_events("none") == []
    back = stored[1].event
    assert back.event_id == a2.event_id and back.payload == a2.payload
    assert abs(back.occurred_at - a2.occurred_at) < 1e-5


async def test_events_after_pages_through_the_global_log(store: Store) -> None:
    events = [job_requested(f"r{i % 3}", f"j{i}") for i in range(25)]
    for start in range(0, 25, 5):
        await store.commit(Commit(events=events[start : start + 5]))

    everything = await store.events_after(0, limit=1000)
    assert [s.seq for s in everything] == list(range(1, 26))  # global, from 1
    assert dicts([s.event for s in everything]) == dicts(events)

    pages, cursor = [], 0
    while page := await store.events_after(cursor, limit=10):
        pages.append([s.seq for s in page])
        cursor = page[-1].seq
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    assert [s.seq for s in await store.events_after(23)] == [24, 25]
    assert await store.events_after(25) == []


async def test_log_chunks_stay_out_of_the_event_log_and_outbox(store: Store) -> None:
    chunk = make_event(
        "ci.log.v1.chunk", {"job_id": "j1", "step_id": "s1", "lines": ["hi"]}, correlation_id="r"
    )
    started = run_started("r")
    await store.commit(Commit(events=[chunk, started]))

    assert dicts([s.event for s in await store.run_events("r")]) == dicts([started])
    assert dicts([s.event for s in await store.events_after(0)]) == dicts([started])
    assert dicts(await store.outbox_pending()) == dicts([started])


async def test_specs_are_stored_once(store: Store) -> None:
    spec = {"name": "ci", "jobs": {"build": {"steps": [{"run": "make"}]}}}
    await store.commit(Commit(specs={"h1": spec}))
    await store.commit(Commit(specs={"h1": {"name": "other"}, "h2": {"name": "two"}}))

    assert await store.get_spec("h1") == spec
    assert await store.get_spec("h2") == {"name": "two"}
    assert await store.get_spec("missing") is None


# -- inbox and outbox ------------------------------------------------------------------


async def test_inbox_remembers_processed_keys_per_consumer(store: Store) -> None:
    await store.commit(Commit(inbox=[("sched", "k1"), ("sched", "k2"), ("orch", "k1")]))
    await store.commit(Commit(inbox=[("sched", "k1")]))  # seen twice: still fine

    assert await store.seen("sched", ["k1", "k2", "k3"]) == {"k1", "k2"}
    assert await store.seen("orch", ["k1", "k2"]) == {"k1"}
    assert await store.seen("other", ["k1"]) == set()
    assert await store.seen("sched", []) == set()

    many = [f"key-{i}" for i in range(1200)]  # more than one IN list's worth
    await store.commit(Commit(inbox=[("bulk", k) for k in many[::2]]))
    assert await store.seen("bulk", many) == set(many[::2])


async def test_outbox_pending_and_mark_published(store: Store) -> None:
    events = [job_requested("r", f"j{i}") for i in range(4)]
    await store.commit(Commit(events=events[:3]))
    await store.commit(Commit(events=[events[3]]))

    assert dicts(await store.outbox_pending()) == dicts(events)
    assert dicts(await store.outbox_pending(limit=2)) == dicts(events[:2])

    await store.mark_published([events[0].event_id, events[2].event_id, "unknown"])
    await store.mark_published([])
    assert dicts(await store.outbox_pending()) == dicts([events[1], events[3]])

    await store.commit(Commit(events=[events[0]]))  # a redelivered event is not re-queued
    assert dicts(await store.outbox_pending()) == dicts([events[1], events[3]])
    await store.mark_published([e.event_id for e in events])
    assert await store.outbox_pending() == []
    assert len(await store.events_after(0)) == 4  # publishing never touches the log


# -- logs ------------------------------------------------------------------------------


async def test_logs_append_and_read(store: Store) -> None:
    await store.append_logs([log("r1", "j1", "one"), log("r1", "j2", "two"), log("r2", "j1", "x")])
    await store.append_logs([log("r1", "j1", "three", step=1)])
    await store.append_logs([])

    lines = await store.read_logs("r1")
    assert [line.text for line in lines] == ["one", "two", "three"]
    ids = [line.id for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == 3 and min(ids) > 0
    assert lines[2] == LogLine("r1", "j1", 1, 1, "stdout", 1.5, "three", id=ids[2])

    assert [line.text for line in await store.read_logs("r1", job_id="j1")] == ["one", "three"]
    assert [line.text for line in await store.read_logs("r1", after_id=ids[0])] == [
        "two",
        "three",
    ]
    assert [line.text for line in await store.read_logs("r1", limit=2)] == ["one", "two"]
    assert [line.text for line in await store.read_logs("r1", "j1", after_id=ids[0])] == ["three"]
    assert await store.read_logs("r1", after_id=ids[2]) == []
    assert await store.read_logs("nope") == []


async def test_a_resent_log_chunk_is_not_stored_twice(store: Store) -> None:
    # Several lines of one chunk in one call are all stored.
    await store.append_logs([log("r", "j", "a", chunk="c1"), log("r", "j", "b", chunk="c1")])
    await store.append_logs([log("r", "j", "a", chunk="c1"), log("r", "j", "b", chunk="c1")])
    # One call mixing a re-sent chunk, a new one and lines without a chunk.
    await store.append_logs(
        [
            log("r", "j", "a", chunk="c1"),
            log("r", "j", "c", chunk="c2"),
            log("r", "j", "free"),
            log("r", "j", "b", chunk="c1"),
            log("r", "j", "d", chunk="c2"),
        ]
    )
    await store.append_logs([log("r", "j", "free")])  # no chunk: always stored
    await store.append_logs([log("r", "j", "c", chunk="c2")])

    lines = await store.read_logs("r")
    assert [line.text for line in lines] == ["a", "b", "c", "free", "d", "free"]
    assert all(line.chunk is None for line in lines)  # the key is not read back
    # Chunk keys are per run: another run's chunk c1 is new.
    await store.append_logs([log("other", "j", "x", chunk="c1")])
    assert [line.text for line in await store.read_logs("other")] == ["x"]


async def test_concurrent_resends_of_a_chunk_store_it_once(store: Store) -> None:
    chunk = [log("r", "j", f"line {i}", chunk="c1") for i in range(3)]
    await asyncio.gather(*(store.append_logs(list(chunk)) for _ in range(10)))
    assert [line.text for line in await store.read_logs("r")] == ["line 0", "line 1", "line 2"]


# -- API idempotency records -----------------------------------------------------------


async def test_idempotency_first_writer_wins(store: Store) -> None:
    first = idem("k1", "h1", created_at=100.0)
    assert await store.remember_idempotency(first, not_before=50.0) == first
    # Same key, other body: the stored record comes back, unchanged.
    assert await store.remember_idempotency(idem("k1", "h2", 101.0), not_before=50.0) == first
    assert await store.recall_idempotency("t1", "k1", not_before=50.0) == first

    # Keys are per tenant.
    other = idem("k1", "h3", 102.0, tenant_id="t2")
    assert await store.remember_idempotency(other, not_before=50.0) == other
    assert await store.recall_idempotency("t2", "k1", not_before=50.0) == other
    assert await store.recall_idempotency("t1", "k2", not_before=50.0) is None
    assert await store.recall_idempotency("t3", "k1", not_before=0.0) is None


async def test_idempotency_results_are_copies(store: Store) -> None:
    record = idem("k1", "h1", created_at=100.0)
    stored = await store.remember_idempotency(record, not_before=0.0)
    record.result["status"] = 500
    stored.result["jobs"].append("mutated")
    recalled = await store.recall_idempotency("t1", "k1", not_before=0.0)
    assert recalled is not None
    assert recalled.result == {"run_id": "run-h1", "status": 201, "jobs": ["a", "b"]}


async def test_an_expired_idempotency_record_is_replaced(store: Store) -> None:
    old = idem("k1", "h1", created_at=100.0)
    await store.remember_idempotency(old, not_before=0.0)
    assert await store.recall_idempotency("t1", "k1", not_before=100.0) == old  # inclusive
    assert await store.recall_idempotency("t1", "k1", not_before=100.5) is None

    new = idem("k1", "h2", created_at=300.0)
    assert await store.remember_idempotency(new, not_before=200.0) == new
    assert await store.recall_idempotency("t1", "k1", not_before=200.0) == new
    # ... and the new one is live again: first writer wins from here.
    assert await store.remember_idempotency(idem("k1", "h3", 301.0), not_before=200.0) == new


async def test_purge_idempotency_deletes_records_older_than(store: Store) -> None:
    for i, created_at in enumerate((10.0, 20.0, 30.0)):
        await store.remember_idempotency(idem(f"k{i}", "h", created_at), not_before=0.0)

    assert await store.purge_idempotency(older_than=25.0) == 2
    assert await store.purge_idempotency(older_than=25.0) == 0
    assert await store.recall_idempotency("t1", "k0", not_before=0.0) is None
    assert await store.recall_idempotency("t1", "k1", not_before=0.0) is None
    assert await store.recall_idempotency("t1", "k2", not_before=0.0) == idem("k2", "h", 30.0)
    # A purged key can be used again.
    again = idem("k0", "h9", 40.0)
    assert await store.remember_idempotency(again, not_before=25.0) == again


async def test_concurrent_remember_idempotency_has_one_winner(store: Store) -> None:
    candidates = [idem("k1", f"h{i}", created_at=100.0 + i) for i in range(20)]
    got = await asyncio.gather(
        *(store.remember_idempotency(c, not_before=50.0) for c in candidates)
    )
    assert got[0] in candidates
    assert all(g == got[0] for g in got)
    assert await store.recall_idempotency("t1", "k1", not_before=50.0) == got[0]


async def test_concurrent_remember_idempotency_over_an_expired_record(store: Store) -> None:
    await store.remember_idempotency(idem("k1", "old", created_at=10.0), not_before=0.0)
    candidates = [idem("k1", f"h{i}", created_at=100.0) for i in range(20)]
    got = await asyncio.gather(
        *(store.remember_idempotency(c, not_before=50.0) for c in candidates)
    )
    assert got[0] in candidates
    assert all(g == got[0] for g in got)


# -- API tokens ------------------------------------------------------------------------


async def test_put_token_and_find_it_by_hash(store: Store) -> None:
    full = TokenRecord(
        "tok-agent",
        "hash-agent",
        "node-7",
        ("agent:poll", "agent:report"),
        tenant_id="acme",
        kind="agent",
        node_id="node-7",
        created_at=10.0,
        expires_at=1000.0,
    )
    plain = TokenRecord("tok-user", "hash-user", "alice", ())
    await store.put_token(full)
    await store.put_token(plain)

    assert await store.token_by_hash("hash-agent") == full
    got = await store.token_by_hash("hash-user")
    assert got == plain
    assert got is not None and got.scopes == () and got.tenant_id == "default"
    assert got.kind == "user" and got.node_id is None and got.revoked_at is None
    assert await store.token_by_hash("tok-agent") is None  # by hash, not by id
    assert await store.token_by_hash("unknown") is None


async def test_put_token_replaces_by_token_id(store: Store) -> None:
    await store.put_token(token("t1", 1.0))
    rotated = token("t1", 1.0, token_hash="hash-new", scopes=("runs:write",))
    await store.put_token(rotated)

    assert await store.token_by_hash("hash-t1") is None
    assert await store.token_by_hash("hash-new") == rotated
    assert await store.list_tokens() == [rotated]


async def test_two_tokens_cannot_share_a_hash(store: Store) -> None:
    await store.put_token(token("t1", 1.0))
    with pytest.raises((sa_exc.IntegrityError, ValueError)):
        await store.put_token(token("t2", 2.0, token_hash="hash-t1"))
    assert await store.token_by_hash("hash-t1") == token("t1", 1.0)
    assert [t.token_id for t in await store.list_tokens()] == ["t1"]


async def test_list_tokens_oldest_first_with_kind_filter(store: Store) -> None:
    kinds = {"b": ("user", 3.0), "a": ("admin", 1.0), "c": ("agent", 2.0), "d": ("user", 0.5)}
    for token_id, (kind, created_at) in kinds.items():
        await store.put_token(token(token_id, created_at, kind=kind))

    assert [t.token_id for t in await store.list_tokens()] == ["d", "a", "c", "b"]
    assert [t.token_id for t in await store.list_tokens(kind="user")] == ["d", "b"]
    assert await store.list_tokens(kind="agent") == [token("c", 2.0, kind="agent")]
    assert await store.list_tokens(kind="registration") == []


async def test_revoke_token_is_idempotent(store: Store) -> None:
    await store.put_token(token("t1", 1.0))
    await store.put_token(token("t2", 2.0))

    assert await store.revoke_token("unknown", at=5.0) is False
    assert await store.revoke_token("t1", at=5.0) is True
    assert await store.revoke_token("t1", at=9.0) is True  # again: the first time stays

    revoked = await store.token_by_hash("hash-t1")
    assert revoked == token("t1", 1.0, revoked_at=5.0)
    assert await store.token_by_hash("hash-t2") == token("t2", 2.0)  # others untouched
    assert [t.revoked_at for t in await store.list_tokens()] == [5.0, None]


# -- transactions ----------------------------------------------------------------------


async def _assert_nothing_of_the_failed_batch(store: Store, kept: list[Event]) -> None:
    assert dicts([s.event for s in await store.events_after(0)]) == dicts(kept)
    assert dicts(await store.outbox_pending()) == dicts(kept)
    assert await store.get_run("new") is None
    assert await store.get_run("old") == run_row("old") | {"jobs": [job_row("old", "j0")]}
    assert [r["run_id"] for r in await store.list_runs()] == ["old"]
    assert await store.get_spec("h-new") is None
    assert await store.seen("c", ["k-new"]) == set()


def _failing_batch(bad_job: dict[str, Any]) -> Commit:
    return Commit(
        events=[run_started("new"), job_requested("new", "j1"), job_requested("new", "j2")],
        runs=[run_row("new"), run_row("old", state="RUNNING")],
        jobs=[job_row("new", "j1"), job_row("old", "j0", state="PENDING"), bad_job],
        specs={"h-new": {"name": "new"}},
        inbox=[("c", "k-new")],
    )


async def test_a_failed_commit_leaves_nothing_behind(store: Store) -> None:
    kept = [run_started("old")]
    await store.commit(Commit(events=kept, runs=[run_row("old")], jobs=[job_row("old", "j0")]))

    # The last job row cannot be stored (JSON has no object()): the SQL adapter fails
    # after it has inserted the events, outbox rows and runs of the batch.
    bad = job_row("new", "j2") | {"outputs": {"x": object()}}
    with pytest.raises(TypeError):
        await store.commit(_failing_batch(bad))
    await _assert_nothing_of_the_failed_batch(store, kept)

    # The store still works after the rollback.
    await store.commit(Commit(events=[run_started("new")], runs=[run_row("new")]))
    assert await store.get_run("new") == run_row("new") | {"jobs": []}


async def test_a_constraint_violation_rolls_back_the_whole_batch(store: Store) -> None:
    kept = [run_started("old")]
    await store.commit(Commit(events=kept, runs=[run_row("old")], jobs=[job_row("old", "j0")]))

    # A job without an id: the database refuses it (NOT NULL), the memory store too.
    bad = job_row("new", "j2") | {"job_id": None}
    with pytest.raises((sa_exc.IntegrityError, ValueError)):
        await store.commit(_failing_batch(bad))
    await _assert_nothing_of_the_failed_batch(store, kept)


async def test_concurrent_commits_all_land(store: Store) -> None:
    async def one(i: int) -> None:
        run_id = f"run-{i:03d}"
        await store.commit(
            Commit(
                events=[
                    run_started(run_id),
                    job_requested(run_id, "a"),
                    job_requested(run_id, "b"),
                ],
                runs=[run_row(run_id, created_at=float(i))],
                jobs=[job_row(run_id, f"{run_id}-a"), job_row(run_id, f"{run_id}-b")],
                inbox=[("c", run_id)],
            )
        )
        await store.append_logs([log(run_id, "a", f"line {i}")])
        assert await store.get_run(run_id) is not None  # reads interleave with writes

    await asyncio.gather(*(one(i) for i in range(60)))

    runs = await store.list_runs(limit=100)
    assert sorted(r["run_id"] for r in runs) == [f"run-{i:03d}" for i in range(60)]
    stored = await store.events_after(0, limit=1000)
    assert [s.seq for s in stored] == list(range(1, 181))
    assert len(await store.outbox_pending(limit=1000)) == 180
    assert len(await store.seen("c", [f"run-{i:03d}" for i in range(60)])) == 60
    for i in (0, 59):
        got = await store.get_run(f"run-{i:03d}")
        assert got is not None and len(got["jobs"]) == 2
        assert len(await store.read_logs(f"run-{i:03d}")) == 1


async def test_concurrent_commits_that_fail_leave_nothing_and_spoil_nothing(store: Store) -> None:
    """Many tasks commit at once; every third batch fails. The others all land, whole."""

    def batch(i: int) -> Commit:
        run_id = f"run-{i:03d}"
        jobs = [job_row(run_id, f"{run_id}-a"), job_row(run_id, f"{run_id}-b")]
        if i % 3 == 0:
            jobs.append(job_row(run_id, f"{run_id}-c") | {"job_id": None})  # NOT NULL
        return Commit(
            events=[run_started(run_id), job_requested(run_id, "a")],
            runs=[run_row(run_id, created_at=float(i))],
            jobs=jobs,
            specs={f"h-{i}": {"name": run_id}},
            inbox=[("c", run_id)],
        )

    outcomes = await asyncio.gather(
        *(store.commit(batch(i)) for i in range(90)), return_exceptions=True
    )

    failed = {i for i, outcome in enumerate(outcomes) if outcome is not None}
    assert failed == set(range(0, 90, 3))
    assert all(isinstance(outcomes[i], sa_exc.IntegrityError | ValueError) for i in failed)
    kept = [f"run-{i:03d}" for i in range(90) if i not in failed]
    assert sorted(r["run_id"] for r in await store.list_runs(limit=200)) == kept
    stored = await store.events_after(0, limit=1000)
    assert sorted({s.event.correlation_id for s in stored}) == kept
    assert [s.seq for s in stored] == sorted(s.seq for s in stored)
    assert len(stored) == len(await store.outbox_pending(limit=1000)) == 2 * len(kept)
    assert await store.seen("c", [f"run-{i:03d}" for i in range(90)]) == set(kept)
    for i in (0, 1, 2, 3):
        name = f"run-{i:03d}"
        run = await store.get_run(name)
        assert (run is None) == (i in failed)
        assert await store.get_spec(f"h-{i}") == (None if i in failed else {"name": name})
        if run is not None:
            assert [j["job_id"] for j in run["jobs"]] == [f"{name}-a", f"{name}-b"]


async def test_a_cancelled_commit_is_all_or_nothing(store: Store) -> None:
    """A caller may be cancelled while its commit is in flight: the batch is then either
    stored whole or not at all, and the store keeps working."""
    for i in range(20):
        rid = f"run-{i}"
        task = asyncio.ensure_future(
            store.commit(
                Commit(
                    events=[run_started(rid), job_requested(rid, "a")],
                    runs=[run_row(rid)],
                    jobs=[job_row(rid, f"{rid}-a"), job_row(rid, f"{rid}-b")],
                )
            )
        )
        for _ in range(i % 4):
            await asyncio.sleep(0)  # cancel at different points of the commit
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        run = await store.get_run(rid)
        events = await store.run_events(rid)
        if run is None:
            assert events == []
        else:
            assert len(run["jobs"]) == 2 and len(events) == 2
    await store.commit(Commit(events=[run_started("after")], runs=[run_row("after")]))
    assert await store.get_run("after") == run_row("after") | {"jobs": []}


async def test_an_empty_commit_is_a_no_op(store: Store) -> None:
    await store.commit(Commit())
    assert await store.events_after(0) == []
    assert await store.list_runs() == []


# -- durable adapters ------------------------------------------------------------------


@pytest.mark.parametrize("adapter", DURABLE, indirect=True)
async def test_reopened_store_finds_everything(make_store: StoreFactory) -> None:
    events = [run_started("r"), job_requested("r", "j1")]
    first = make_store()
    await first.open()
    await first.commit(
        Commit(
            events=events,
            runs=[run_row("r")],
            jobs=[job_row("r", "j1")],
            specs={"h1": {"name": "ci"}},
            inbox=[("c", "k")],
        )
    )
    await first.mark_published([events[0].event_id])
    await first.append_logs([log("r", "j1", "hello")])
    await first.close()

    second = make_store()
    await second.open()
    try:
        assert await second.get_run("r") == run_row("r") | {"jobs": [job_row("r", "j1")]}
        assert dicts([s.event for s in await second.run_events("r")]) == dicts(events)
        assert dicts(await second.outbox_pending()) == dicts(events[1:])
        assert await second.get_spec("h1") == {"name": "ci"}
        assert await second.seen("c", ["k"]) == {"k"}
        assert [line.text for line in await second.read_logs("r")] == ["hello"]
        assert await second.resolve_run_id("last") == "r"

        # Sequences carry on where they were.
        await second.commit(Commit(events=[job_requested("r", "j2")]))
        await second.append_logs([log("r", "j1", "again")])
        assert [s.seq for s in await second.events_after(0)] == [1, 2, 3]
        ids = [line.id for line in await second.read_logs("r")]
        assert ids[1] > ids[0]
    finally:
        await second.close()


@pytest.mark.parametrize("adapter", DURABLE, indirect=True)
async def test_reopened_store_keeps_idempotency_tokens_and_chunk_keys(
    make_store: StoreFactory,
) -> None:
    record = idem("k1", "h1", created_at=100.0)
    first = make_store()
    await first.open()
    await first.remember_idempotency(record, not_before=0.0)
    await first.put_token(token("t1", 1.0))
    await first.revoke_token("t1", at=2.0)
    await first.append_logs([log("r", "j", "a", chunk="c1")])
    await first.close()

    second = make_store()
    await second.open()
    try:
        assert await second.recall_idempotency("t1", "k1", not_before=50.0) == record
        assert await second.remember_idempotency(idem("k1", "h2", 101.0), not_before=50.0) == (
            record
        )
        assert await second.token_by_hash("hash-t1") == token("t1", 1.0, revoked_at=2.0)
        await second.append_logs([log("r", "j", "a", chunk="c1")])  # re-sent after a restart
        assert [line.text for line in await second.read_logs("r")] == ["a"]
    finally:
        await second.close()


@pytest.mark.parametrize("adapter", SQLITE, indirect=True)
async def test_two_stores_on_one_sqlite_file_both_write(make_store: StoreFactory) -> None:
    """Two connection pools on one file (as two processes would be): no 'database is locked'."""
    stores = [make_store(), make_store()]
    for s in stores:
        await s.open()
    try:

        async def write(s: Store, n: int) -> None:
            for i in range(15):
                run_id = f"s{n}-{i}"
                await s.commit(Commit(events=[run_started(run_id)], runs=[run_row(run_id)]))

        await asyncio.gather(*(write(s, n) for n, s in enumerate(stores)))
        assert len(await stores[0].list_runs(limit=100)) == 30
        assert [s.seq for s in await stores[1].events_after(0)] == list(range(1, 31))
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("adapter", SQLITE, indirect=True)
async def test_sqlite_connection_settings(store: Store) -> None:
    assert isinstance(store, SqlStore)

    def pragmas(conn: sa.Connection) -> dict[str, Any]:
        names = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        return {name: conn.execute(sa.text(f"PRAGMA {name}")).scalar() for name in names}

    # On a connection the store reads with: the adapter keeps no public handle on them.
    values = await store._read(pragmas)
    assert values == {
        "journal_mode": "wal",
        "synchronous": 1,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


# -- leadership and fencing -----------------------------------------------------------


async def test_each_claim_raises_the_term_and_names_the_leader(store: Store) -> None:
    assert await store.leader() is None
    first = await store.claim_leadership("a", "http://a:1")
    second = await store.claim_leadership("b", "http://b:1")
    assert second > first >= 1
    leader = await store.leader()
    assert leader is not None
    assert (leader.term, leader.holder, leader.url) == (second, "b", "http://b:1")


async def test_a_leader_keeps_its_term_until_another_claims(store: Store) -> None:
    term = await store.claim_leadership("a", "http://a:1")
    assert await store.claim_leadership("a", "http://a:1", keep=term) == term
    await store.claim_leadership("b", "http://b:1")
    with pytest.raises(Deposed):
        await store.claim_leadership("a", "http://a:1", keep=term)


async def test_a_fenced_commit_of_a_deposed_leader_writes_nothing(store: Store) -> None:
    old = await store.claim_leadership("a", "http://a:1")
    await store.commit(Commit(events=[run_started("r1")], runs=[run_row("r1")], fence=old))
    new = await store.claim_leadership("b", "http://b:1")
    with pytest.raises(Deposed, match="no longer leads"):
        await store.commit(Commit(events=[run_started("r2")], runs=[run_row("r2")], fence=old))
    assert await store.get_run("r2") is None
    assert [s.event.correlation_id for s in await store.events_after(0)] == ["r1"]
    await store.commit(Commit(events=[run_started("r3")], runs=[run_row("r3")], fence=new))
    assert await store.get_run("r3") is not None


async def test_claims_race_commits_without_a_lost_or_late_write(store: Store) -> None:
    """Every fenced commit either lands before the next claim or is refused."""
    term = await store.claim_leadership("a", "http://a:1")
    landed: list[str] = []

    async def commit(i: int) -> None:
        run_id = f"r{i}"
        try:
            await store.commit(Commit(events=[run_started(run_id)], fence=term))
        except Deposed:
            return
        landed.append(run_id)

    tasks = [asyncio.create_task(commit(i)) for i in range(30)]
    await asyncio.sleep(0)
    await store.claim_leadership("b", "http://b:1")
    seen_at_claim = {s.event.correlation_id for s in await store.events_after(0)}
    await asyncio.gather(*tasks)
    logged = {s.event.correlation_id for s in await store.events_after(0)}
    # Nothing the deposed leader wrote became visible after the new leader's claim.
    assert logged == seen_at_claim == set(landed)


@pytest.mark.parametrize("adapter", DURABLE, indirect=True)
async def test_leadership_survives_a_restart(make_store: StoreFactory) -> None:
    s = make_store()
    await s.open()
    term = await s.claim_leadership("a", "http://a:1")
    await s.close()
    s = make_store()
    await s.open()
    try:
        leader = await s.leader()
        assert leader is not None and leader.term == term
    finally:
        await s.close()
