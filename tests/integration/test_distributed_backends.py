"""The whole system on the distributed backends: PostgreSQL for state, NATS JetStream for
events (real servers from tests/postgres.py and tests/nats_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
from api_server import served

from faena.app import App, build_server
from faena.bus.nats import JetStreamBus, encode
from faena.domain.states import RunState
from faena.settings import Settings
from faena.spec import parse_pipeline
from nats_server import NatsServer
from postgres import PostgresServer

DAG = """
name: distributed
jobs:
  build:
    outputs: [version]
    steps:
      - id: v
        run: echo "version=2.0.$((40 + 2))" >> "$FAENA_OUTPUT"; echo built
  test:
    needs: build
    strategy:
      matrix:
        shard: [1, 2, 3]
    steps:
      - run: echo "testing ${{ needs.build.outputs.version }} shard ${{ matrix.shard }}"
  gate:
    needs: test
    steps:
      - run: while [ ! -e "$GATE" ]; do sleep 0.05; done; echo through the gate
"""


def settings(tmp_path: Path, postgres_url: str, nats: NatsServer) -> Settings:
    return Settings(home=tmp_path / "home", jobs=2, database_url=postgres_url,
                    bus_url=nats.url)  # fmt: skip


async def gate_reached(app: App, run_id: str) -> None:
    """Wait until the run's last job runs, blocked at its gate."""
    async with asyncio.timeout(60):
        while True:
            run = app.orchestrator.snapshot(run_id)
            assert run is not None
            if any(j.name == "gate" and j.state.value == "RUNNING" for j in run.jobs.values()):
                return
            await asyncio.sleep(0.05)


async def through_an_outage(app: App, gate: Path, outage: Callable[[], Awaitable[None]]) -> str:
    """Run DAG with ``outage`` while its last job waits at the gate; the run must succeed."""
    spec = parse_pipeline(DAG.replace("$GATE", str(gate)), filename="faena.yml")
    run_id = await app.orchestrator.submit(spec)
    await gate_reached(app, run_id)
    await outage()
    gate.touch()
    async with asyncio.timeout(60):
        final = await app.orchestrator.wait(run_id)
    assert final.state is RunState.SUCCEEDED
    return run_id


async def lines_of(app: App, run_id: str) -> list[str]:
    return [ln.text for ln in await app.store.read_logs(run_id)]


async def test_a_run_survives_a_nats_restart_on_postgres(
    tmp_path: Path, postgres_url: str, nats_server: NatsServer
) -> None:
    app = App(settings(tmp_path, postgres_url, nats_server))
    await app.start()
    try:

        async def outage() -> None:
            # NATS goes away with the run half done; the gate job's end is published while
            # it is down (the outbox keeps it) or after (the client reconnects).
            nats_server.restart(kill=True)

        run_id = await through_an_outage(app, tmp_path / "gate", outage)
        texts = await lines_of(app, run_id)
        assert "built" in texts and "through the gate" in texts
        assert sorted(t for t in texts if t.startswith("testing")) == [
            f"testing 2.0.42 shard {n}" for n in (1, 2, 3)
        ]
        # The event log in PostgreSQL holds the whole run, once.
        stored = await app.store.run_events(run_id)
        keys = [s.event.idempotency_key for s in stored]
        assert len(keys) == len(set(keys))
        assert stored[-1].event.subject == "ci.run.v1.completed"
    finally:
        await app.close()
    # Everything committed was published: nothing waits in the outbox.
    again = App(settings(tmp_path, postgres_url, nats_server))
    await again.store.open()
    try:
        assert await again.store.outbox_pending() == []
    finally:
        await again.store.close()


async def test_a_run_survives_a_postgres_restart(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer, nats_server: NatsServer
) -> None:
    app = App(settings(tmp_path, postgres_url, nats_server))
    await app.start()
    try:

        async def outage() -> None:
            # The database goes away for a second while the last job ends: its reports
            # wait in the orchestrator's retries (ORC-INFRA, 7 attempts with back-off).
            await asyncio.to_thread(postgres_server.restart, 1.0)

        run_id = await through_an_outage(app, tmp_path / "gate", outage)
        stored = await app.store.get_run(run_id)
        assert stored is not None and stored["state"] == "SUCCEEDED"
        assert "through the gate" in await lines_of(app, run_id)
    finally:
        await app.close()


async def test_readyz_follows_the_database(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer, nats_server: NatsServer
) -> None:
    api, _, _ = build_server(
        replace(settings(tmp_path, postgres_url, nats_server), advertise_url="http://127.0.0.1:1"),
        "ready-token",
        with_agent=False,
    )
    async with served(api) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/readyz")).status_code == 200
        restart = asyncio.create_task(asyncio.to_thread(postgres_server.restart, 2.0))
        seen: list[int] = []
        while not restart.done():
            seen.append((await client.get("/readyz")).status_code)
            await asyncio.sleep(0.1)
        await restart
        assert 503 in seen  # not ready while the database is away
        async with asyncio.timeout(30):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.1)


async def test_every_event_delivered_again_changes_nothing(
    tmp_path: Path, postgres_url: str, nats_server: NatsServer
) -> None:
    """A run's whole history arrives a second time, past NATS's de-duplication (as after
    its window, or a consumer's lost acks): no job runs again, nothing is logged twice."""
    ran = tmp_path / "ran"
    spec = parse_pipeline(
        f"name: twice\njobs:\n  a:\n    steps: [{{run: 'echo a >> {ran}'}}]\n"
        f"  b:\n    needs: a\n    steps: [{{run: 'echo b >> {ran}'}}]\n",
        filename="faena.yml",
    )
    first = App(settings(tmp_path, postgres_url, nats_server))
    await first.start()
    try:
        run_id = await first.orchestrator.submit(spec)
        async with asyncio.timeout(60):
            assert (await first.orchestrator.wait(run_id)).state is RunState.SUCCEEDED
    finally:
        await first.close()
    # A new process (a restarted or new leader): its consumers' in-memory inboxes are
    # empty, so only the state they check can keep the old events from acting again.
    app = App(settings(tmp_path, postgres_url, nats_server))
    await app.start()
    try:
        before = [s.event.event_id for s in await app.store.run_events(run_id)]
        before_events = [s.event.subject for s in await app.store.run_events(run_id)]
        bus = app.bus
        assert isinstance(bus, JetStreamBus)
        seen = (await bus.js.consumer_info(bus.stream, "scheduler")).delivered.consumer_seq
        for stored in await app.store.run_events(run_id):
            e = stored.event
            await bus.js.publish(
                e.subject, encode(e), headers={"Nats-Msg-Id": f"again-{e.event_id}"}
            )
        # Every consumer of this process has handled (acknowledged) all of them.
        async with asyncio.timeout(30):
            for durable in ("scheduler", "dispatch", "agent"):
                while True:
                    info = await bus.js.consumer_info(bus.stream, durable)
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        break
                    await asyncio.sleep(0.05)
        info = await bus.js.consumer_info(bus.stream, "scheduler")
        job_events = sum(1 for e in before_events if e.startswith("ci.job."))
        assert info.delivered.consumer_seq - seen >= job_events  # they did arrive
        assert ran.read_text().split() == ["a", "b"]
        assert [s.event.event_id for s in await app.store.run_events(run_id)] == before
        stored_run = await app.store.get_run(run_id)
        assert stored_run is not None and stored_run["state"] == "SUCCEEDED"
    finally:
        await app.close()
