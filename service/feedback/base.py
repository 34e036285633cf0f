"""The teacher-record store's interface, shared by the SQLite and PostgreSQL backends.

A record is what a person produced in the editor: the uploaded image bytes, the edited
attention map, the model's own map, the true label, the model's answers, the model version
and a timestamp. ``add`` returns only after the record's transaction has committed
durably, so a record the service answered 200 for survives any crash that follows.

Where the bytes live: in the database itself (SQLite ``BLOB``, PostgreSQL ``bytea``), in the
same row and the same transaction as the rest of the record, not in a content-addressed
directory beside it. One commit then makes the whole record visible or none of it: no file
without its row after a crash, no row pointing at a file another replica cannot see (a
directory would need a shared read-write volume across pods, the very thing PostgreSQL
replaces), and one backup (``pg_dump`` or a copy of the SQLite file) holds everything. The
cost is a larger database; uploads are capped at ``max_upload_bytes`` (20 MiB) and an
edit's image is typically well under 1 MB, far inside both backends' limits.

Schema (read by ``python -m models.attention.finetune``): table ``teacher_records`` with
``id`` (text, uuid4 hex), ``created_at`` (UTC timestamp), ``model_name``, ``model_version``,
``label`` (class name), ``label_id``, ``perception_class_id`` and ``attention_class_id``
(the model's answers with its own map), ``corrected_class_id`` (the answer with the edited
map), ``misrecognised`` (perception answer != label), ``image`` (the upload as sent),
``edited_map`` and ``model_map`` (8-bit grey PNGs at the map's resolution, value =
round(255 * M)), ``map_height``, ``map_width``, ``saved_by`` (the saving API key's ID: the
first 12 hex digits of its SHA-256; '' without keys). Versioned in
``service/feedback/migrations.py``; the applied versions are rows of ``schema_migrations``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

from service.errors import StoreFull, StoreUnavailable
from service.feedback.migrations import MIGRATIONS, Migration

logger = logging.getLogger(__name__)

# The count the record limit is checked with (early, and under each backend's insert lock).
COUNT_RECORDS = "SELECT COUNT(*) FROM teacher_records"

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
    "saved_by",
)
BLOB_COLUMNS = ("image", "edited_map", "model_map")
# Longest backend message quoted in a 503's detail (the full one goes to the log).
MAX_REASON_CHARS = 200
# After a failed migration attempt (database down), calls within this many seconds fail at
# once rather than queueing one by one behind fresh attempts that each wait for a timeout.
RETRY_MIGRATION_AFTER_S = 2.0


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
    # The API key that saved it, as key_id() names it (a digest's prefix, never the key);
    # "" on a server without keys.
    saved_by: str = ""
    id: str = ""
    # ISO 8601, UTC, microseconds: records() sorts by it, and two saves in one millisecond
    # (PostgreSQL takes well under one) must not fall back to the random id for their order.
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


def new_row(record: TeacherRecord) -> dict[str, Any]:
    """``record`` as column values, with its id and creation time filled in."""
    created = record.created_at or dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    values = {name: getattr(record, name) for name in COLUMNS if name != "misrecognised"}
    values.update(
        id=record.id or uuid.uuid4().hex,
        created_at=created,
        misrecognised=record.misrecognised,
    )
    return values


def from_row(row: Sequence[Any]) -> TeacherRecord:
    """A record from a row of ``COLUMNS`` (backend types already made plain)."""
    values = dict(zip(COLUMNS, row, strict=True))
    values.pop("misrecognised")  # derived from the class ids
    for blob in BLOB_COLUMNS:
        values[blob] = bytes(values[blob])
    return TeacherRecord(**values)


class FeedbackStore(ABC):
    """Where teacher records go. Thread-safe: calls may come from any worker thread.

    The schema is migrated by ``open`` (the service calls it at start) or, if that failed
    (database down), by the first call that finds the database reachable again. Every
    database failure surfaces as ``StoreUnavailable`` (a 503), never as a driver error.
    """

    backend: ClassVar[str]
    placeholder: ClassVar[str]  # the driver's parameter marker: "?" or "%s"
    # What the backend raises when the database is unreachable, read-only, full or broken.
    failures: ClassVar[tuple[type[BaseException], ...]]

    def __init__(
        self,
        description: str,
        migrations: Sequence[Migration] = MIGRATIONS,
        max_records: int | None = None,
    ) -> None:
        self.description = description  # the URL with any password masked: safe to log
        self.migrations = tuple(sorted(migrations, key=lambda m: m.version))
        # Most records the store may hold (None: no limit); checked in the insert's own
        # transaction, under a lock that orders the inserts of every process.
        self.max_records = max_records
        self._migrate_lock = threading.Lock()
        self._migrated = False
        self._failed: tuple[float, StoreUnavailable] | None = None  # (monotonic s, error)

    # ---- lifecycle -----------------------------------------------------------------------
    def open(self) -> list[int]:
        """Connect and migrate; returns the versions this call applied."""
        return self._ensure_migrated()

    @abstractmethod
    def close(self) -> None:
        """Release pooled connections (the store is not used after this)."""

    def __enter__(self) -> FeedbackStore:
        self.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---- the records ---------------------------------------------------------------------
    def add(self, record: TeacherRecord) -> str:
        """Store ``record`` in one durably committed transaction; returns its id. Raises
        StoreFull (507) when the store already holds ``max_records``."""
        row = new_row(record)
        with self._guard("store the record (it may not have been stored; retry)"):
            self._ensure_migrated()
            self._insert(row)
        return str(row["id"])

    def check_room(self) -> None:
        """Raise StoreFull (507) when the store already holds ``max_records``: a cheap early
        refusal, before a save's work is done. Not the guarantee: ``add`` counts again under
        its lock, since others may save meanwhile. Without a limit, no query at all."""
        if self.max_records is None:
            return
        with self._guard("count the records"):
            self._ensure_migrated()
            ((count,),) = self._fetch((COUNT_RECORDS, ()))[0]
        self.refuse_if_full(int(count))

    def counts(self) -> FeedbackCounts:
        with self._guard("count the records"):
            self._ensure_migrated()
            return self._counts()

    def records(self, model_name: str | None = None) -> list[TeacherRecord]:
        """Every record (of ``model_name`` when given), oldest first."""
        with self._guard("read the records"):
            self._ensure_migrated()
            return self._records(model_name)

    def schema_versions(self) -> list[int]:
        """The migration versions recorded in the database, ascending."""
        with self._guard("read the schema version"):
            return sorted(self._applied_versions())

    # ---- migrations ----------------------------------------------------------------------
    def _ensure_migrated(self) -> list[int]:
        with self._migrate_lock:
            if self._migrated:
                return []
            if self._failed and time.monotonic() - self._failed[0] < RETRY_MIGRATION_AFTER_S:
                raise StoreUnavailable(self._failed[1].detail)
            try:
                with self._guard("migrate the schema"):
                    applied = self._migrate()
            except StoreUnavailable as exc:
                self._failed = (time.monotonic(), exc)
                raise
            self._migrated, self._failed = True, None
        if applied:
            logger.info("teacher-record store %s: applied migrations %s", self.description, applied)
        return applied

    def _migrate(self) -> list[int]:
        """Apply the pending migrations, each exactly once even when several processes
        start together: a cheap unlocked look first (the usual case: nothing to do), then
        under the backend's exclusive lock a second look and the work, in one transaction."""
        latest = self.migrations[-1].version if self.migrations else 0
        known = self._applied_versions()
        if known and max(known) > latest:
            logger.warning(
                "teacher-record store %s: schema version %d is newer than this code's %d "
                "(a rollback?); carrying on, migrations only add",
                self.description,
                max(known),
                latest,
            )
        if all(m.version in known for m in self.migrations):
            return []
        return self._apply_locked(self.migrations)

    def _run_pending(
        self, execute: Callable[..., object], done: set[int], migrations: Sequence[Migration]
    ) -> list[int]:
        """Inside the locked migration transaction: each migration not in ``done``, then its
        row in ``schema_migrations``; returns the versions run."""
        mark = self.placeholder
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            for statement in migration.statements(self.backend):
                execute(statement)
            execute(
                f"INSERT INTO schema_migrations (version, name) VALUES ({mark}, {mark})",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
        return applied

    # ---- backend primitives ----------------------------------------------------------------
    @abstractmethod
    def _applied_versions(self) -> set[int]:
        """Versions in ``schema_migrations`` (empty when the table does not exist)."""

    @abstractmethod
    def _apply_locked(self, migrations: Sequence[Migration]) -> list[int]:
        """Under an exclusive lock and in one transaction: create ``schema_migrations`` if
        needed, apply those of ``migrations`` not recorded there, record them."""

    @abstractmethod
    def _insert(self, row: dict[str, Any]) -> None:
        """Insert ``row`` in one transaction; with ``max_records`` set, count first in it
        (``refuse_if_full``), holding a lock that makes concurrent inserts take turns."""

    def refuse_if_full(self, count: int) -> None:
        """Raise StoreFull when ``count`` records leave no room under ``max_records``."""
        if self.max_records is not None and count >= self.max_records:
            raise StoreFull(
                f"the teacher-record store holds {count} records, at or past its limit of "
                f"{self.max_records} (VISION_FEEDBACK_MAX_RECORDS); nothing was stored"
            )

    @abstractmethod
    def _fetch(self, *queries: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        """The rows of each read-only ``(query, params)``, all on one connection."""

    def _plain(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A ``COLUMNS`` row with the driver's types made those of ``TeacherRecord``."""
        return row

    # ---- reads, in SQL both backends speak ---------------------------------------------
    def _counts(self) -> FeedbackCounts:
        totals, per_label, per_version = self._fetch(
            (
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE misrecognised), "
                "COUNT(*) FILTER (WHERE attention_class_id <> label_id) FROM teacher_records",
                (),
            ),
            ("SELECT label, COUNT(*) FROM teacher_records GROUP BY label ORDER BY label", ()),
            (
                "SELECT model_name || '/' || model_version AS v, COUNT(*) FROM teacher_records "
                "GROUP BY model_name, model_version ORDER BY v",
                (),
            ),
        )
        total, wrong, wrong_att = totals[0]
        return FeedbackCounts(
            total=int(total),
            per_label={str(k): int(v) for k, v in per_label},
            misrecognised=int(wrong),
            misrecognised_attention_branch=int(wrong_att),
            per_model_version={str(k): int(v) for k, v in per_version},
        )

    def _records(self, model_name: str | None) -> list[TeacherRecord]:
        query = f"SELECT {', '.join(COLUMNS)} FROM teacher_records"
        params: tuple[str, ...] = ()
        if model_name is not None:
            query += f" WHERE model_name = {self.placeholder}"
            params = (model_name,)
        (rows,) = self._fetch((query + " ORDER BY created_at, id", params))
        return [from_row(self._plain(row)) for row in rows]

    def _reason(self, exc: BaseException) -> str:
        """What a client may be told about ``exc``: no paths, hosts or credentials."""
        if isinstance(exc, OSError):
            return exc.strerror or type(exc).__name__
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn the backend's failures into ``StoreUnavailable`` (503), logged in full."""
        try:
            yield
        except StoreUnavailable:
            raise
        except self.failures as exc:
            reason = self._reason(exc)
            logger.error(
                "teacher-record store %s: could not %s: %s: %s",
                self.description,
                doing,
                type(exc).__name__,
                exc,
            )
            raise StoreUnavailable(
                f"the teacher-record store ({self.backend}) could not {doing}: "
                f"{reason[:MAX_REASON_CHARS]}"
            ) from exc
