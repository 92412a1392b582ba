"""Integration fixtures: the embedded App on a temp FAENA_HOME with real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from embedded_harness import Harness

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
