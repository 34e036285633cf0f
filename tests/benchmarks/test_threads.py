"""The per-thread CPU reading of benchmarks/threads.py, on this test process's own threads."""

from __future__ import annotations

import os
import threading
import time

from benchmarks.threads import machine_busy_and_total, thread_cpu_seconds


def test_a_busy_thread_shows_its_cpu_time_and_the_main_thread_is_the_pid() -> None:
    done = threading.Event()
    native_id: list[int] = []

    def spin() -> None:
        native_id.append(threading.get_native_id())
        deadline = time.thread_time() + 0.3  # 0.3 s of this thread's own CPU
        while time.thread_time() < deadline:
            pass
        done.wait()

    worker = threading.Thread(target=spin)
    before = thread_cpu_seconds(os.getpid())
    worker.start()
    while not native_id:
        time.sleep(0.01)
    # Wait (sleeping, not spinning) until the spinner has burnt most of its CPU; a reading
    # that never shows it fails below instead of hanging.
    give_up = time.monotonic() + 20
    while thread_cpu_seconds(os.getpid()).get(native_id[0], 0.0) < 0.25:
        if time.monotonic() > give_up:
            break
        time.sleep(0.02)
    after = thread_cpu_seconds(os.getpid())
    done.set()
    worker.join()
    assert os.getpid() in after  # the main thread's ID is the process ID
    assert after[native_id[0]] - before.get(native_id[0], 0.0) >= 0.25


def test_machine_busy_is_within_total() -> None:
    busy, total = machine_busy_and_total()
    assert 0 <= busy <= total and total > 0
