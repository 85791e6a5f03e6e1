"""The ``postgres`` fixture: one real PostgreSQL server per test session, a fresh database
per test. Enabled in a test module with ``pytest_plugins = ["tests.support.postgres_fixtures"]``."""

from __future__ import annotations

import pytest

from haidang.testbed.postgres import PostgresServer, fresh_database


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres(postgres_server) -> str:
    """The URL of a new, empty PostgreSQL database (``postgresql://…``)."""
    return fresh_database(postgres_server)
