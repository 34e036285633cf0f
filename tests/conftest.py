"""Fixtures every test directory may use: a real PostgreSQL server (tests/postgres.py);
CI's guard against silent skips (tests/strict_skips.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, postgres_server, why_unavailable

pytest_plugins = ["tests.strict_skips"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway cluster for the session; skipped (with the reason) only when the
    server binaries are missing."""
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of that server, dropped afterwards."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)
