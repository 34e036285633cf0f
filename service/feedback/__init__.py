"""Teacher records of the attention editor (seed 002's second embodiment).

One interface (``FeedbackStore``), two backends chosen by a database URL
(``VISION_FEEDBACK_URL``, else the path ``VISION_FEEDBACK_DB``):

- a plain path or ``sqlite:///<path>`` (``sqlite:////abs/path`` for an absolute one, as in
  SQLAlchemy): SQLite in WAL mode on this host, the default; one host only;
- ``postgresql://user:password@host:port/dbname`` (or ``postgres://``): PostgreSQL through a
  psycopg connection pool; what several replicas must use, so that every pod's records land
  in one durable place.

``python -m models.attention.finetune --feedback <url>`` reads through the same function.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

from service.feedback.base import COLUMNS, FeedbackCounts, FeedbackStore, TeacherRecord
from service.feedback.migrations import MIGRATIONS, Migration
from service.feedback.postgres import PostgresFeedbackStore, redact
from service.feedback.sqlite import SQLiteFeedbackStore

__all__ = [
    "COLUMNS",
    "MIGRATIONS",
    "FeedbackCounts",
    "FeedbackStore",
    "Migration",
    "PostgresFeedbackStore",
    "SQLiteFeedbackStore",
    "TeacherRecord",
    "check_store_url",
    "open_store",
    "redact",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"


def check_store_url(url: str) -> str:
    """``url`` if ``open_store`` understands it, else ValueError saying what would."""
    if not url.strip():
        raise ValueError("the teacher-record store URL is empty")
    if url.startswith(POSTGRES_SCHEMES) or "://" not in url:  # PostgreSQL, or a plain path
        return url
    if url.startswith(SQLITE_SCHEME):
        rest = url.removeprefix(SQLITE_SCHEME)
        if not rest.startswith("/") or not rest[1:].partition("?")[0]:
            raise ValueError(
                f"{url!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path"
            )
        return url
    scheme = url.split("://", 1)[0]
    raise ValueError(
        f"unsupported teacher-record store URL scheme {scheme!r}: use a file path, "
        "sqlite:///<path> or postgresql://user:password@host:port/dbname"
    )


def open_store(
    url: str | os.PathLike[str],
    migrations: tuple[Migration, ...] = MIGRATIONS,
    max_records: int | None = None,
) -> FeedbackStore:
    """The store ``url`` names (nothing is connected until ``open`` or the first call),
    holding at most ``max_records`` records (None: no limit)."""
    if isinstance(url, os.PathLike):
        return SQLiteFeedbackStore(os.fspath(url), migrations=migrations, max_records=max_records)
    check_store_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresFeedbackStore(url, migrations=migrations, max_records=max_records)
    if url.startswith(SQLITE_SCHEME):
        path, _, query = url.removeprefix(SQLITE_SCHEME)[1:].partition("?")
        return SQLiteFeedbackStore(
            unquote(path), query=query, migrations=migrations, max_records=max_records
        )
    return SQLiteFeedbackStore(url, migrations=migrations, max_records=max_records)
