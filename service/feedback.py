"""Teacher records for the attention model (seed 002's second embodiment), in SQLite.

A record is what a person produced in the editor: the uploaded image bytes, the edited
attention map, the model's own map, the true label, the model's answers, the model version
and a timestamp. The database is in WAL mode with ``synchronous=FULL`` and every record is
written in its own transaction that has committed before ``add`` returns, so a record the
service answered 200 for survives the process being killed right after.

Schema (read by ``python -m models.attention.finetune``): table ``teacher_records`` with
``id`` (text, uuid4 hex), ``created_at`` (text, ISO 8601 UTC), ``model_name``,
``model_version``, ``label`` (class name), ``label_id``, ``perception_class_id`` and
``attention_class_id`` (the model's answers with its own map), ``corrected_class_id``
(the answer with the edited map), ``misrecognised`` (0/1: perception answer != label),
``image`` (blob, the upload as sent), ``edited_map`` and ``model_map`` (blobs, 8-bit
grey PNGs at the map's resolution, value = round(255 * M)), ``map_height``, ``map_width``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
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
);
CREATE INDEX IF NOT EXISTS teacher_records_label ON teacher_records (label);
"""
# Seconds a writer waits for another connection's lock before failing.
BUSY_TIMEOUT_S = 10.0
COLUMNS = (
    "id",
    "created_at",
    "model_name",
    "model_version",
    "label",
    "label_id",
    "perception_class_id",
    "attention_class_id",
    "corrected_class_id",
    "misrecognised",
    "image",
    "edited_map",
    "model_map",
    "map_height",
    "map_width",
)


@dataclass(frozen=True)
class TeacherRecord:
    """One stored edit; ``id`` and ``created_at`` are set by the store when empty."""

    model_name: str
    model_version: str
    label: str
    label_id: int
    perception_class_id: int
    attention_class_id: int
    corrected_class_id: int
    image: bytes
    edited_map: bytes
    model_map: bytes
    map_height: int
    map_width: int
    id: str = ""
    created_at: str = ""

    @property
    def misrecognised(self) -> bool:
        return self.perception_class_id != self.label_id


@dataclass(frozen=True)
class FeedbackCounts:
    total: int
    per_label: dict[str, int]
    misrecognised: int
    misrecognised_attention_branch: int
    per_model_version: dict[str, int]


class FeedbackStore:
    """The teacher-record database at ``path`` (created on first use with its parents).

    Thread-safe: each call opens its own connection (SQLite serialises the writers), so
    calls may come from any worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._init_lock = threading.Lock()
        self._initialised = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self._ensure_schema()
        with closing(self._open()) as connection:
            yield connection

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        # FULL: the WAL is fsynced at every commit, so a committed record survives power loss.
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    def _ensure_schema(self) -> None:
        with self._init_lock:
            if self._initialised:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._open()) as connection:
                mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise RuntimeError(f"{self.path}: SQLite refused WAL mode ({mode})")
                connection.executescript(SCHEMA)
            self._initialised = True

    def journal_mode(self) -> str:
        with self._connect() as connection:
            return str(connection.execute("PRAGMA journal_mode").fetchone()[0])

    def add(self, record: TeacherRecord) -> str:
        """Store ``record`` in one committed transaction; returns its id."""
        record_id = record.id or uuid.uuid4().hex
        created = record.created_at or dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        values: dict[str, Any] = {
            "id": record_id,
            "created_at": created,
            "model_name": record.model_name,
            "model_version": record.model_version,
            "label": record.label,
            "label_id": record.label_id,
            "perception_class_id": record.perception_class_id,
            "attention_class_id": record.attention_class_id,
            "corrected_class_id": record.corrected_class_id,
            "misrecognised": int(record.misrecognised),
            "image": sqlite3.Binary(record.image),
            "edited_map": sqlite3.Binary(record.edited_map),
            "model_map": sqlite3.Binary(record.model_map),
            "map_height": record.map_height,
            "map_width": record.map_width,
        }
        placeholders = ", ".join(f":{name}" for name in COLUMNS)
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    f"INSERT INTO teacher_records ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                    values,
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        return record_id

    def counts(self) -> FeedbackCounts:
        with self._connect() as connection:
            total, wrong, wrong_att = connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(misrecognised), 0), "
                "COALESCE(SUM(attention_class_id != label_id), 0) FROM teacher_records"
            ).fetchone()
            per_label = dict(
                connection.execute(
                    "SELECT label, COUNT(*) FROM teacher_records GROUP BY label ORDER BY label"
                ).fetchall()
            )
            per_version = dict(
                connection.execute(
                    "SELECT model_name || '/' || model_version, COUNT(*) FROM teacher_records "
                    "GROUP BY model_name, model_version ORDER BY 1"
                ).fetchall()
            )
        return FeedbackCounts(
            total=int(total),
            per_label={str(k): int(v) for k, v in per_label.items()},
            misrecognised=int(wrong),
            misrecognised_attention_branch=int(wrong_att),
            per_model_version={str(k): int(v) for k, v in per_version.items()},
        )

    def records(self, model_name: str | None = None) -> list[TeacherRecord]:
        """Every record (of ``model_name`` when given), oldest first."""
        query = f"SELECT {', '.join(COLUMNS)} FROM teacher_records"
        params: tuple[str, ...] = ()
        if model_name is not None:
            query += " WHERE model_name = ?"
            params = (model_name,)
        with self._connect() as connection:
            rows = connection.execute(query + " ORDER BY created_at, id", params).fetchall()
        records = []
        for row in rows:
            values = dict(zip(COLUMNS, row, strict=True))
            values.pop("misrecognised")
            for blob in ("image", "edited_map", "model_map"):
                values[blob] = bytes(values[blob])
            records.append(TeacherRecord(**values))
        return records
