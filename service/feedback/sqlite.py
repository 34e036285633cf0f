"""The embedded default: teacher records in a SQLite file on this host.

WAL mode with ``synchronous=FULL``: the WAL is fsynced at every commit, so a record whose
transaction committed survives the process being killed or the machine losing power. Several
processes on one host may write at once (SQLite serialises them; ``BEGIN IMMEDIATE`` takes
the write lock up front so a writer waits ``BUSY_TIMEOUT_S`` rather than failing half-way).
Replicas on several hosts must not share one file over a network filesystem: use the
PostgreSQL backend there.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, ClassVar

from service.feedback.base import COLUMNS, COUNT_RECORDS, FeedbackStore
from service.feedback.migrations import MIGRATIONS, Migration

# Seconds a writer waits for another connection's lock before failing.
BUSY_TIMEOUT_S = 10.0
# Pause between attempts to switch a new file to WAL while another connection holds it: the
# switch takes milliseconds, so short pauses keep a replica's start fast.
WAL_RETRY_S = 0.01


class SQLiteFeedbackStore(FeedbackStore):
    """The database at ``path`` (created with its parents on first use).

    ``query`` is passed to SQLite as URI parameters, e.g. ``mode=ro`` to open an existing
    database read-only (a reader beside a running service).
    """

    backend: ClassVar[str] = "sqlite"
    placeholder: ClassVar[str] = "?"
    failures: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.Error, OSError)

    def __init__(
        self,
        path: Path | str,
        query: str = "",
        migrations: Sequence[Migration] = MIGRATIONS,
        max_records: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.query = query
        description = f"sqlite:///{self.path}" + (f"?{query}" if query else "")
        super().__init__(description, migrations, max_records)

    @property
    def read_only(self) -> bool:
        return "mode=ro" in self.query.split("&")

    def _reason(self, exc: BaseException) -> str:
        reason = super()._reason(exc)
        if isinstance(exc, sqlite3.Error) and "readonly" in reason:
            # SQLite makes a new -shm file with the database file's mode: one re-created while
            # the file was read-only stays read-only when the file is made writable again,
            # and every write keeps failing until the -shm is fixed too.
            reason += (
                "; the database file, its directory and its -wal and -shm files must all be "
                "writable by the service"
            )
        return reason

    def _open(self) -> sqlite3.Connection:
        if self.query:
            target = f"{self.path.absolute().as_uri().replace('file://', 'file:', 1)}?{self.query}"
            connection = sqlite3.connect(
                target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True
            )
        else:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        # FULL: the WAL is fsynced at every commit, so a committed record survives power loss.
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(self._open()) as connection:
            yield connection

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` (the write lock now, not at the first write) ... ``COMMIT``."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already (disk full)
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    def journal_mode(self) -> str:
        with self._guard("read the journal mode"), self._connect() as connection:
            return str(connection.execute("PRAGMA journal_mode").fetchone()[0])

    # ---- migrations ----------------------------------------------------------------------
    def _migrate(self) -> list[int]:
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = self._set_wal_mode()
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"SQLite refused WAL mode ({mode})")
        return super()._migrate()

    def _set_wal_mode(self) -> str:
        """``PRAGMA journal_mode=WAL`` (persistent in the file; outside any transaction, as
        SQLite requires). Replicas opening a new file together race for it, and the loser
        gets "database is locked" at once: SQLite does not call the busy handler for a
        journal-mode change. So retry for up to BUSY_TIMEOUT_S, like any other lock wait
        (it failed 8 times in 300 starts of eight stores on one new file before this)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                with self._connect() as connection:
                    return str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(WAL_RETRY_S)

    def _applied_versions(self) -> set[int]:
        with self._connect() as connection:
            return _versions(connection)

    def _apply_locked(self, migrations: Sequence[Migration]) -> list[int]:
        with self._connect() as connection, self._transaction(connection):
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT "
                "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            )
            return self._run_pending(connection.execute, _versions(connection), migrations)

    # ---- the records ---------------------------------------------------------------------
    def _insert(self, row: dict[str, Any]) -> None:
        values = {
            name: sqlite3.Binary(value) if isinstance(value, bytes) else value
            for name, value in row.items()
        }
        placeholders = ", ".join(f":{name}" for name in COLUMNS)
        with self._connect() as connection, self._transaction(connection):
            if self.max_records is not None:  # BEGIN IMMEDIATE: writers take turns from here
                (count,) = connection.execute(COUNT_RECORDS).fetchone()
                self.refuse_if_full(int(count))
            connection.execute(
                f"INSERT INTO teacher_records ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                values,
            )

    def _fetch(self, *queries: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        with self._connect() as connection:
            return [connection.execute(query, params).fetchall() for query, params in queries]


def _versions(connection: sqlite3.Connection) -> set[int]:
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return set()
    return {int(v) for (v,) in connection.execute("SELECT version FROM schema_migrations")}
