"""Integration fixtures: the embedded App on a temp FAENA_HOME with real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from embedded_harness import Harness
from remote_harness import Proc

from faena.app import App
from faena.settings import Settings


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(home=tmp_path / "home", jobs=2)
    app = App(settings)
    await app.start()
    h = Harness(app, tmp_path)
    await app.bus.subscribe("ci.>", h.collect, durable="test")
    try:
        yield h
    finally:
        await app.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts (remote_harness.start); stopped after it, last first."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()
