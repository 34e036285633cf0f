"""service/feedback/: the teacher-record store, every test against both backends where the
behaviour is shared: SQLite (WAL, synchronous=FULL) and a real PostgreSQL server
(tests/postgres.py: initdb + pg_ctl on a loopback port).

Besides the store itself: versioned migrations applied once when several processes start
together, database failures answered 503 with nothing stored corrupted, and two real
service processes saving at once while one of them is killed with SIGKILL mid-save.
"""

from __future__ import annotations

import fcntl
import io
import os
import resource
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.errors import StoreFull, StoreUnavailable
from service.feedback import (
    MIGRATIONS,
    Migration,
    PostgresFeedbackStore,
    SQLiteFeedbackStore,
    TeacherRecord,
    open_store,
)
from service.feedback import postgres as postgres_backend
from service.feedback.base import COLUMNS, new_row
from service.main import create_app
from service.settings import Settings
from tests.postgres import PostgresServer
from tests.service.conftest import make_settings
from tests.service.images import encode

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "models" / "repository"
BACKENDS = ["sqlite", "postgresql"]
START_TIMEOUT_S = 90.0

needs_model = pytest.mark.skipif(
    not (REPOSITORY / "attention").is_dir(), reason="no committed attention model"
)


def record(label: str = "bag", label_id: int = 8, per: int = 8, att: int = 8) -> TeacherRecord:
    return TeacherRecord(
        model_name="attention",
        model_version="1",
        label=label,
        label_id=label_id,
        perception_class_id=per,
        attention_class_id=att,
        corrected_class_id=label_id,
        image=b"\x89PNG image bytes",
        edited_map=b"edited",
        model_map=b"own",
        map_height=16,
        map_width=16,
    )


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sub/feedback.sqlite3"  # absolute: sqlite:////tmp/...
    url: str = request.getfixturevalue("postgres_url")
    return url


