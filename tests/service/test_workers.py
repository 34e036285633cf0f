"""The request path's thread pool: results, context, bounds, cancellation, and the reason it
exists, that queued jobs reach a thread without the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
from collections.abc import Callable

import pytest

from service.workers import WorkerPool

# How long a test waits for threads that should finish at once: far beyond a loaded CI
# machine's scheduling delays, and only spent when the pool is broken.
PATIENCE_S = 10.0

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def wait_until(condition: Callable[[], bool], timeout: float = PATIENCE_S) -> bool:
    """Poll ``condition`` on this thread (blocking an event loop running here, if any)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def test_runs_in_a_named_thread_with_the_callers_context() -> None:
    async def main() -> tuple[str, str, int]:
        pool = WorkerPool(2, "decode")
        request_id.set("r-1")
        try:
            return await pool.run(
                lambda a, *, b: (threading.current_thread().name, request_id.get(), a + b),
                2,
                b=3,
            )
        finally:
            pool.close()

    name, seen, total = asyncio.run(main())
    assert name.startswith("decode") and name != threading.main_thread().name
    assert seen == "r-1" and total == 5


def test_raises_what_the_job_raises() -> None:
    async def main() -> None:
        pool = WorkerPool(1, "t")
        try:
            await pool.run(int, "not a number")
        finally:
            pool.close()

    with pytest.raises(ValueError, match="not a number"):
        asyncio.run(main())


def test_queued_jobs_reach_a_thread_while_the_event_loop_is_blocked() -> None:
    """The fix for mixed overload: with a limiter on anyio's threads, each next job needed
    turns of the loop to be handed over, so a busy loop left the threads idle."""
    done: list[int] = []

    async def main() -> None:
        pool = WorkerPool(1, "t")
        tasks = [asyncio.ensure_future(pool.run(done.append, i)) for i in range(5)]
        await asyncio.sleep(0)  # every task submits its job
        # Block the loop: no turn happens until all five ran, one after another, in the
        # pool's one thread.
        assert wait_until(lambda: len(done) == 5), done
        await asyncio.gather(*tasks)
        pool.close()

    asyncio.run(main())
    assert done == [0, 1, 2, 3, 4]


def test_at_most_threads_jobs_at_once() -> None:
    release = threading.Event()
    running, most = 0, 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(PATIENCE_S)
        with lock:
            running -= 1

    async def main() -> None:
        pool = WorkerPool(2, "t")
        tasks = [asyncio.ensure_future(pool.run(job)) for _ in range(5)]
        await asyncio.sleep(0)
        assert wait_until(lambda: running == 2)
        time.sleep(0.05)  # a third thread, were there one, would have started by now
        assert running == 2
        release.set()
        await asyncio.gather(*tasks)
        pool.close()

    asyncio.run(main())
    assert most == 2


def test_a_job_cancelled_before_it_started_never_runs() -> None:
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        pool = WorkerPool(1, "t")
        first = asyncio.ensure_future(pool.run(release.wait, PATIENCE_S))
        second = asyncio.ensure_future(pool.run(ran.append, "second"))
        await asyncio.sleep(0)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        release.set()
        await first
        pool.close()

    asyncio.run(main())
    assert ran == []


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_caller_cancelled_while_its_job_runs_waits_for_it(cancels: int) -> None:
    """What the caller holds (a batcher's run slot) must not be given back while a thread
    still uses it, however often it is cancelled meanwhile (anyio's cancel scopes cancel
    again on every turn of the loop until the task leaves)."""
    started, release = threading.Event(), threading.Event()
    finished: list[float] = []

    def job() -> None:
        started.set()
        release.wait(PATIENCE_S)
        finished.append(time.monotonic())

    async def main() -> float:
        pool = WorkerPool(1, "t")
        task = asyncio.ensure_future(pool.run(job))
        assert await asyncio.to_thread(started.wait, PATIENCE_S)
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the job
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool.close()
        return time.monotonic()

    ended = asyncio.run(main())
    assert len(finished) == 1 and finished[0] <= ended


def test_close_stops_the_threads_and_a_later_run_starts_new_ones() -> None:
    async def main() -> tuple[threading.Thread, threading.Thread]:
        pool = WorkerPool(1, "t")
        first = await pool.run(threading.current_thread)
        pool.close()
        second = await pool.run(threading.current_thread)
        pool.close()
        return first, second

    first, second = asyncio.run(main())
    assert second is not first
    assert wait_until(lambda: not first.is_alive() and not second.is_alive())


def test_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least"):
        WorkerPool(0, "t")


def test_a_job_failing_after_its_caller_was_cancelled_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()

    def job() -> None:
        started.set()
        time.sleep(0.05)
        raise RuntimeError("boom")

    async def main() -> None:
        pool = WorkerPool(1, "t")
        task = asyncio.ensure_future(pool.run(job))
        assert await asyncio.to_thread(started.wait, PATIENCE_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool.close()

    asyncio.run(main())
    gc.collect()  # an unretrieved exception is logged when its future is collected
    assert "never retrieved" not in caplog.text
