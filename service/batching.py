"""Dynamic batching: concurrent requests for one ONNX graph run as one batch.

One ``Batcher`` per graph (``LoadedModel.batchers``). A request takes a slot first
(``reserve()``, before decoding, so an overloaded server answers 503 before spending CPU on
the upload), then ``await batcher.infer(feeds)``. A worker task gathers queued requests
whose inputs agree in everything but the batch axis, up to ``max_size`` rows; it waits for
more (at most ``max_delay_s`` after the oldest arrived) only while other requests hold
slots and are still being decoded, so a lone client never waits. The batch runs in a
worker thread (ORT releases the GIL, the event loop stays free) and each request gets its
own rows of every output back. Up to ``policy.parallel`` batches of a graph run at once,
so the next batch forms and starts while the previous one is still in ONNX Runtime.

A request that finds its graph idle (no other slot held, nothing queued or running) has
nobody to batch with: ``run_alone`` decodes it and runs it in one worker-thread trip,
skipping the queue, the worker task and a second thread hop (~0.2 ms of a ~4.7 ms answer).

Requests whose client went away (``disconnected``) or whose task was cancelled are dropped
before the batch forms. Slots are bounded (``queue_size``): a full graph raises
``Overloaded`` (503 + Retry-After) instead of letting latency grow.

Image inputs may be sent as ``ImageRows`` (letterboxed uint8 pixels): the batch is then
normalised in one vectorised step straight into a pre-allocated float32 NCHW buffer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import ClientClosedRequest, Overloaded
from service.imaging import (
    LetterboxTransform,
    PadMode,
    ResizeMode,
    decode_image,
    decode_to_fit,
    fit_image,
)
from service.metrics import Metrics
from service.settings import BatchPolicy, Settings
from service.timing import record, timed
from service.workers import WorkerPool

logger = logging.getLogger(__name__)

Outputs = dict[str, npt.NDArray[Any]]
Disconnected = Callable[[], Awaitable[bool]]
# A float32 batch buffer's key: (input name, per-row shape).
BufferKey = tuple[str, tuple[int, ...]]
T = TypeVar("T")


class Runner(Protocol):
    """What a batcher runs: OnnxSession's ``run`` (thread-safe, releases the GIL)."""

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> Outputs: ...