@contextmanager
def opened(url: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> Iterator[Any]:
    store = open_store(url, migrations)
    try:
        yield store
    finally:
        store.close()


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


# ---- the store ---------------------------------------------------------------------------
def test_records_round_trip_and_counts(store_url: str) -> None:
    with opened(store_url) as store:
        first = store.add(record())
        store.add(record("dress", 3, per=8, att=3))  # perception wrong
        store.add(record("dress", 3, per=3, att=0))  # attention branch wrong
        counts = store.counts()
        assert counts.total == 3 and counts.per_label == {"bag": 1, "dress": 2}
        assert counts.misrecognised == 1 and counts.misrecognised_attention_branch == 1
        assert counts.per_model_version == {"attention/1": 3}
        stored = store.records()
        assert stored[0].id == first and len(first) == 32
        assert stored[0].image == b"\x89PNG image bytes" and stored[0].edited_map == b"edited"
        assert stored[1].misrecognised and not stored[2].misrecognised
        assert stored[0].created_at.endswith("+00:00")
        assert stored[0] == TeacherRecord(
            **{**record().__dict__, "id": first, "created_at": stored[0].created_at}
        )
        assert store.records(model_name="other") == []


def test_a_store_at_its_record_limit_refuses_and_keeps_what_it_had(store_url: str) -> None:
    with opened(store_url) as store:
        store.add(record())
    with closing(open_store(store_url, max_records=3)) as store:
        store.add(record("dress", 3))
        store.add(record("dress", 3))
        with pytest.raises(StoreFull) as full:
            store.add(record("coat", 4))
        assert full.value.status == 507 and "holds 3 records, at or past its limit of 3" in (
            full.value.detail
        )
        assert store.counts().total == 3 and "coat" not in store.counts().per_label
        with pytest.raises(StoreFull):  # the early check says the same
            store.check_room()
    with closing(open_store(store_url, max_records=4)) as store:
        store.check_room()  # one place left


def race_for_places(store_url: str, limit: int = 5) -> None:
    """Eight threads of two store objects (as two replicas) save three records each, racing
    for ``limit`` places: exactly ``limit`` are stored, every other save is StoreFull."""
    stores = [open_store(store_url, max_records=limit) for _ in range(2)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def save(store: Any) -> None:
        for _ in range(3):
            try:
                store.add(record())
                result = "stored"
            except StoreFull:
                result = "full"
            except Exception as exc:  # shown in the assertion rather than lost with the thread
                result = repr(exc)
            with lock:
                outcomes.append(result)

    try:
        threads = [threading.Thread(target=save, args=(stores[i % 2],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(set(outcomes)) == ["full", "stored"], outcomes
        assert outcomes.count("stored") == limit and outcomes.count("full") == 24 - limit
        assert stores[0].counts().total == limit
    finally:
        for store in stores:
            store.close()


def test_concurrent_saves_never_pass_the_record_limit(store_url: str) -> None:
    """The count and the insert share one transaction under a lock every writer takes."""
    race_for_places(store_url)


def test_the_record_limit_holds_on_a_repeatable_read_database(
    postgres: PostgresServer, postgres_url: str
) -> None:
    """With the database's default isolation REPEATABLE READ, a transaction's snapshot would
    be taken at the lock, before its wait, and the count would miss what the lock's previous
    holder committed (a second store would also re-run the first one's migration)."""
    with postgres.admin() as admin:
        name = database_name(postgres_url)
        admin.execute(
            f"ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'"  # type: ignore[arg-type]
        )
    race_for_places(postgres_url)


def test_a_writer_stuck_holding_the_limit_lock_costs_the_others_a_503_not_a_hang(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_backend, "RECORD_LIMIT_LOCK_TIMEOUT", "300ms")
    with psycopg.connect(postgres_url) as stuck:  # its transaction stays open, lock held
        key = postgres_backend.RECORD_LIMIT_LOCK_KEY
        stuck.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        with closing(open_store(postgres_url, max_records=5)) as store:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as refused:
                store.add(record())
            assert time.monotonic() - started < 3
            assert "lock timeout" in refused.value.detail
            assert store.counts().total == 0


def test_records_come_back_in_the_order_they_were_saved(store_url: str) -> None:
    # Many saves fall in one millisecond on PostgreSQL: the order must not depend on the id.
    with opened(store_url) as store:
        saved = [store.add(record()) for _ in range(30)]
        assert [stored.id for stored in store.records()] == saved


def test_records_survive_a_new_store_and_bytes_are_exact(store_url: str) -> None:
    every_byte = bytes(range(256)) * 4096  # 1 MiB with NULs and high bytes
    with opened(store_url) as store:
        record_id = store.add(TeacherRecord(**{**record().__dict__, "image": every_byte}))
    with opened(store_url) as again:
        (stored,) = again.records()
        assert stored.id == record_id and stored.image == every_byte


def test_a_record_survives_the_process_being_killed_right_after_add(store_url: str) -> None:
    """A child process adds a record, reports its id, then is SIGKILLed: no clean close,
    no checkpoint, no pool shutdown. The record must be there when opened again."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from service.feedback import open_store
        from tests.service.test_feedback import record
        store = open_store({store_url!r})
        print(store.add(record()), flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    record_id = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with opened(store_url) as store:
        assert [r.id for r in store.records()] == [record_id]


# ---- migrations --------------------------------------------------------------------------
def test_migrations_are_recorded_and_applied_once(store_url: str) -> None:
    with opened(store_url) as store:
        versions = [m.version for m in MIGRATIONS]
        assert store.open() == versions  # the first open creates the schema
        assert store.schema_versions() == versions
    with opened(store_url) as again:
        assert again.open() == []  # nothing pending: no lock taken, nothing run


def test_replicas_starting_together_apply_each_migration_exactly_once(store_url: str) -> None:
    """Eight stores (own connections) open at the same instant with a second migration
    whose statements would fail if run twice (plain CREATE TABLE, an INSERT)."""
    probe = Migration(
        version=MIGRATIONS[-1].version + 1,
        name="probe",
        sqlite=("CREATE TABLE probe (n INTEGER)", "INSERT INTO probe VALUES (1)"),
        postgresql=("CREATE TABLE probe (n integer)", "INSERT INTO probe VALUES (1)"),
    )
    migrations = (*MIGRATIONS, probe)
    stores = [open_store(store_url, migrations) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start(store: Any) -> None:
        barrier.wait()
        try:
            applied.append(store.open())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        expected = [m.version for m in migrations]
        assert sorted(v for versions in applied for v in versions) == expected
        assert stores[0].schema_versions() == expected
        assert count_rows(store_url, "probe") == 1
    finally:
        for store in stores:
            store.close()


def count_rows(url: str, table: str) -> int:
    store = open_store(url)
    if isinstance(store, SQLiteFeedbackStore):
        with sqlite3.connect(store.path) as connection:
            return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    with psycopg.connect(url) as connection:
        row = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # type: ignore[arg-type]
        assert row is not None
        return int(row[0])


def test_sqlite_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite3"
    store = open_store(path)  # a plain path (VISION_FEEDBACK_DB) is SQLite too
    store.add(record())
    assert isinstance(store, SQLiteFeedbackStore) and store.journal_mode() == "wal"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_sqlite_database_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    """Databases written by the first store (no schema_migrations table) keep their records."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        for statement in MIGRATIONS[0].sqlite:  # version 1 is that schema, verbatim
            old.execute(statement)
        old.execute(
            "INSERT INTO teacher_records VALUES ('a1', '2026-01-01T00:00:00.000+00:00', "
            "'attention', '1', 'bag', 8, 8, 8, 8, 0, x'89', x'01', x'02', 16, 16)"
        )
    store = open_store(str(path))
    assert store.open() == [1, 2]  # 1 adopts the table, 2 adds saved_by
    assert [(r.id, r.image, r.saved_by) for r in store.records()] == [("a1", b"\x89", "")]
    assert store.schema_versions() == [1, 2]


def test_records_saved_before_saved_by_read_empty_and_new_ones_keep_it(store_url: str) -> None:
    """Migration 2 on a database of version 1 that a pod of the previous release writes to
    during a rolling update (its INSERT names no saved_by): both kinds of row read back."""
    with opened(store_url, MIGRATIONS[:1]) as old:
        assert old.open() == [1]
    v1_columns = ", ".join(c for c in COLUMNS if c != "saved_by")
    old_row = new_row(record()) | {"id": "old"}
    insert = f"INSERT INTO teacher_records ({v1_columns}) VALUES "
    with opened(store_url) as store:
        assert store.open() == [2]
        execute(store_url, insert, [old_row[c] for c in COLUMNS if c != "saved_by"])
        new = store.add(replace(record(), saved_by="0123456789ab"))
        by_id = {r.id: r.saved_by for r in store.records()}
    assert by_id == {"old": "", new: "0123456789ab"}


def execute(url: str, insert: str, values: list[Any]) -> None:
    """Run ``insert`` (up to VALUES) with ``values`` on a connection of the store's own."""
    store = open_store(url)
    if isinstance(store, SQLiteFeedbackStore):
        with closing(sqlite3.connect(store.path)) as connection, connection:
            connection.execute(insert + f"({', '.join('?' * len(values))})", values)
        return
    with psycopg.connect(url) as connection:
        connection.execute((insert + f"({', '.join(['%s'] * len(values))})").encode(), values)


# ---- URLs and settings -------------------------------------------------------------------
def test_urls_choose_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SQLiteFeedbackStore)
    relative = open_store("sqlite:///var/x.sqlite3")
    assert isinstance(relative, SQLiteFeedbackStore) and relative.path == Path("var/x.sqlite3")
    ro = open_store(f"sqlite:///{tmp_path}/a.db?mode=ro")
    assert isinstance(ro, SQLiteFeedbackStore) and ro.read_only
    for scheme in ("postgresql", "postgres"):
        pg = open_store(f"{scheme}://u:s3cret@db.example:5432/vision")
        assert isinstance(pg, PostgresFeedbackStore)
        assert "s3cret" not in pg.description and "u:***@db.example:5432" in pg.description
    for bad in ("mysql://u@h/db", "sqlite://host/x.db", "sqlite:///", ""):
        with pytest.raises(ValueError):
            open_store(bad)


def test_feedback_url_overrides_the_path_and_stays_secret(tmp_path: Path) -> None:
    url = "postgresql://vision:s3cret@db:5432/vision"
    settings = Settings(feedback_db=tmp_path / "f.sqlite3", feedback_url=url)
    assert settings.resolved_feedback_url() == url
    assert "s3cret" not in repr(settings)
    assert Settings(feedback_db=tmp_path / "f.sqlite3").resolved_feedback_url() == str(
        tmp_path / "f.sqlite3"
    )
    # compose's "${VAR:-}" gives an empty string: the path applies.
    assert Settings(feedback_db=tmp_path / "g", feedback_url="").resolved_feedback_url() == str(
        tmp_path / "g"
    )


# ---- failures through the API ------------------------------------------------------------
def noise_png(seed: int, side: int = 128) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


MASK = encode(Image.new("L", (10, 10), 255))


def save(client: TestClient | httpx.Client, image: bytes) -> httpx.Response:
    return client.post(
        "/attention/correct",
        files={"image": ("i.png", image, "image/png"), "mask": ("m.png", MASK, "image/png")},
        data={"label": "bag", "save": "true"},
    )


def assert_store_unavailable(response: httpx.Response) -> str:
    """Checks the 503 problem document; returns its detail."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["type"] == "urn:vision-service:problem:store-unavailable"
    assert body["status"] == 503 and "teacher-record store" in body["detail"]
    detail: str = body["detail"]
    return detail


@contextmanager
def api(url: str) -> Iterator[TestClient]:
    settings = make_settings(REPOSITORY, models=["attention"], feedback_url=url, warmup_runs=0)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def short_pool_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request waits 1 s (not 5) for a PostgreSQL connection before its 503."""
    monkeypatch.setattr(postgres_backend, "POOL_TIMEOUT_S", 1.0)


@needs_model
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_database_is_a_503_and_the_models_still_serve(
    backend: str, tmp_path: Path, short_pool_timeout: None
) -> None:
    if backend == "sqlite":
        (tmp_path / "a-file").write_text("")
        url = f"sqlite:///{tmp_path}/a-file/feedback.sqlite3"  # its directory cannot exist
    else:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"postgresql://vision:s3cret@127.0.0.1:{port}/vision"
    with api(url) as client:
        assert client.get("/health/ready").status_code == 200
        image = noise_png(1)
        assert_store_unavailable(save(client, image))
        # No credentials, hosts or paths in what the client is told (the log has them).
        detail = save(client, image).json()["detail"]
        assert "s3cret" not in detail and str(tmp_path) not in detail and "127.0.0.1" not in detail
        assert_store_unavailable(client.get("/attention/feedback"))
        # Without save the correction needs no database.
        response = client.post(
            "/attention/correct",
            files={"image": ("i.png", image, "image/png"), "mask": ("m.png", MASK, "image/png")},
        )
        assert response.status_code == 200 and response.json().get("feedback_id") is None


def test_after_a_failed_attempt_calls_fail_at_once_for_a_moment(short_pool_timeout: None) -> None:
    """Database down: the first call waits for the pool (1 s here) and fails; calls right
    after it fail at once with the same reason instead of each waiting again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with opened(f"postgresql://vision:s3cret@127.0.0.1:{port}/vision") as store:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as first:
            store.add(record())
        waited = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as second:
            store.add(record())
        assert time.monotonic() - started < waited / 2
        assert "cannot be reached" in first.value.detail
        assert second.value.detail == first.value.detail


@needs_model
def test_a_read_only_database_is_a_503_and_keeps_what_it_had(
    store_url: str, postgres_or_none: PostgresServer | None
) -> None:
    with opened(store_url) as store:
        kept = store.add(record())
    if postgres_or_none is None:
        read_only = store_url + "?mode=ro"
    else:  # every new session of that database is read-only (as on a standby)
        with postgres_or_none.admin() as admin:
            name = database_name(store_url)
            admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")  # type: ignore[arg-type]
        read_only = store_url
    with api(read_only) as client:
        detail = assert_store_unavailable(save(client, noise_png(2)))
        assert "read-only" in detail or "readonly" in detail  # the database's own words
        assert client.get("/attention/feedback").json()["total"] == 1  # reading still works
    with opened(read_only) as store:
        assert [r.id for r in store.records()] == [kept]


def test_a_read_only_sqlite_file_says_which_files_must_be_writable(tmp_path: Path) -> None:
    """SQLite re-creates a missing -shm file with the database file's mode, so after a file
    was read-only for a while, making the file writable again is not enough: the 503 names
    the -wal and -shm files (no path: the log has it)."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    with opened(url) as store:
        store.add(record())
    with opened(url + "?mode=ro") as store, pytest.raises(StoreUnavailable) as refused:
        store.add(record())
    assert "readonly" in refused.value.detail and "-shm" in refused.value.detail
    assert str(tmp_path) not in refused.value.detail


@pytest.fixture
def postgres_or_none(request: pytest.FixtureRequest, store_url: str) -> PostgresServer | None:
    if store_url.startswith("sqlite"):
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server


@needs_model
def test_postgres_going_away_is_a_503_and_saving_resumes_when_it_is_back(
    postgres: PostgresServer, postgres_url: str, short_pool_timeout: None
) -> None:
    with api(postgres_url) as client:
        first = save(client, noise_png(3))
        assert first.status_code == 200, first.text
        postgres.stop("fast")
        try:
            assert_store_unavailable(save(client, noise_png(4)))
            assert_store_unavailable(client.get("/attention/feedback"))
        finally:
            postgres.start()
        # The pool reconnects in the background, with backoff: retry as a client would.
        deadline = time.monotonic() + 30
        while (again := save(client, noise_png(5))).status_code == 503:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.5)
        assert again.status_code == 200, again.text
        assert client.get("/attention/feedback").json()["total"] == 2
    with opened(postgres_url) as store:
        ids = [r.id for r in store.records()]
    assert ids == [first.json()["feedback_id"], again.json()["feedback_id"]]


# ---- real service processes --------------------------------------------------------------
@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_service(url: str, log: Path, *, file_size_limit: int | None = None) -> Service:
    """``python -m service.serve`` (the image's entry command) with the attention model."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VISION_")}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        VISION_FEEDBACK_URL=url,
        VISION_MODELS='["attention"]',
        VISION_PROVIDERS="cpu",
        VISION_INTRA_OP_THREADS="1",
        VISION_DECODE_THREADS="2",
        VISION_WARMUP_RUNS="0",
        VISION_LOG_LEVEL="WARNING",
    )

    def limit_file_size() -> None:  # runs in the child, before exec
        if file_size_limit is not None:
            # Writes past the limit fail with EFBIG, as on a full disk (not killed by SIGXFSZ).
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.serve"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_file_size if file_size_limit is not None else None,
        )
    return Service(process, f"http://127.0.0.1:{port}", log)


def wait_ready(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert service.process.poll() is None, service.output()
        try:
            if httpx.get(service.base_url + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, service.output()
        time.sleep(0.1)


@contextmanager
def services(*started: Service) -> Iterator[tuple[Service, ...]]:
    try:
        for service in started:
            wait_ready(service)
        yield started
    finally:
        for service in started:
            if service.process.poll() is None:
                service.process.terminate()
                try:
                    service.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    service.process.kill()
                    service.process.wait()


@dataclass
class Attempt:
    service: str
    image: bytes
    feedback_id: str | None = None  # set when the service answered 200
    error: str | None = None


def assert_complete(stored: TeacherRecord) -> None:
    """Every part of a record is there and decodes: no half-written row."""
    for blob in (stored.image, stored.edited_map, stored.model_map):
        Image.open(io.BytesIO(blob)).load()
    assert Image.open(io.BytesIO(stored.edited_map)).size == (stored.map_width, stored.map_height)
    assert stored.label == "bag" and stored.model_name == "attention" and stored.created_at


# SQLite's unix VFS takes the WAL write lock as a POSIX lock on byte 120 of the -shm file.
SQLITE_SHM_WRITE_LOCK_BYTE = 120


def sqlite_writer_pid(path: Path) -> int | None:
    """The pid holding ``path``'s WAL write lock (mid-transaction), if any (F_GETLK)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, SQLITE_SHM_WRITE_LOCK_BYTE, 1, 0)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
    finally:
        os.close(fd)
    return pid if kind != fcntl.F_UNLCK else None


def mid_save(store_url: str, pid: int) -> bool:
    """Whether process ``pid`` is inside a teacher-record write transaction right now."""
    if store_url.startswith("sqlite"):
        return sqlite_writer_pid(Path(store_url.removeprefix("sqlite:///"))) == pid
    with psycopg.connect(store_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND query LIKE 'INSERT INTO teacher_records%%' "
            "AND state IN ('active', 'idle in transaction')",
            (postgres_backend.application_name(pid),),
        ).fetchone()
    return row is not None and row[0] > 0


@needs_model
@pytest.mark.slow
def test_two_services_save_at_once_and_a_sigkill_mid_save_loses_no_acknowledged_record(
    store_url: str, tmp_path: Path
) -> None:
    """Services A and B start together on one database (both migrate), then four client
    threads save continuously, two per service, with uploads of ~200 kB. B is killed with
    SIGKILL the moment it is seen inside a write transaction (holding SQLite's WAL write
    lock; PostgreSQL: its INSERT active or its transaction open); A's threads carry on.
    Afterwards: every record acknowledged with a 200 is stored, byte for byte, every stored
    record is complete and was sent, and only B's requests cut off by the kill can be
    stored without an acknowledgement (killed after its commit, before its answer)."""
    a = start_service(store_url, tmp_path / "a.log")
    b = start_service(store_url, tmp_path / "b.log")
    attempts: list[Attempt] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(10**6))

    def client_loop(service: Service, name: str) -> None:
        with httpx.Client(base_url=service.base_url, timeout=30) as client:
            while not stop.is_set():
                with lock:
                    image = noise_png(1000 + next(counter), side=256)
                attempt = Attempt(name, image)
                with lock:
                    attempts.append(attempt)
                try:
                    response = save(client, image)
                except httpx.TransportError as exc:
                    attempt.error = repr(exc)
                    if name == "B":
                        return  # B is gone
                    raise
                if response.status_code == 200:
                    attempt.feedback_id = response.json()["feedback_id"]
                else:
                    attempt.error = f"{response.status_code} {response.text}"

    def acknowledged(name: str) -> int:
        with lock:
            return sum(1 for t in attempts if t.service == name and t.feedback_id)

    with services(a, b):
        threads = [
            threading.Thread(target=client_loop, args=(service, name), daemon=True)
            for service, name in ((a, "A"), (a, "A"), (b, "B"), (b, "B"))
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while acknowledged("B") < 8:
            assert time.monotonic() < deadline, b.output()
            time.sleep(0.01)
        # Its own budget: on a loaded machine the warm-up above can use most of the first.
        catch_deadline = time.monotonic() + 120
        while not mid_save(store_url, b.process.pid):
            assert time.monotonic() < catch_deadline, "never caught B inside a write transaction"
        os.kill(b.process.pid, signal.SIGKILL)
        after_kill = acknowledged("A")
        deadline = time.monotonic() + 120
        while acknowledged("A") < after_kill + 8:
            assert time.monotonic() < deadline, a.output()
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert b.process.wait(timeout=10) == -signal.SIGKILL

    acked = {t.feedback_id: t for t in attempts if t.feedback_id}
    cut_off = [t for t in attempts if t.service == "B" and t.error]
    assert not [t for t in attempts if t.service == "A" and t.error], "A must not fail"
    assert cut_off, "B was killed between requests: no save was in flight"
    with opened(store_url) as store:
        stored = store.records()
        assert store.counts().total == len(stored)
    by_id = {r.id: r for r in stored}
    missing = [i for i in acked if i not in by_id]
    assert missing == [], f"acknowledged records lost: {missing}"
    for feedback_id, attempt in acked.items():
        assert by_id[feedback_id].image == attempt.image
    sent = {t.image for t in attempts}
    unacknowledged = [r for r in stored if r.id not in acked]
    assert len(unacknowledged) <= len(cut_off)
    cut_images = {t.image for t in cut_off}
    for stored_record in stored:
        assert stored_record.image in sent
        assert_complete(stored_record)
    for stored_record in unacknowledged:
        assert stored_record.image in cut_images
    # How the run went (shown with -s), for anyone checking what it covered.
    per_service = {n: sum(t.service == n for t in acked.values()) for n in "AB"}
    print(
        f"acknowledged {per_service}, B requests cut off by the kill {len(cut_off)}, "
        f"stored without acknowledgement {len(unacknowledged)}"
    )
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@needs_model
def test_sqlite_full_disk_is_a_503_and_corrupts_nothing(tmp_path: Path) -> None:
    """The service runs with a 512 kB file-size limit (RLIMIT_FSIZE: writes past it fail
    as on a full disk). Small saves fit, a 600 kB one cannot: 503, then small saves work
    again and the database holds exactly the acknowledged records, intact."""
    path = tmp_path / "feedback.sqlite3"
    url = f"sqlite:///{path}"
    with opened(url) as store:  # created here, so the limited service only appends
        store.open()
    service = start_service(url, tmp_path / "service.log", file_size_limit=512 * 1024)
    small = [noise_png(40 + i, side=48) for i in range(2)]
    with services(service), httpx.Client(base_url=service.base_url, timeout=30) as client:
        first = save(client, small[0])
        assert first.status_code == 200, first.text
        # ~600 kB: held in memory by the multipart parser (it spools above the 4 MiB of
        # VISION_UPLOAD_SPOOL_BYTES), too big for the WAL under the limit.
        assert_store_unavailable(save(client, noise_png(50, side=450)))
        second = save(client, small[1])
        assert second.status_code == 200, second.text
        assert client.get("/attention/feedback").json()["total"] == 2
    assert "could not store the record" in service.output()
    with opened(url) as store:
        stored = store.records()
    assert [(r.id, r.image) for r in stored] == [
        (first.json()["feedback_id"], small[0]),
        (second.json()["feedback_id"], small[1]),
    ]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_commits_are_fsynced(tmp_path: Path) -> None:
    """synchronous=FULL: a committed record survives power loss, not only a killed process
    (the SIGKILL tests cannot tell FULL from NORMAL)."""
    store = SQLiteFeedbackStore(tmp_path / "feedback.sqlite3")
    with closing(store._open()) as connection:
        assert connection.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:5432/v", "postgresql://u:***@db:5432/v"),
        (
            "postgresql://u@db/v?sslmode=require&password=secret",
            "postgresql://u@db/v?sslmode=require&password=***",
        ),
        ("postgresql://u:a@db/v?password=b", "postgresql://u:***@db/v?password=***"),
        ("postgresql://db/v?sslmode=require", "postgresql://db/v?sslmode=require"),
        ("sqlite:////var/feedback.sqlite3", "sqlite:////var/feedback.sqlite3"),
    ],
)
def test_a_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert postgres_backend.redact(url) == shown


@needs_model
def test_a_full_store_is_a_507_and_corrections_without_save_still_answer(tmp_path: Path) -> None:
    settings = make_settings(
        REPOSITORY,
        models=["attention"],
        feedback_db=tmp_path / "f.sqlite3",
        feedback_max_records=1,
        warmup_runs=0,
    )
    with TestClient(create_app(settings)) as client:
        first = save(client, noise_png(1))
        assert first.status_code == 200 and first.json()["feedback_id"]
        registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
        runs = {"model": "attention", "version": first.json()["model"]["version"]}
        ran_before = registry.get_sample_value("vision_inference_duration_seconds_count", runs)
        refused = save(client, noise_png(2))
        # Refused before the image was decoded and run: no inference counted for it.
        assert registry.get_sample_value("vision_inference_duration_seconds_count", runs) == (
            ran_before
        )
        assert refused.status_code == 507, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        body = refused.json()
        assert body["type"] == "urn:vision-service:problem:store-full"
        assert "limit of 1" in body["detail"] and "retry-after" not in refused.headers
        unsaved = client.post(
            "/attention/correct",
            files={
                "image": ("i.png", noise_png(3), "image/png"),
                "mask": ("m.png", MASK, "image/png"),
            },
        )
        assert unsaved.status_code == 200 and "feedback_id" not in unsaved.json()
        assert client.get("/attention/feedback").json()["total"] == 1
