"""service/feedback/postgres.py's durability guard: a database configured with
``synchronous_commit = off`` is raised to ``local`` on every connection of the store's pool.

With ``off``, PostgreSQL answers COMMIT before the WAL is flushed, so a record the service
answered 200 for could vanish in a crash of the database server: the store promises
otherwise (its docstring, and the README's teacher-record section). The throwaway server of
tests/postgres.py runs with the default (``on``), so these tests set ``off`` on one
database (or on the role within it) and look at the store's own pooled connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import Any

import psycopg
import pytest

from service.feedback import PostgresFeedbackStore, TeacherRecord, open_store
from service.feedback import postgres as postgres_backend
from tests.postgres import USER, PostgresServer

# Where the setting comes from: the database's own default, or the role's in that database
# (both are what an operator might have set; a server-wide ``off`` would reach every test
# sharing the session's server).
SCOPES = {
    "database": "ALTER DATABASE {database} SET synchronous_commit = {level}",
    "role": "ALTER ROLE {user} IN DATABASE {database} SET synchronous_commit = {level}",
}


def record() -> TeacherRecord:
    return TeacherRecord(
        model_name="attention",
        model_version="1",
        label="bag",
        label_id=8,
        perception_class_id=8,
        attention_class_id=8,
        corrected_class_id=8,
        image=b"\x89PNG image bytes",
        edited_map=b"edited",
        model_map=b"own",
        map_height=16,
        map_width=16,
    )


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def configure(postgres: PostgresServer, url: str, scope: str, level: str) -> None:
    """Set ``synchronous_commit = level`` for new sessions of ``url``'s database."""
    statement = SCOPES[scope].format(database=database_name(url), user=USER, level=level)
    with postgres.admin() as admin:
        admin.execute(statement)  # type: ignore[arg-type]


def plain_level(url: str) -> str:
    """``synchronous_commit`` of a fresh session that is not the store's."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0])


def pooled_levels(store: PostgresFeedbackStore) -> list[str]:
    """``synchronous_commit`` of as many pooled connections as the pool will hold, all
    checked out at once (so the pool has to open and configure each of them)."""
    pool = store._pool
    levels: list[str] = []
    with ExitStack() as stack:
        for _ in range(postgres_backend.POOL_MAX_SIZE):
            connection = stack.enter_context(pool.connection())
            row = connection.execute("SHOW synchronous_commit").fetchone()
            assert row is not None
            levels.append(str(row[0]))
            connection.rollback()
    return levels


def spy_on_connections(store: PostgresFeedbackStore, seen: list[str]) -> None:
    """Record ``synchronous_commit`` of each connection the store itself draws, read on
    that connection right after the store's own statements (its transaction committed)."""
    drawn: Callable[[], Any] = store._connection

    @contextmanager
    def spying() -> Iterator[psycopg.Connection[Any]]:
        with drawn() as connection:
            yield connection
            row = connection.execute("SHOW synchronous_commit").fetchone()
            assert row is not None
            seen.append(str(row[0]))
            connection.rollback()

    store._connection = spying  # type: ignore[method-assign]


@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_a_database_with_synchronous_commit_off_is_raised_to_local_on_every_pooled_connection(
    postgres: PostgresServer, postgres_url: str, scope: str
) -> None:
    """Guards ``_configure``'s raise of ``off`` to ``local``: without it, a record answered
    200 is acknowledged before its WAL reaches the disk and a crash of the database server
    can lose it. First checks that ``off`` really reaches a plain session of this database
    (else the test would prove nothing), then that every connection of the store's pool, and
    the very connection an ``add`` committed on, runs with ``local``."""
    configure(postgres, postgres_url, scope, "off")
    assert plain_level(postgres_url) == "off"
    store = open_store(postgres_url)
    assert isinstance(store, PostgresFeedbackStore)
    with closing(store):
        store.open()
        assert pooled_levels(store) == ["local"] * postgres_backend.POOL_MAX_SIZE
        seen: list[str] = []
        spy_on_connections(store, seen)
        stored = store.add(record())
        assert seen and set(seen) == {"local"}, seen
        assert [r.id for r in store.records()] == [stored]
    # The raise is the store's own sessions' business: the database's setting is untouched.
    assert plain_level(postgres_url) == "off"


@pytest.mark.parametrize("level", ["on", "remote_apply"])
def test_a_stronger_synchronous_commit_is_kept_not_lowered_to_local(
    postgres: PostgresServer, postgres_url: str, level: str
) -> None:
    """``local`` is a floor, not a value imposed on every session: a database that asks for
    more (``on``, or waiting for synchronous standbys to apply) must keep it, or setting up
    synchronous replication would silently stop protecting the teacher records from the
    loss of the primary."""
    configure(postgres, postgres_url, "database", level)
    assert plain_level(postgres_url) == level
    with closing(open_store(postgres_url)) as store:
        assert isinstance(store, PostgresFeedbackStore)
        store.open()
        assert pooled_levels(store) == [level] * postgres_backend.POOL_MAX_SIZE