@dataclass(frozen=True)
class Normalization:
    """uint8 RGB -> float32 ``pixel * gain + offset`` per channel, gain = scale / std and
    offset = -mean / std (the preprocess block of config.json)."""

    gain: npt.NDArray[np.float32]  # (3,)
    offset: npt.NDArray[np.float32]  # (3,)

    @classmethod
    def of(cls, scale: float, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        std64 = np.asarray(std, dtype=np.float64)
        gain = (scale / std64).astype(np.float32)
        offset = (-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)
        return cls(gain, offset)

    def into(self, pixels: npt.NDArray[np.uint8], out: npt.NDArray[np.float32]) -> None:
        """Normalise ``(N, H, W, 3)`` uint8 into ``out`` ``(N, 3, H, W)`` float32 in place:
        one multiply and one add over the batch, no float temporaries."""
        chw = pixels.transpose(0, 3, 1, 2)  # (N, 3, H, W), a view
        np.multiply(chw, self.gain[:, None, None], out=out)
        np.add(out, self.offset[:, None, None], out=out)


@dataclass(frozen=True)
class ImageRows:
    """Letterboxed images for a float32 NCHW image input: ``pixels`` uint8 (N, H, W, 3)."""

    pixels: npt.NDArray[np.uint8]


Feed = npt.NDArray[Any] | ImageRows


def decode_rows(
    data: bytes,
    *,
    height: int,
    width: int,
    pad_value: Sequence[int],
    max_pixels: int,
    max_side: int,
    draft: bool = True,
    resize: ResizeMode = "letterbox",
    pad: PadMode = "constant",
) -> tuple[ImageRows, LetterboxTransform]:
    """Decode an upload straight to uint8 RGB and fit it (``resize``: letterbox or centre
    crop) into one ImageRows row (CPU-bound: run in the decode pool); the float conversion
    happens once per batch. ``draft``: JPEGs decode at the smallest libjpeg scale that
    still covers the input."""
    if draft:
        rgb, full = decode_to_fit(
            data, height, width, max_pixels=max_pixels, max_side=max_side, resize=resize
        )
    else:
        rgb = decode_image(data, max_pixels=max_pixels, max_side=max_side)
        full = (rgb.shape[1], rgb.shape[0])
    # (height, width, 3) uint8; the transform maps to the full image's pixels
    boxed, transform = fit_image(
        rgb, height, width, pad_value, resize=resize, source_size=full, pad=pad
    )
    return ImageRows(boxed[np.newaxis]), transform


class Letterbox(Protocol):
    """The part of config.json's preprocess block decoding needs (PreprocessConfig)."""

    height: int
    width: int
    resize: ResizeMode
    pad_value: tuple[int, int, int]
    pad: PadMode


def decode_rows_for(
    data: bytes, pre: Letterbox, settings: Settings
) -> tuple[ImageRows, LetterboxTransform]:
    """``decode_rows`` with the input size of ``pre`` and the limits of ``settings``."""
    return decode_rows(
        data,
        height=pre.height,
        width=pre.width,
        pad_value=pre.pad_value,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        draft=settings.jpeg_draft,
        resize=pre.resize,
        pad=pre.pad,
    )


async def decode_upload(
    data: bytes, pre: Letterbox, settings: Settings, pool: WorkerPool
) -> tuple[ImageRows, LetterboxTransform]:
    """``decode_rows`` in the decode pool (VISION_DECODE_THREADS threads), so the event
    loop stays free; 400/413 for bad or oversized images."""
    return await pool.run(
        _timed_decode, time.perf_counter(), partial(decode_rows_for, data, pre, settings)
    )


def _timed_decode(submitted: float, decode: Callable[[], T]) -> T:
    """``decode()`` in a pool thread, recording the wait since ``submitted`` (perf_counter
    when the event loop handed it over) as decode-wait and its own time as decode."""
    record("decode-wait", time.perf_counter() - submitted)
    with timed("decode"):
        return decode()


def _rows(value: Feed) -> int:
    return int((value.pixels if isinstance(value, ImageRows) else value).shape[0])


def _signature(feeds: Mapping[str, Feed]) -> tuple[Any, ...]:
    """What must agree for requests to share a batch: names, kinds, dtypes, non-batch dims."""
    parts = []
    for name in sorted(feeds):
        value = feeds[name]
        array = value.pixels if isinstance(value, ImageRows) else value
        parts.append((name, isinstance(value, ImageRows), array.dtype.str, array.shape[1:]))
    return tuple(parts)


@dataclass(eq=False)
class _Item:
    feeds: Mapping[str, Feed]
    rows: int
    signature: tuple[Any, ...]
    future: asyncio.Future[Outputs]
    enqueued: float
    disconnected: Disconnected | None
    # Set by the worker when the item's batch ran: when it started, seconds in ORT, rows.
    started: float = 0.0
    run_seconds: float = 0.0
    batch_rows: int = 0


@dataclass(eq=False)
class Reservation:
    """A slot in a graph's bounded queue, held from before decoding until the request's
    batch starts (or the request leaves)."""

    batcher: Batcher
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.batcher._release_slot()


@dataclass
class _Labels:
    model: str
    version: str
    graph: str

    def values(self) -> tuple[str, str, str]:
        return self.model, self.version, self.graph


async def _client_gone(item: _Item) -> bool:
    """Whether a queued request's client has left. A check that fails (a broken receive
    channel) counts as gone: that client could not be sent an answer either, and an
    exception here must not stop the worker that serves everyone else in the queue."""
    if item.disconnected is None:
        return False
    try:
        return await item.disconnected()
    except Exception:
        logger.warning("could not tell whether a queued request's client left", exc_info=True)
        return True


@dataclass(eq=False)
class Batcher:
    """Gathers concurrent requests for one graph into batched runs (see the module doc).

    ``batchable`` False (a graph without a dynamic batch axis on every input and output)
    runs every request alone; ``normalization`` is needed only for ImageRows feeds.
    """

    runner: Runner
    policy: BatchPolicy
    model: str
    version: str
    graph: str
    batchable: bool = True
    normalization: Normalization | None = None
    metrics: Metrics | None = None
    _queue: deque[_Item] = field(default_factory=deque)
    _slots: int = 0
    _worker: asyncio.Task[None] | None = None
    _wakeup: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    # Batches running now (at most policy.parallel), held so they are not garbage-collected.
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _alone: int = 0  # lone requests in run_alone now (they hold a run slot too)
    _run_slots: asyncio.Semaphore | None = None
    # Threads for batch runs, policy.parallel of them: anyio's default pool (40 threads) is
    # shared with blocking work such as teacher-record store calls, which can hold threads
    # for seconds while a database is down; runs must never wait behind those. A pool of
    # its own, not a limiter on anyio's, also hands a run over without turns of the event
    # loop (service/workers.py). Made with the loop (_bind_loop), like the run slots.
    _run_threads: WorkerPool | None = None
    # Free pre-allocated float32 batches (max_size rows) for ImageRows inputs: one list per
    # key, since batches running at once each need their own; taken and given back by the
    # worker threads, hence the lock.
    _buffers: dict[BufferKey, list[npt.NDArray[np.float32]]] = field(default_factory=dict)
    _buffers_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_size(self) -> int:
        return self.policy.max_size if self.batchable else 1

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (not counting those still being decoded)."""
        return len(self._queue)

    @property
    def slots(self) -> int:
        """Requests admitted and not yet running (being decoded or queued)."""
        return self._slots

    # --- admission ------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """Whether a new request would be refused now."""
        return self._slots >= self.policy.queue_size

    def overloaded(self) -> Overloaded:
        """The 503 for a request refused because this graph is full (and count it)."""
        self._count_rejected("queue_full")
        return Overloaded(
            f"model {self.model!r} graph {self.graph!r} has {self._slots} requests "
            f"queued, its limit (VISION_BATCH_QUEUE_SIZE); retry shortly"
        )

    def reserve(self) -> Reservation:
        """Take a queue slot or raise Overloaded (503); release it with ``release()`` or by
        passing it to ``infer``. Call before decoding an upload."""
        if self.full:
            raise self.overloaded()
        self._slots += 1
        self._observe_depth(+1)
        return Reservation(self)

    @contextmanager
    def slot(self) -> Iterator[Reservation]:
        """``with batcher.slot() as reservation:`` reserve, and release on the way out."""
        reservation = self.reserve()
        try:
            yield reservation
        finally:
            reservation.release()

    def alone(self) -> bool:
        """Whether the caller, holding one slot, is this graph's only request: no other
        slot held, nothing queued, no batch running."""
        return self._slots == 1 and not self._queue and not self._running and not self._alone

    async def run_alone(
        self,
        prepare: Callable[[], tuple[Mapping[str, Feed], T]],
        *,
        reservation: Reservation,
        pool: WorkerPool,
    ) -> tuple[Outputs, T]:
        """For a request that found the graph ``alone()``: ``prepare()`` (the decode:
        returns the feeds and anything else the caller needs) and the run, in one trip to
        a thread of ``pool`` (the decode pool). Takes a run slot like a batch, so
        requests arriving meanwhile batch up behind it; returns the outputs and what
        ``prepare`` returned besides the feeds."""
        self._bind_loop()
        assert self._run_slots is not None
        # Usually free (alone() saw nothing running), so acquire() returns without yielding;
        # but the worker may hold one while it forms a batch from the last queued requests
        # (not yet "running"): with BATCH_PARALLEL 1 this then waits for that batch.
        waited_from = time.perf_counter()
        await self._run_slots.acquire()
        waited = time.perf_counter() - waited_from
        self._alone += 1
        reservation.release()  # like a batch starting: the run slot bounds it from here
        try:
            feeds, extra, outputs, seconds = await pool.run(
                self._prepare_and_run, time.perf_counter(), prepare
            )
        finally:
            self._alone -= 1
            self._run_slots.release()
            self._wake()
        rows = _rows(next(iter(feeds.values())))
        record("queue", waited)
        record("infer", seconds, rows)
        if self.metrics is not None:
            self.metrics.queue_seconds.labels(*self._labels()).observe(waited)
            self.metrics.batch_size.labels(*self._labels()).observe(rows)
            self.metrics.inference_seconds.labels(self.model, self.version).observe(seconds)
        return outputs, extra

    def _prepare_and_run(
        self, submitted: float, prepare: Callable[[], tuple[Mapping[str, Feed], T]]
    ) -> tuple[Mapping[str, Feed], T, Outputs, float]:
        feeds, extra = _timed_decode(submitted, prepare)
        try:
            outputs, seconds = self._run_parts({name: [feed] for name, feed in feeds.items()})
        except Exception:
            logger.exception("lone request on %s/%s failed", self.model, self.graph)
            raise
        return feeds, extra, outputs, seconds

    def _release_slot(self) -> None:
        self._slots -= 1
        self._observe_depth(-1)
        self._wake()

    # --- the request side -----------------------------------------------------------------

    async def infer(
        self,
        feeds: Mapping[str, Feed],
        *,
        reservation: Reservation | None = None,
        disconnected: Disconnected | None = None,
    ) -> Outputs:
        """Run ``feeds`` (every input, batch axis first) in the next batch; returns every
        output for this request's rows. Raises Overloaded when no slot is free (without a
        reservation), ClientClosedRequest when ``disconnected()`` says the client left."""
        if not feeds:
            raise ValueError("no inputs to run")
        rows = {_rows(value) for value in feeds.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(rows)}")
        if reservation is not None and reservation.batcher is not self:
            # Another graph's slot would be released here and leak there: a caller's bug.
            raise ValueError("the reservation belongs to another graph's batcher")
        if reservation is None or reservation.released:
            reservation = self.reserve()
        loop = self._bind_loop()
        item = _Item(
            feeds=feeds,
            rows=rows.pop(),
            signature=_signature(feeds),
            future=loop.create_future(),
            enqueued=time.perf_counter(),
            disconnected=disconnected,
        )
        # From here the queue owns the slot: the worker releases it when it takes the item.
        reservation.released = True
        self._queue.append(item)
        self._wake()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name=f"batcher {self.model}")
        outputs = await item.future
        record("queue", item.started - item.enqueued)
        record("infer", item.run_seconds, item.batch_rows)
        return outputs

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (a new test client, say): nothing of the old one is usable.
            self._loop, self._wakeup, self._worker = loop, asyncio.Event(), None
            self._run_slots = asyncio.Semaphore(max(1, self.policy.parallel))
            if self._run_threads is not None:
                self._run_threads.close()
            self._run_threads = WorkerPool(
                max(1, self.policy.parallel), f"run-{self.model}-{self.graph}"
            )
            self._running = set()
        return loop

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # --- the worker -----------------------------------------------------------------------

    async def _work(self) -> None:
        """Form and start batches while requests are queued, at most ``policy.parallel``
        running at once; exits when the queue is empty (the next request starts a new
        worker), so an idle model holds no task."""
        assert self._run_slots is not None and self._loop is not None
        while self._queue:
            # Wait for a free run slot first: requests arriving meanwhile join this batch.
            await self._run_slots.acquire()
            try:
                await self._gather()
                batch = await self._take_batch()
            except BaseException:
                self._run_slots.release()
                raise
            if not batch:
                self._run_slots.release()
                continue
            task = self._loop.create_task(self._execute(batch))
            self._running.add(task)
            # The slot goes back to the semaphore it came from, even if a new event loop
            # has replaced it meanwhile.
            task.add_done_callback(partial(self._finished, self._run_slots))

    def _finished(self, slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        slots.release()

    async def _gather(self) -> None:
        """Wait for company: while the batch is not full, requests are still being decoded
        (slots not yet queued), and the oldest has waited less than max_delay."""
        if self.max_size <= 1 or self.policy.max_delay_s <= 0 or self._wakeup is None:
            return
        deadline = self._queue[0].enqueued + self.policy.max_delay_s
        while self._queue and self._queued_rows() < self.max_size and self._incoming() > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _queued_rows(self) -> int:
        return sum(item.rows for item in self._queue)

    def _incoming(self) -> int:
        """Requests holding a slot that have not reached the queue yet (decoding)."""
        return self._slots - len(self._queue)

    async def _take_batch(self) -> list[_Item]:
        """Pop the oldest live request and every later one that fits with it."""
        batch: list[_Item] = []
        kept: list[_Item] = []
        checking: list[_Item] = []  # the item whose client is being asked about, if any
        rows = 0
        try:
            while self._queue:
                item = self._queue.popleft()
                if batch and (
                    item.signature != batch[0].signature or rows + item.rows > self.max_size
                ):
                    kept.append(item)
                    continue
                self._release_slot()
                if item.future.done():  # the request's task was cancelled while queued
                    self._count_rejected("client_gone")
                    continue
                checking.append(item)
                gone = await _client_gone(item)
                checking.clear()
                if gone:
                    self._count_rejected("client_gone")
                    item.future.set_exception(
                        ClientClosedRequest("the client disconnected before its batch ran")
                    )
                    continue
                batch.append(item)
                rows += item.rows
                if rows >= self.max_size:
                    break
        except BaseException as exc:
            # The worker is cancelled (shutdown) or hit a bug: requests already taken off the
            # queue (the one being checked too) would otherwise wait for an answer that never
            # comes.
            for item in [*batch, *checking]:
                if item.future.done():  # its request was cancelled meanwhile
                    continue
                if isinstance(exc, Exception):
                    item.future.set_exception(exc)
                else:
                    item.future.cancel()
            raise
        finally:
            self._queue.extendleft(reversed(kept))
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        if self.metrics is not None:
            waited = self.metrics.queue_seconds.labels(*self._labels())
            for item in batch:
                waited.observe(started - item.enqueued)
        try:
            assert self._run_threads is not None  # made by _bind_loop before any batch
            outputs, seconds = await self._run_threads.run(self._run, batch)
        except Exception as exc:  # ORT failures belong to every request of the batch
            logger.exception("batch of %d on %s/%s failed", len(batch), self.model, self.graph)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): no request may wait on it forever
            for item in batch:
                item.future.cancel()
            raise
        if self.metrics is not None:
            self.metrics.batch_size.labels(*self._labels()).observe(sum(i.rows for i in batch))
            self.metrics.inference_seconds.labels(self.model, self.version).observe(seconds)
        start, rows = 0, sum(item.rows for item in batch)
        for item in batch:
            item.started, item.run_seconds, item.batch_rows = started, seconds, rows
            stop = start + item.rows
            if not item.future.done():
                item.future.set_result(
                    outputs if len(batch) == 1 else {k: v[start:stop] for k, v in outputs.items()}
                )
            start = stop

    def _run(self, batch: list[_Item]) -> tuple[Outputs, float]:
        """Assemble the batch and run it (in a worker thread); returns outputs and the
        seconds inside ORT."""
        outputs, seconds = self._run_parts(
            {name: [item.feeds[name] for item in batch] for name in batch[0].feeds}
        )
        rows = sum(item.rows for item in batch)
        if len(batch) > 1:
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != rows:
                    raise RuntimeError(
                        f"output {name!r} has shape {value.shape}, not {rows} rows: the graph "
                        "cannot be batched"
                    )
        return outputs, seconds

    def _run_parts(self, parts: Mapping[str, list[Feed]]) -> tuple[Outputs, float]:
        """Assemble each input from its parts (one per request) and run; returns outputs
        and the seconds inside ORT."""
        borrowed: list[tuple[BufferKey, npt.NDArray[np.float32]]] = []
        try:
            feeds = {name: self._assemble(name, each, borrowed) for name, each in parts.items()}
            started = time.perf_counter()
            outputs = self.runner.run(feeds)
            seconds = time.perf_counter() - started
        finally:
            # ORT's outputs are arrays of their own, so the inputs can be reused at once.
            with self._buffers_lock:
                for key, buffer in borrowed:
                    self._buffers.setdefault(key, []).append(buffer)
        return outputs, seconds

    def _assemble(
        self,
        name: str,
        parts: list[Feed],
        borrowed: list[tuple[BufferKey, npt.NDArray[np.float32]]],
    ) -> npt.NDArray[Any]:
        """One input of the batch: ImageRows normalised into a pre-allocated buffer, arrays
        as they are (one) or copied once into the buffer (several). Buffers taken from the
        pool are added to ``borrowed``, for the caller to give back after the run."""
        first = parts[0]
        if isinstance(first, ImageRows):
            if self.normalization is None:
                raise RuntimeError(f"graph {self.graph!r} has no preprocess for image rows")
            pixels = [part.pixels for part in parts if isinstance(part, ImageRows)]
            rows = sum(p.shape[0] for p in pixels)
            height, width = first.pixels.shape[1:3]
            out = self._buffer(name, (3, height, width), rows, borrowed)
            start = 0
            for block in pixels:
                self.normalization.into(block, out[start : start + block.shape[0]])
                start += block.shape[0]
            return out
        arrays = [part for part in parts if not isinstance(part, ImageRows)]
        if len(arrays) == 1:
            return arrays[0]
        rows = sum(a.shape[0] for a in arrays)
        if arrays[0].dtype == np.float32:
            out = self._buffer(name, tuple(arrays[0].shape[1:]), rows, borrowed)
            return np.concatenate(arrays, axis=0, out=out)
        return np.concatenate(arrays, axis=0)

    def _buffer(
        self,
        name: str,
        row_shape: tuple[int, ...],
        rows: int,
        borrowed: list[tuple[BufferKey, npt.NDArray[np.float32]]],
    ) -> npt.NDArray[np.float32]:
        """The first ``rows`` rows of a free float32 batch buffer of this input (one of at
        most ``policy.parallel`` per input, allocated on first need), recorded in
        ``borrowed``."""
        if rows > self.max_size:  # a single oversized request: not worth keeping
            return np.empty((rows, *row_shape), np.float32)
        key = (name, row_shape)
        with self._buffers_lock:
            free = self._buffers.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = np.empty((self.max_size, *row_shape), np.float32)
        borrowed.append((key, buffer))
        return buffer[:rows]

    # --- metrics ----------------------------------------------------------------------------

    def _labels(self) -> tuple[str, str, str]:
        return self.model, self.version, self.graph

    def _observe_depth(self, change: int) -> None:
        # Moved by each change rather than set to this batcher's count: after a reload of
        # the same version the old batcher drains while the new one fills, both under the
        # same labels, and the gauge must read the two together.
        if self.metrics is not None:
            self.metrics.queue_depth.labels(*self._labels()).inc(change)

    def _count_rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(*self._labels(), reason).inc()
