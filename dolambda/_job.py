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
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dolambda import _sync
from dolambda._backends.base import Backend, JobContext
from dolambda._core.run import JobRun
from dolambda._core.spec import LoopSpec
from dolambda._core.tasks import InnerDone, PlannedTask
from dolambda._errors import DolambdaError
from dolambda._registry import resolve_remote_backend
from dolambda._stats import JobStats

#: jobs started on the portal and not finished: what the process leaves at exit
_RUNNING: set[Job] = set()
_RUNNING_LOCK = threading.Lock()


def _say(message: str) -> None:
    """A word to the user on stderr (the program's stdout stays its own)."""
    print(f"dolambda: {message}", file=sys.stderr, flush=True)


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
        self._future: _sync.PortalFuture[Any] | None = None
        self._left = False  # a second Ctrl-C left it as it was

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

    def output(self, index: int) -> str:
        """What the task that ran iteration ``index`` wrote to stdout and stderr (its
        prints, warnings and logging), the last 64 KiB of it; a task runs a chunk of
        iterations, so this is the output of the whole chunk. Captured on the backends
        that run tasks in other processes (local processes, Lambda); "" when the task
        wrote nothing, and on the sequential backend, whose output is this process's own.
        """
        return self._engine.output(index)

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
            self._cancel_interrupted()
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

    def _cancel_interrupted(self) -> None:
        """Ctrl-C while waiting: finish the cancel (the cancel marker, the queued tasks
        deleted) before the KeyboardInterrupt goes on, at most ``_sync.CANCEL_WAIT``
        seconds; a second Ctrl-C leaves the job as it is."""
        future = self._future
        if future is None or future.done():
            return
        ctx = self._engine.context
        queued = ctx.queued() if ctx is not None and ctx.queued is not None else None
        self._left = True  # until the cancel is seen through (a Ctrl-C may come at any point)
        try:
            self.cancel()
            if queued is None:
                _say(f"cancelling job {self.id}: stopping its tasks; Ctrl-C again to leave at once")
            else:
                _say(
                    f"cancelling job {self.id}: deleting {queued} queued task"
                    f"{'' if queued == 1 else 's'}; Ctrl-C again to leave them"
                )
            ended = _sync.finish_cancelling(future)
        except KeyboardInterrupt:
            ended = "left"
        if ended == "done":
            self._left = False
            _say(f"job {self.id} cancelled")
            return
        if ended == "timeout":
            _say(f"job {self.id}: gave up waiting for its cancel after {_sync.CANCEL_WAIT:g} s")
        else:
            _say(f"left job {self.id} as it was: its queued tasks may still run")
        if ctx is not None and ctx.attachable:
            _say(f"stop them with Job.attach({self.id!r}, backend).cancel()")

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
            self._cancel_interrupted()
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
        with _RUNNING_LOCK:
            _RUNNING.add(self)
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
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        self._notify()

    def _leave(self) -> bool:
        """The process exits while this job runs: a job that is winding down finishes;
        one that an attach can resume is left running for it (and the user told how);
        any other is cancelled. Returns whether there is something to wait for."""
        if self._left or self._future is None or self._future.done():
            return False
        engine, ctx = self._engine, self._engine.context
        if engine.cancel_requested or engine.answered:
            return True  # its cleanup is under way
        if self.backend.keeps_records and ctx is not None and _dispatched(ctx, self._future):
            _say(
                f"job {self.id} is still running on the {self.backend.name} backend "
                f"({self.progress}) as this process exits; resume it with "
                f"Job.attach({self.id!r}, backend), or cancel it with "
                f"Job.attach({self.id!r}, backend).cancel()"
            )
            ctx.detached = True
            self._future.interrupt()
        else:
            _say(f"job {self.id} was still running as this process exits: cancelling it")
            self.cancel()
        return True

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


def _dispatched(ctx: JobContext, future: concurrent.futures.Future[Any]) -> bool:
    """Whether the job's plan is stored (so Job.attach can resume it), waiting a bounded
    time for a dispatch under way to store it."""
    deadline = time.monotonic() + _sync.CANCEL_WAIT
    while not ctx.attachable and not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return ctx.attachable


def _leave_at_exit() -> bool:
    """At interpreter exit, before the portal closes: every running job winds down,
    is left for Job.attach or is cancelled (see Job._leave); waits a bounded time.
    Returns whether a job is still running (one a second Ctrl-C left, or a timeout)."""
    with _RUNNING_LOCK:
        jobs = list(_RUNNING)
    waits = [job._future for job in jobs if job._leave() and job._future is not None]
    if waits:
        with contextlib.suppress(KeyboardInterrupt):
            concurrent.futures.wait(waits, timeout=_sync.CANCEL_WAIT)
    return any(job._future is not None and not job._future.done() for job in jobs)


_sync.on_portal_exit(_leave_at_exit)


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
