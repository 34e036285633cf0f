"""service/feedback.py: the teacher-record store (WAL, synchronous=FULL, durable)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from service.feedback import FeedbackStore, TeacherRecord


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


def test_records_round_trip_and_counts(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "sub" / "feedback.sqlite3")
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
    assert store.records(model_name="other") == []


def test_database_is_in_wal_mode_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite3"
    store = FeedbackStore(path)
    record_id = store.add(record())
    assert store.journal_mode() == "wal"
    del store
    again = FeedbackStore(path)
    assert [r.id for r in again.records()] == [record_id]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_record_survives_the_process_being_killed_right_after_add(tmp_path: Path) -> None:
    """A child process adds a record, reports its id, then is SIGKILLed: no clean close,
    no checkpoint. The record must be there when the database is opened again."""
    path = tmp_path / "feedback.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from service.feedback import FeedbackStore
        from tests.service.test_feedback import record
        store = FeedbackStore({str(path)!r})
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
    assert [r.id for r in FeedbackStore(path).records()] == [record_id]
