"""The :class:`Job` handle on one run of a loop: ``id``, ``result()``, ``await job``,
``cancel()``, ``progress``, ``stats``, ``as_completed()`` and ``Job.attach``.

The run itself (planning, the backend, combining) is
:class:`dolambda._core.run.JobRun`; this module only starts it, watches it, and
hands its results and events to the caller's thread or event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dolambda import _sync
from dolambda._backends.base import Backend
from dolambda._core.run import JobRun
from dolambda._core.spec import LoopSpec
from dolambda._core.tasks import InnerDone, PlannedTask
from dolambda._errors import DolambdaError
from dolambda._registry import resolve_remote_backend
from dolambda._stats import JobStats


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


@dataclass(frozen=True)
class Progress:
    """A snapshot of a job's progress: iterations done (including failed) of total."""

    done: int
    total: int | None
    failed: int

    def __str__(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"{self.done}/{total} iterations ({self.failed} failed)"


class Job:
    """A handle on a submitted loop: ``result()``, ``await job``, ``cancel()``,
    ``progress``, ``stats`` and ``as_completed()``.

    >>> from dolambda import foreach
    >>> job = foreach(x=range(4)).combine(sum).submit(lambda x: x * x)
    >>> job.result()
    14
    """

    def __init__(
        self,
        loop: LoopSpec,
        body: Callable[..., Any],
        backend: Backend,
        *,
        progress: bool | None = None,
        job_id: str | None = None,
        plan: list[PlannedTask | InnerDone] | None = None,
        seed: int | None = None,
    ) -> None:
        self.id = job_id or new_job_id()
        self.backend = backend
        self._engine = JobRun(
            self.id,
            loop,
            body,
            backend,
            progress=progress,  # None: tqdm's rule (a terminal or Jupyter), on every backend
            on_top=self._on_top,
            plan=plan,
            seed=seed,
        )
        # top-level (indexes, values) as combined, a batch per task, for as_completed
        self._events: list[tuple[Sequence[int], list[Any]]] = []
        self._event_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._events_lock = threading.Lock()
        # for a thread iterating ``for ... in job.as_completed()``; shares the lock
        self._events_changed = threading.Condition(self._events_lock)
        self._finished = False
        self._task: asyncio.Task[Any] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._future: concurrent.futures.Future[Any] | None = None

    def __repr__(self) -> str:
        state = "done" if self._finished else "running"
        return f"<Job {self.id} {state} {self.progress} on {self.backend.name}>"

    # ------------------------------------------------------------------ public handle

    @property
    def progress(self) -> Progress:
        """Iterations done (including failed) of the total, when known."""
        engine = self._engine
        return Progress(engine.done, engine.total, engine.failed)

    @property
    def stats(self) -> JobStats:
        """What the job measured: per-task stats, requests, wall time, estimated cost."""
        return self._engine.stats

    def done(self) -> bool:
        return self._finished

    def plot(self, kind: str = "timeline", ax: Any = None) -> Any:
        """A matplotlib figure of the job: ``"timeline"`` (one row per worker, a bar per
        task, cold starts marked) or ``"durations"`` (a histogram). Needs matplotlib."""
        return self.stats.plot(kind, ax)

    def result(self, timeout: float | None = None) -> Any:
        """Block until the job finishes and return the combined result."""
        if self._future is None:
            raise DolambdaError("this job was never started")
        try:
            return self._future.result(timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await().__await__()

    async def _await(self) -> Any:
        if self._future is None:
            raise DolambdaError("this job was never started")
        return await asyncio.wrap_future(self._future)

    def cancel(self) -> None:
        """Stop the job: no new iteration starts; ``result()`` then raises JobCancelled."""
        self._engine.cancel_requested = True
        loop, task, ctx = self._task_loop, self._task, self._engine.context
        if ctx is not None and loop is not None:
            loop.call_soon_threadsafe(ctx.cancelled.set)
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)
        # else the job has not started on the portal yet: the engine sees cancel_requested
        # when it starts and ends with JobCancelled (cancelling the portal's future here
        # would make result() raise a bare CancelledError and leave that error unread)

    def as_completed(self) -> Completed:
        """``(index, value)`` for each top-level iteration as it is combined, in
        completion order; then the job's error, if it failed. Works with ``for``
        (blocking this thread) and with ``async for`` (from any event loop).

        >>> from dolambda import foreach
        >>> job = foreach(x=range(3)).submit(lambda x: x * x)
        >>> sorted(item for item in job.as_completed())
        [(0, 0), (1, 1), (2, 4)]
        """
        return Completed(self)

    async def _completed_async(self) -> AsyncIterator[tuple[int, Any]]:
        seen = 0
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._events_lock:
            self._event_waiters.append(entry)
        try:
            while True:
                with self._events_lock:
                    batch = self._events[seen:]
                    finished = self._finished
                    event.clear()
                for indexes, values in batch:
                    for item in zip(indexes, values, strict=True):
                        yield item
                seen += len(batch)
                if finished and not batch:
                    with self._events_lock:
                        if seen >= len(self._events):
                            break
                    continue
                if not batch:
                    await event.wait()
        finally:
            with self._events_lock:
                self._event_waiters.remove(entry)
        await self._await()  # the job has finished: surface its error, if any

    def _completed_sync(self) -> Iterator[tuple[int, Any]]:
        seen = 0
        try:
            while True:
                with self._events_changed:
                    while not self._finished and seen >= len(self._events):
                        self._events_changed.wait()
                    batch = self._events[seen:]
                    finished = self._finished
                seen += len(batch)
                for indexes, values in batch:
                    yield from zip(indexes, values, strict=True)
                if finished and not batch:
                    break
        except KeyboardInterrupt:
            self.cancel()
            raise
        self.result()  # the job has finished: surface its error, if any

    @classmethod
    def attach(cls, job_id: str, backend: Backend | None = None) -> Job:
        """Resume gathering a job after the client that submitted it died."""
        target = resolve_remote_backend(backend, lambda_only=False)
        found = _sync.run_sync(target.attach(job_id))
        job = cls(
            found.spec,
            _attached_body,
            target,
            job_id=found.job_id,
            plan=found.plan,
            seed=found.seed,
        )
        return job.start_on_portal()

    # ------------------------------------------------------------------ starting

    def start_on_portal(self) -> Job:
        """Run the job on the helper thread's loop: ``result()`` may then block anywhere
        and ``await job`` works from any event loop."""
        self._future = _sync.submit_to_portal(self._run_here())
        # a coroutine cancelled before it ran (the portal shutting down) never runs _run's
        # cleanup: end the waits of as_completed here too
        self._future.add_done_callback(lambda _: self._mark_finished())
        return self

    async def _run_here(self) -> Any:
        self._task_loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        return await self._run()

    async def _run(self) -> Any:
        self._task_loop = asyncio.get_running_loop()
        try:
            return await self._engine.run()
        finally:
            self._mark_finished()

    # ------------------------------------------------------------------ events

    def _mark_finished(self) -> None:
        with self._events_lock:
            self._finished = True
        self._notify()

    def _notify(self) -> None:
        with self._events_changed:
            self._events_changed.notify_all()
        for loop, event in list(self._event_waiters):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def _on_top(self, indexes: Sequence[int], values: list[Any]) -> None:
        with self._events_lock:
            self._events.append((indexes, values))
        self._notify()


class Completed:
    """What :meth:`Job.as_completed` returns: iterate it with ``for`` or ``async for``."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self._job._completed_sync()

    def __aiter__(self) -> AsyncIterator[tuple[int, Any]]:
        return self._job._completed_async()


def _attached_body(**kwargs: Any) -> Any:  # pragma: no cover - never called: the body is in S3
    raise RuntimeError("an attached job runs the body stored in S3")
