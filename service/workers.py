"""A fixed pool of threads for the request path's CPU-bound work (decoding an upload, a lone
request's decode and run, a graph's batch runs), handed work without turns of the event
loop.

anyio's ``to_thread.run_sync(..., limiter=CapacityLimiter(n))`` passes the limiter's token
from one waiter to the next on the event loop: the finishing call releases it, the next
waiter is woken, resumes, yields once more, then submits. Each of those is a turn of the
loop, and when the loop is busy (hundreds of cheap answers, say cached ``/attention``
ones) every turn waits behind all of that work, so two decode threads sat idle between
jobs. ``benchmarks/mixed_overload.py``, 256 clients over every model endpoint, 2 CPUs
(2026-12-04): about 5 ``/recognize`` answers a second at a p50 of 3.6 s. Here the threads
take the next job from the executor's own queue, and the loop is needed once, to hear that
a job finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class WorkerPool:
    """``threads`` threads named ``name``_N, made on first use; ``close()`` stops them (a
    later ``run`` makes new ones, as a second lifespan of the same app needs)."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"a pool needs a thread at least, not {threads}")
        self.threads = threads
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a pool thread, in the caller's context (Server-Timing
        records its stages through a context variable). A caller cancelled while ``fn``
        runs waits for it to return before the cancellation goes on, however often it is
        cancelled meanwhile (anyio's ``run_sync`` waits only under anyio's cancel scopes),
        so that what the caller holds (a run slot) is not given back while the thread
        still uses it; one cancelled before ``fn`` started drops it."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)
        context = contextvars.copy_context()
        job = self._executor.submit(context.run, partial(fn, *args, **kwargs))
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # Cancelling the awaited future cancelled the job unless a thread had it; a
            # running one is waited for however often the caller is cancelled meanwhile
            # (anyio's cancel scopes cancel again on every turn of the loop), and its
            # result or exception is taken, so that asyncio logs no unretrieved one.
            if not job.cancelled():
                finished = asyncio.wrap_future(job)
                while not finished.done():
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await asyncio.shield(finished)
                if not finished.cancelled():
                    finished.exception()
            raise

    def close(self) -> None:
        """Stop the threads once their jobs are done; jobs not started are dropped."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
