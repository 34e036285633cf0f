"""Teacher records in PostgreSQL: one store shared by every replica (psycopg 3 + a pool).

Each ``add`` is one transaction; ``COMMIT`` returns only once the server has flushed it to
its WAL (``synchronous_commit`` at least ``local``: a server configured with ``off`` is
raised to ``local`` for this store's sessions), so a record answered 200 survives a crash
of the service, of the database server, or of both. Replicas that start together migrate
the schema once: the migrations run under a transaction-scoped advisory lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from service.feedback.base import COLUMNS, COUNT_RECORDS, FeedbackStore
from service.feedback.migrations import MIGRATIONS, Migration

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key held while migrating; any constant unlikely to clash with other
# applications sharing the database (the ASCII of "vistchr1" as a big-endian int64).
MIGRATION_LOCK_KEY = 0x7669737463687231
# Held by an insert while it counts the records against feedback_max_records, so that
# concurrent inserts (any replica) take turns and the limit is never passed ("vistchr2").
RECORD_LIMIT_LOCK_KEY = 0x7669737463687232
# How long an insert waits for that lock (PostgreSQL's lock_timeout syntax): as long as a
# request waits for a pooled connection.
RECORD_LIMIT_LOCK_TIMEOUT = "5s"
# Connections per process: requests save from worker threads, a few at a time.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4
# Seconds a request waits for a connection (database down: the pool keeps reconnecting in
# the background and the request gets a 503 after this long).
POOL_TIMEOUT_S = 5.0
# Seconds to establish one connection.
CONNECT_TIMEOUT_S = 5


def application_name(pid: int | None = None) -> str:
    """How this process's sessions show in ``pg_stat_activity``: host (the pod) and pid."""
    return f"vision-service {socket.gethostname()} {pid or os.getpid()}"[:63]


def redact(url: str) -> str:
    """``url`` with its password, in the address or as libpq's ``?password=`` parameter,
    replaced by ``***`` (safe for logs and model cards)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL (an argument list is redacted word by word)
        return url
    changed = False
    if password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:***@{host}")
        changed = True
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        hidden = [(name, "***" if name == "password" else value) for name, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
        changed = True
    return urlunsplit(parts) if changed else url


def _configure(connection: psycopg.Connection[Any]) -> None:
    """Each new pooled connection: make sure a commit is durable before it returns, and
    that its transactions are READ COMMITTED whatever the database's default. Under
    REPEATABLE READ a transaction's snapshot is taken at its first statement, the advisory
    lock, before the wait: what the lock's previous holder committed stays unseen, so a
    second replica re-ran a migration the first had applied, and inserts counted too few
    records against FEEDBACK_MAX_RECORDS (7-9 of a limit of 5 in a review's probe)."""
    connection.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    level = connection.execute("SHOW synchronous_commit").fetchone()
    if level is not None and level[0] == "off":
        connection.execute("SET synchronous_commit = local")
    connection.commit()


class PostgresFeedbackStore(FeedbackStore):
    """The database at ``url`` (``postgresql://user:password@host:port/dbname?...``)."""

    backend: ClassVar[str] = "postgresql"
    placeholder: ClassVar[str] = "%s"
    failures: ClassVar[tuple[type[BaseException], ...]] = (psycopg.Error, OSError)

    def __init__(
        self,
        url: str,
        migrations: Sequence[Migration] = MIGRATIONS,
        max_records: int | None = None,
    ) -> None:
        super().__init__(redact(url), migrations, max_records)
        self._pool = ConnectionPool(
            url,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_TIMEOUT_S,
            open=False,
            configure=_configure,
            # A connection the server dropped (restart, failover) is replaced at checkout
            # rather than failing the request that drew it.
            check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": application_name()},
            name="teacher-records",
        )

    def open(self) -> list[int]:
        if self._pool.closed:
            # Connect in the background: an unreachable database must not hang the start.
            self._pool.open(wait=False)
        return super().open()

    def close(self) -> None:
        self._pool.close(timeout=POOL_TIMEOUT_S)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, psycopg.Error) and exc.sqlstate:  # the server's own words
            return f"{exc.diag.message_primary or type(exc).__name__} (SQLSTATE {exc.sqlstate})"
        if isinstance(exc, psycopg.OperationalError):  # connecting: the message names hosts
            # The pool's own log lines (psycopg.pool) carry libpq's message; this detail
            # must not (host names, paths), but it must not send an operator to the network
            # alone when TLS or authentication failed.
            return (
                "the database server cannot be reached or refused the connection "
                "(network, TLS or authentication; the service's log names the cause)"
            )
        return super()._reason(exc)

    def _connection(self) -> Any:
        if self._pool.closed and not self._migrated:
            self._pool.open(wait=False)
        return self._pool.connection()

    # ---- migrations ----------------------------------------------------------------------
    def _applied_versions(self) -> set[int]:
        with self._connection() as connection:
            return _versions(connection)

    def _apply_locked(self, migrations: Sequence[Migration]) -> list[int]:
        with self._connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            return self._run_pending(connection.execute, _versions(connection), migrations)

    # ---- the records ---------------------------------------------------------------------
    def _insert(self, row: dict[str, Any]) -> None:
        placeholders = ", ".join(f"%({name})s" for name in COLUMNS)
        query = f"INSERT INTO teacher_records ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        with self._connection() as connection, connection.transaction():
            if self.max_records is not None:
                # READ COMMITTED (_configure), so the count after the lock sees every insert
                # committed before it. A writer stuck holding the lock costs the others a
                # 503 after RECORD_LIMIT_LOCK_TIMEOUT, not a wait without end.
                connection.execute(f"SET LOCAL lock_timeout = '{RECORD_LIMIT_LOCK_TIMEOUT}'")
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (RECORD_LIMIT_LOCK_KEY,))
                (count,) = connection.execute(COUNT_RECORDS).fetchone()
                self.refuse_if_full(int(count))
            connection.execute(query, row)

    def _fetch(self, *queries: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        with self._connection() as connection:
            return [connection.execute(query, params).fetchall() for query, params in queries]

    def _plain(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        created = COLUMNS.index("created_at")
        stamp: dt.datetime = row[created]
        iso = stamp.astimezone(dt.UTC).isoformat(timespec="microseconds")
        return (*row[:created], iso, *row[created + 1 :])


def _versions(connection: psycopg.Connection[Any]) -> set[int]:
    found = connection.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if found is None or not found[0]:
        return set()
    return {int(v) for (v,) in connection.execute("SELECT version FROM schema_migrations")}
