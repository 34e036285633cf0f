"""Acknowledged teacher records against a killed server: ``python -m benchmarks.kill_during_saves``.

    python -m benchmarks.kill_during_saves [--rounds 5] [--clients 12] [--seed 0]
        [--out benchmarks/results]

The promise checked: a ``POST /attention/correct`` with ``save`` that answered 200 with a
``feedback_id`` has its record stored, whatever happens to the process next. Each round
starts the entry command (``python -m service.serve``, the attention model only) on a fresh
SQLite file, has ``--clients`` threads save corrections as fast as they are answered, and
SIGKILLs the server at a random moment (0.5-12 s in, from ``--seed``). The file is then
opened read-only: ``PRAGMA integrity_check``, and every acknowledged id looked up. Records
stored but never acknowledged (committed just before the kill, the answer lost with the
process) are allowed and counted.

A process kill is not a power cut: that the fsync at each commit (WAL, ``synchronous=FULL``,
service/feedback/sqlite.py) reaches the disk is the storage's part and is not tested here.

Writes ``kill_during_saves.json`` and ``.md`` under ``--out``; exits 1 when an
acknowledged record is missing or the file fails its integrity check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.run import HOST, ROOT, START_TIMEOUT_S, free_port

EXAMPLES = ROOT / "examples"
# The model's classes, cycled through as the true labels of the saved corrections.
LABELS = ("trouser", "shirt", "coat", "dress", "bag")
# Earliest and latest kill, seconds after the savers start: early enough to land in the
# first saves, late enough for a few thousand records on two CPUs.
KILL_WINDOW_S = (0.5, 12.0)


@dataclass(frozen=True)
class Round:
    """One round's counts."""

    killed_after_s: float  # from the savers' start
    acknowledged: int  # 200s with a feedback_id
    failed_requests: int  # refused, reset or unanswered when the server died
    stored: int  # records in the file afterwards
    acknowledged_missing: int  # must be 0
    stored_unacknowledged: int  # committed, answer lost with the process: allowed
    integrity: str  # PRAGMA integrity_check's answer, "ok" when sound


def start_server(database: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VISION_")},
        "HOST": HOST,
        "PORT": str(port),
        "PYTHONPATH": str(ROOT),
        "VISION_MODELS": '["attention"]',
        "VISION_PROVIDERS": "cpu",
        "VISION_LOG_LEVEL": "WARNING",
        "VISION_FEEDBACK_DB": str(database),
    }
    log = database.with_suffix(".log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.serve"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    log.close()  # the child has its own descriptor
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the service was not ready after {START_TIMEOUT_S} s")


def save_until_gone(url: str, worker: int, acknowledged: list[str], failed: list[int]) -> None:
    """Save corrections until a request fails (the server was killed)."""
    files = {
        "image": ("pair.png", (EXAMPLES / "attention_pair.png").read_bytes(), "image/png"),
        "mask": ("mask.png", (EXAMPLES / "attention_pair_mask.png").read_bytes(), "image/png"),
    }
    with httpx.Client(timeout=30) as client:
        for index in range(10**9):
            label = LABELS[(worker + index) % len(LABELS)]
            try:
                response = client.post(
                    f"{url}/attention/correct", files=files, data={"label": label, "save": "true"}
                )
            except httpx.HTTPError:
                failed.append(worker)
                return
            if response.status_code != 200:
                raise RuntimeError(f"a save answered {response.status_code}: {response.text}")
            acknowledged.append(response.json()["feedback_id"])


def one_round(work: Path, number: int, clients: int, kill_after_s: float) -> Round:
    database = work / f"round-{number}.sqlite3"
    port = free_port()
    process = start_server(database, port)
    acknowledged: list[str] = []
    failed: list[int] = []
    threads = [
        threading.Thread(
            target=save_until_gone, args=(f"http://{HOST}:{port}", worker, acknowledged, failed)
        )
        for worker in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(kill_after_s)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for thread in threads:
        thread.join()
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        (integrity,) = connection.execute("PRAGMA integrity_check").fetchone()
        stored = {row[0] for row in connection.execute("SELECT id FROM teacher_records")}
    acked = set(acknowledged)
    return Round(
        killed_after_s=round(kill_after_s, 2),
        acknowledged=len(acked),
        failed_requests=len(failed),
        stored=len(stored),
        acknowledged_missing=len(acked - stored),
        stored_unacknowledged=len(stored - acked),
        integrity=integrity,
    )


def report(rounds: list[Round], args: argparse.Namespace) -> str:
    window = " ".join(f"{bound:g}" for bound in args.kill_window)
    command = (
        f"python -m benchmarks.kill_during_saves --rounds {args.rounds} --clients "
        f"{args.clients} --seed {args.seed} --kill-window {window}"
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    columns = (
        "round",
        "killed after s",
        "acknowledged",
        "failed requests",
        "stored",
        "acknowledged, missing",
        "stored, not acknowledged",
        "integrity",
    )
    lines = [
        "# Acknowledged teacher records against SIGKILL",
        "",
        f"`{command}`, {when}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for number, r in enumerate(rounds, 1):
        lines.append(
            f"| {number} | {r.killed_after_s} | {r.acknowledged} | {r.failed_requests} | "
            f"{r.stored} | {r.acknowledged_missing} | {r.stored_unacknowledged} | {r.integrity} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument(
        "--kill-window", type=float, nargs=2, default=KILL_WINDOW_S, metavar=("FROM", "TO")
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    draw = random.Random(args.seed)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="kill-during-saves-") as work:
        for number in range(1, args.rounds + 1):
            done = one_round(Path(work), number, args.clients, draw.uniform(*args.kill_window))
            print(json.dumps(asdict(done)), flush=True)
            rounds.append(done)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill_during_saves.json").write_text(
        json.dumps([asdict(r) for r in rounds], indent=1) + "\n"
    )
    (args.out / "kill_during_saves.md").write_text(report(rounds, args))
    sound = all(r.acknowledged_missing == 0 and r.integrity == "ok" for r in rounds)
    return 0 if sound else 1


if __name__ == "__main__":
    raise SystemExit(main())
