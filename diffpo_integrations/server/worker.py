"""Model worker threads fed by a bounded queue.

Generations run on ``concurrency`` worker threads. Their forward passes meet in the engine's
:class:`~diffpo_integrations.engine.batching.BatchScheduler`, which runs them as one batched
pass, so throughput rises with concurrency; everything else that touches the model takes the
model's lock, since two passes at once on one CPU only fight for the same cores. With
``concurrency=1`` jobs run strictly one at a time. The queue is bounded:
:meth:`ModelWorker.submit` refuses at once when ``capacity`` jobs are admitted, and the route
answers 429 instead of letting requests pile up.

A job is a plain function run on a worker thread with a :class:`JobContext`; it reports
progress with :meth:`JobContext.emit` (delivered to the event loop in order) and calls
:meth:`JobContext.check` between tokens, which raises :class:`Cancelled` once the request was
cancelled (client gone, server shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

__all__ = ["Cancelled", "Job", "JobContext", "ModelWorker", "QueueFull"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
_DONE = object()


class QueueFull(Exception):
    """The worker already holds ``capacity`` jobs."""


class Cancelled(Exception):
    """The job was cancelled before or while it ran."""


class JobContext:
    """What a job function sees on the worker thread."""

    def __init__(self, job: Job[Any]) -> None:
        self._job = job

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled; call it between tokens."""
        if self._job.cancel_event.is_set():
            raise Cancelled("request cancelled")

    def emit(self, event: Any) -> None:
        """Send one progress event to the event loop (in order, before the result)."""
        self._job.push(event)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Job(Generic[T]):
    """One admitted unit of model work; await :meth:`result`, iterate :meth:`events`."""

    def __init__(self, fn: Callable[[JobContext], T], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        # A request that went away never awaits its job: mark the outcome as seen so asyncio does
        # not log "exception was never retrieved" for every cancelled generation.
        self.future.add_done_callback(_mark_retrieved)
        self.cancel_event = threading.Event()
        self.enqueued_at = time.perf_counter()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue()

    def cancel(self) -> None:
        """Ask the job to stop; it stops at its next :meth:`JobContext.check`."""
        self.cancel_event.set()

    def push(self, event: Any) -> None:
        """Thread-safe: queue an event for :meth:`events`."""
        self._call_soon(self._events.put_nowait, event)

    async def events(self) -> AsyncIterator[Any]:
        """Yield the job's events until it finishes (then await :meth:`result`)."""
        while True:
            event = await self._events.get()
            if event is _DONE:
                return
            yield event

    async def result(self) -> T:
        """The job's return value, or its exception."""
        return await asyncio.shield(self.future)

    @property
    def queue_time(self) -> float:
        """Seconds between admission and the start of the run."""
        return (self.started_at or self.enqueued_at) - self.enqueued_at

    @property
    def run_time(self) -> float:
        """Seconds the job ran on the worker thread."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started_at

    def _finish(self, value: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)
            self._events.put_nowait(_DONE)

        self._call_soon(settle)

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        # A closed event loop (server shutdown) raises RuntimeError: nobody is listening then.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)


class ModelWorker:
    """Runs admitted jobs on ``concurrency`` dedicated threads.

    Args:
        capacity: jobs admitted at once (running plus waiting); past it :meth:`submit` raises
            :class:`QueueFull`.
        name: thread name prefix, for debugging.
        concurrency: jobs running at once (their model passes are batched by the scheduler
            that ``job_context`` installs).
        job_context: entered around every job on its worker thread (installs the batch
            scheduler); ``None`` for none.
    """

    def __init__(
        self,
        capacity: int,
        name: str = "diffpo-model",
        *,
        concurrency: int = 1,
        job_context: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        if concurrency < 1:
            msg = f"concurrency must be >= 1, got {concurrency}"
            raise ValueError(msg)
        self.capacity = capacity
        self.concurrency = concurrency
        self._job_context = job_context
        self._queue: queue.Queue[Job[Any] | None] = queue.Queue()
        self._admitted = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(concurrency)
        ]
        self._started = False
        self._closing = False
        self._running: set[Job[Any]] = set()
        self.cancelled = 0
        """Jobs that ended by cancellation (before or while running)."""
        self._pending: set[Job[Any]] = set()

    @property
    def admitted(self) -> int:
        """Jobs admitted and not finished (running plus waiting)."""
        return self._admitted

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs admitted but not started."""
        return max(0, self._admitted - len(self._running))

    @property
    def alive(self) -> bool:
        """Whether the worker threads are running and accepting jobs."""
        return self._started and all(t.is_alive() for t in self._threads) and not self._closing

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def submit(self, fn: Callable[[JobContext], T]) -> Job[T]:
        """Admit ``fn`` to run on a worker thread; must be called from the event loop.

        Raises:
            QueueFull: ``capacity`` jobs are already admitted, or the worker is shutting down.
        """
        job: Job[T] = Job(fn, asyncio.get_running_loop())
        with self._lock:
            if self._closing or self._admitted >= self.capacity:
                raise QueueFull(f"{self._admitted} requests admitted (capacity {self.capacity})")
            self._admitted += 1
            self._pending.add(job)
        self._queue.put(job)
        return job

    def cancel_admitted(self) -> int:
        """Cancel every admitted job, running or waiting; return how many (thread-safe).

        Each stops at its next check and its request answers ``incomplete_generation``.
        """
        with self._lock:
            pending = list(self._pending)
        for job in pending:
            job.cancel()
        return len(pending)

    async def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel the admitted ones, and join the threads."""
        with self._lock:
            self._closing = True
        self.cancel_admitted()
        for _ in self._threads:
            self._queue.put(None)
        if self._started:
            for thread in self._threads:
                await asyncio.to_thread(thread.join, timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._running.add(job)
            job.started_at = time.perf_counter()
            value: Any = None
            error: BaseException | None = None
            try:
                if job.cancel_event.is_set():
                    raise Cancelled("request cancelled before it ran")
                if self._job_context is None:
                    value = job.fn(JobContext(job))
                else:
                    with self._job_context():
                        value = job.fn(JobContext(job))
            except BaseException as exc:  # every failure goes back to the awaiting request
                error = exc
                if not isinstance(exc, Cancelled):
                    _log.exception("model job failed")
            job.finished_at = time.perf_counter()
            # The counts change before the request learns the outcome: whoever awaited the job
            # then sees the worker with it already gone.
            with self._lock:
                self._running.discard(job)
                self._admitted -= 1
                self._pending.discard(job)
                if isinstance(error, Cancelled):
                    self.cancelled += 1
            job._finish(value, error)
