"""The teacher-record schema as numbered migrations, one statement list per backend.

The store applies, at start, every migration whose version is not yet a row of
``schema_migrations``, in version order, all in one transaction under an exclusive lock
(PostgreSQL: ``pg_advisory_xact_lock``; SQLite: ``BEGIN IMMEDIATE``), so replicas that
start together apply each exactly once. Rules for a new migration: append it with the next
version, never edit or renumber a released one, and only add (columns with defaults,
tables, indexes): a pod still running the previous version must keep working during a
rolling update.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int  # applied in ascending order, each exactly once per database
    name: str  # recorded beside the version, for people reading schema_migrations
    sqlite: tuple[str, ...]  # statements, run in order (no executescript: it would commit)
    postgresql: tuple[str, ...]

    def statements(self, backend: str) -> tuple[str, ...]:
        """The statements for ``backend`` ("sqlite" or "postgresql")."""
        found: tuple[str, ...] = getattr(self, backend)
        return found


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="teacher_records",
        # IF NOT EXISTS: a database made before migrations existed already has this table
        # with exactly these columns; version 1 adopts it as it is.
        sqlite=(
            """
            CREATE TABLE IF NOT EXISTS teacher_records (
                id TEXT PRIMARY KEY,
                created_at TEXT NOT NULL,
                model_name TEXT NOT NULL,
                model_version TEXT NOT NULL,
                label TEXT NOT NULL,
                label_id INTEGER NOT NULL,
                perception_class_id INTEGER NOT NULL,
                attention_class_id INTEGER NOT NULL,
                corrected_class_id INTEGER NOT NULL,
                misrecognised INTEGER NOT NULL,
                image BLOB NOT NULL,
                edited_map BLOB NOT NULL,
                model_map BLOB NOT NULL,
                map_height INTEGER NOT NULL,
                map_width INTEGER NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS teacher_records_label ON teacher_records (label)",
        ),
        postgresql=(
            """
            CREATE TABLE IF NOT EXISTS teacher_records (
                id text PRIMARY KEY,
                created_at timestamptz NOT NULL,
                model_name text NOT NULL,
                model_version text NOT NULL,
                label text NOT NULL,
                label_id integer NOT NULL,
                perception_class_id integer NOT NULL,
                attention_class_id integer NOT NULL,
                corrected_class_id integer NOT NULL,
                misrecognised boolean NOT NULL,
                image bytea NOT NULL,
                edited_map bytea NOT NULL,
                model_map bytea NOT NULL,
                map_height integer NOT NULL,
                map_width integer NOT NULL
            )
            """,
            # Uploads are JPEG/PNG, already compressed: store them out of line without
            # TOAST's compression attempt, which would only cost CPU.
            "ALTER TABLE teacher_records ALTER COLUMN image SET STORAGE EXTERNAL",
            "CREATE INDEX IF NOT EXISTS teacher_records_label ON teacher_records (label)",
        ),
    ),
    Migration(
        version=2,
        name="saved_by",
        # Which API key saved the record: the first 12 hex digits of its SHA-256, never the
        # key; '' where the server had no keys. Rows from before it read ''.
        sqlite=("ALTER TABLE teacher_records ADD COLUMN saved_by TEXT NOT NULL DEFAULT ''",),
        postgresql=("ALTER TABLE teacher_records ADD COLUMN saved_by text NOT NULL DEFAULT ''",),
    ),
)
