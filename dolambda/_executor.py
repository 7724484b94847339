"""A :class:`concurrent.futures.Executor` on top of dolambda jobs.

::

    submit(fn, *args) ──► pending list ──(batch window)──► ONE dolambda job per batch
                                                            foreach(call=[...]).errorhandling("pass")
    map(fn, *its) ─────────────────────────────────────────► ONE dolambda job over zip(*its)
                                                                        │ Job.as_completed()
    concurrent.futures.Future  ◄── set_result / set_exception ◄─────────┘  (on the portal loop)

Every job runs on dolambda's helper ("portal") event loop, never on the
caller's loop, so ``Future.result()`` can block anywhere, Jupyter included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dolambda import _registry, _sync
from dolambda._backends.base import Backend
from dolambda._backends.local import LocalBackend
from dolambda._backends.sequential import SequentialBackend
from dolambda._core.bodies import TB_ATTR, call_any, call_same, call_star
from dolambda._errors import DolambdaError, JobCancelled, TaskError
from dolambda._job import Job
from dolambda._loop import Loop, foreach

T = TypeVar("T")


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of an exception that came back from a worker process, so
    the worker's traceback is shown (as :class:`~concurrent.futures.ProcessPoolExecutor`
    does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


# --------------------------------------------------------------------------- loop bodies
# In dolambda._core.bodies (the deployed package holds it), so that they travel by
# reference; ``fn`` is the user's callable.


def _outcome(value: Any) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, exception)`` for one iteration's delivered value."""
    if isinstance(value, tuple) and len(value) == 1:
        return True, value[0]
    if isinstance(value, TaskError):
        return False, value  # the original exception could not be carried back
    if isinstance(value, BaseException):
        tb = value.__dict__.pop(TB_ATTR, None) if hasattr(value, "__dict__") else None
        if tb and value.__traceback__ is None:  # it crossed a process boundary
            value.__cause__ = RemoteTraceback(tb)
        return False, value
    return False, DolambdaError(f"unexpected iteration value {value!r}; this is a bug")


def _settle(future: concurrent.futures.Future[Any], value: Any) -> None:
    if future.done():
        return
    ok, payload = _outcome(value)
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if ok:
            future.set_result(payload)
        else:
            future.set_exception(payload)


def _as_exception(exc: BaseException) -> BaseException:
    if isinstance(exc, Exception):
        return exc
    return JobCancelled(f"the dolambda job was stopped ({type(exc).__name__})")


def _on_portal_thread() -> bool:
    try:
        return asyncio.get_running_loop() is _sync.portal_loop()
    except RuntimeError:
        return False


@dataclass
class _Call:
    future: concurrent.futures.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class _MapState:
    """Results of a ``map`` job as they arrive (by index), shared with the caller."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    values: dict[int, Any] = field(default_factory=dict)
    finished: bool = False
    error: BaseException | None = None


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` that runs calls as dolambda jobs on
    ``backend`` (a :class:`~dolambda.LocalBackend`, :class:`~dolambda.LambdaBackend`,
    ...), or on the registered backend when ``backend`` is None (resolved once, here;
    with nothing registered it runs sequentially on a helper thread and warns once).

    >>> import operator
    >>> from dolambda import Executor, register
    >>> register("sequential")
    >>> with Executor() as ex:
    ...     future = ex.submit(pow, 2, 10)
    ...     squares = list(ex.map(operator.mul, range(5), range(5)))
    >>> future.result(), squares
    (1024, [0, 1, 4, 9, 16])

    **Batching.** Every dolambda job has a fixed cost (on Lambda: a manifest and the
    pickled body uploaded to S3, and a gather loop polling the results prefix; on
    local processes: a handshake per worker). So ``submit`` does not start a job per
    call: calls that arrive within ``batch_window`` seconds of the first pending one
    (default 5 ms) become one job, one iteration per call (``chunk_size`` calls per
    task). A loop of ``submit`` calls thus costs about one job, like ``map``. The
    price: up to ``batch_window`` of extra latency for the first call of a batch,
    and a call can only be cancelled (``Future.cancel()``) while it still waits for
    its batch; once the job started its future is RUNNING, as in the standard
    executors. ``batch_window=0`` batches only the calls made before the helper loop
    gets to them. Calls in a batch are independent: one failing call does not stop
    the others (``errorhandling("pass")``). When every call in a batch uses the same
    function, it travels once as the job's body; otherwise each call carries its own.

    ``max_jobs`` caps how many batch jobs of this executor run at once; calls made
    meanwhile wait and go together as the next batch when one ends. The default
    (None) is 1 on a :class:`~dolambda.LocalBackend`, whose warm worker processes
    serve one job at a time (an overlapping job would start extra, cold processes),
    and unlimited elsewhere (Lambda scales out per job). ``map`` jobs are not capped.

    **map** is always ONE job over ``zip(*iterables)``: the iterables are consumed
    lazily as the backend takes work (not up front, unlike the standard executors),
    and results are yielded in order as soon as each one and all before it arrived.
    ``chunksize`` (when above 1, else the executor's ``chunk_size``) is the number of
    calls per task. Leaving the result iterator early (``break``, an exception,
    ``timeout``) cancels what is left of the job.

    **Errors.** An exception raised by ``fn`` comes back as itself (with the
    worker's traceback as its ``__cause__`` when it crossed a process boundary);
    when it could not be pickled, :class:`~dolambda.TaskError` describes it. A
    failure of the whole job (a call whose arguments cannot be pickled, a backend
    error) is set on every unfinished future of that job.

    Future callbacks run on dolambda's helper event loop thread: keep them short,
    and do not block on this executor from inside one.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        chunk_size: int | str = 1,
        batch_window: float = 0.005,
        max_jobs: int | None = None,
    ) -> None:
        Loop().chunk_size(chunk_size)  # validates, with dolambda's messages
        if batch_window < 0:
            raise ValueError(f"batch_window must be >= 0 seconds, got {batch_window!r}")
        if backend is None and _registry.current() is None:
            warnings.warn(
                "dolambda.Executor: no parallel backend registered: calls run sequentially "
                "on a helper thread. Register one with dolambda.register(LocalBackend()) or "
                "pass Executor(backend=...).",
                RuntimeWarning,
                stacklevel=2,
            )
            self._backend: Backend = SequentialBackend(offload=True)
        else:
            # offload: jobs run on the helper loop, whose thread must never run a body
            self._backend = _registry.resolve_run_backend(backend, offload=True)
        if max_jobs is not None and (isinstance(max_jobs, bool) or max_jobs < 1):
            raise ValueError(f"max_jobs must be a positive integer or None, got {max_jobs!r}")
        if max_jobs is None and isinstance(self._backend, LocalBackend):
            max_jobs = 1  # its worker processes belong to one job at a time
        self._max_jobs = max_jobs
        self._batch_jobs = 0
        self._chunk_size = chunk_size
        self._batch_window = float(batch_window)
        self._lock = threading.Lock()
        self._pending: list[_Call] = []
        self._flush_scheduled = False
        self._shutdown = False
        self._outstanding: set[concurrent.futures.Future[Any]] = set()
        self._jobs: set[Job] = set()
        self._map_jobs: set[Job] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<dolambda.Executor on {self._backend.name} ({state})>"

    @property
    def backend(self) -> Backend:
        """The dolambda backend the calls run on."""
        return self._backend

    # ------------------------------------------------------------------ submit

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns a :class:`concurrent.futures.Future`."""
        if not callable(fn):
            raise TypeError(f"submit: expected a callable, got {type(fn).__name__}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._pending.append(_Call(future, fn, args, kwargs))
            self._outstanding.add(future)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        future.add_done_callback(self._forget)
        if schedule:
            _sync.portal_loop().call_soon_threadsafe(self._schedule_flush)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(future)

    def _schedule_flush(self) -> None:
        if self._batch_window > 0:
            asyncio.get_running_loop().call_later(self._batch_window, self._flush)
        else:
            self._flush()

    def _flush(self) -> None:
        """On the portal loop: start one job for every call waiting for a batch."""
        with self._lock:
            if self._max_jobs is not None and self._batch_jobs >= self._max_jobs:
                return  # _flush_scheduled stays set: the end of a running batch flushes
            calls, self._pending = self._pending, []
            self._flush_scheduled = False
            live = [c for c in calls if c.future.set_running_or_notify_cancel()]
            if not live:
                return
            self._batch_jobs += 1
        fns = {id(c.fn) for c in live}
        body: Callable[..., Any]
        values: list[Any]
        if len(fns) == 1:
            body = functools.partial(call_same, live[0].fn)
            values = [(c.args, c.kwargs) for c in live]
        else:
            body = call_any
            values = [(c.fn, c.args, c.kwargs) for c in live]
        futures = [c.future for c in live]

        def deliver(index: int, value: Any) -> None:
            _settle(futures[index], value)

        def end(error: BaseException | None) -> None:
            failure = _as_exception(error) if error is not None else None
            for f in futures:
                if not f.done():
                    _settle_error(f, failure or DolambdaError("the job ended without a result"))
            with self._lock:
                self._batch_jobs -= 1
                waiting = self._flush_scheduled
            if waiting:
                self._flush()

        spec = foreach(call=values).errorhandling("pass").chunk_size(self._chunk_size)
        try:
            self._start(spec, body, deliver, end)
        except Exception as exc:
            end(exc)

    # ------------------------------------------------------------------ jobs

    def _start(
        self,
        spec: Loop,
        body: Callable[..., Any],
        deliver: Callable[[int, Any], None],
        end: Callable[[BaseException | None], None],
    ) -> Job:
        """On the portal loop: submit the job there and drain it into the callbacks."""
        job = spec.submit(body, backend=self._backend, progress=False)
        task = asyncio.get_running_loop().create_task(self._drain(job, deliver, end))
        with self._lock:
            self._jobs.add(job)
            self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _drain(
        self,
        job: Job,
        deliver: Callable[[int, Any], None],
        end: Callable[[BaseException | None], None],
    ) -> None:
        error: BaseException | None = None
        try:
            async for index, value in job.as_completed():
                deliver(index, value)
            await job
        except BaseException as exc:
            error = exc
        finally:
            with self._lock:
                self._jobs.discard(job)
            end(error)
        if isinstance(error, asyncio.CancelledError):
            raise error

    def _start_from_caller(
        self,
        spec: Loop,
        body: Callable[..., Any],
        deliver: Callable[[int, Any], None],
        end: Callable[[BaseException | None], None],
    ) -> Job:
        if _on_portal_thread():
            return self._start(spec, body, deliver, end)

        async def start() -> Job:
            return self._start(spec, body, deliver, end)

        return _sync.submit_to_portal(start()).result()

    # ------------------------------------------------------------------ map

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``fn`` over the zipped ``iterables`` as ONE dolambda job; results in order.

        The iterables are consumed lazily. ``timeout`` (seconds from this call) makes
        ``next()`` raise :class:`TimeoutError` when a result is late.
        """
        if not callable(fn):
            raise TypeError(f"map: expected a callable, got {type(fn).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        size: int | str = chunksize if chunksize > 1 else self._chunk_size
        spec = foreach(args=zip(*iterables, strict=False)).errorhandling("pass").chunk_size(size)
        state = _MapState()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()

        def deliver(index: int, value: Any) -> None:
            with state.cond:
                state.values[index] = value
                state.cond.notify_all()

        def end(error: BaseException | None) -> None:
            with state.cond:
                state.finished = True
                state.error = error
                state.cond.notify_all()
            done.set_result(None)

        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._outstanding.add(done)
        done.add_done_callback(self._forget)
        try:
            job = self._start_from_caller(spec, functools.partial(call_star, fn), deliver, end)
        except BaseException:
            self._forget(done)
            raise
        with self._lock:
            if not done.done():
                self._map_jobs.add(job)
        done.add_done_callback(lambda _: self._discard_map_job(job))
        return _map_results(job, state, deadline)

    def _discard_map_job(self, job: Job) -> None:
        with self._lock:
            self._map_jobs.discard(job)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures``, cancel calls still waiting for their
        batch and stop running ``map`` jobs; with ``wait``, block until the rest is done
        and every job of this executor has wound down (``with Executor() as ex:`` ends so).
        Calls already waiting for a batch are started at once rather than after the
        batch window."""
        with self._lock:
            self._shutdown = True
            cancelled: list[_Call] = []
            if cancel_futures:
                cancelled, self._pending = self._pending, []
            pending = bool(self._pending)
            outstanding = list(self._outstanding)
        for call in cancelled:
            if call.future.cancel():
                call.future.set_running_or_notify_cancel()  # now "done" for wait()
        if cancel_futures:
            self._cancel_map_jobs()
        if pending:
            _sync.portal_loop().call_soon_threadsafe(self._flush)
        if wait:
            concurrent.futures.wait(outstanding)
            self._wait_for_jobs()

    def _wait_for_jobs(self) -> None:
        """Wait until this executor's jobs have wound down (their backends' cleanup:
        on Lambda, the job's objects deleted), not only until their futures are set:
        a process that exits next then leaves nothing running on the helper loop."""
        if _on_portal_thread():
            return  # (a future callback: the jobs cannot finish while it blocks)
        with self._lock:
            jobs = [job._future for job in self._jobs | self._map_jobs]
        concurrent.futures.wait([f for f in jobs if f is not None])

    def _cancel_map_jobs(self) -> None:
        with self._lock:
            jobs = list(self._map_jobs)
        for job in jobs:
            job.cancel()

    def _abort(self) -> None:
        """Shut down and stop every running job (their futures get JobCancelled)."""
        self.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()


def _settle_error(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_exception(error)


def _map_results(job: Job, state: _MapState, deadline: float | None) -> Iterator[Any]:
    """Yield the map results in order; raise a call's exception at its position."""
    try:
        index = 0
        while True:
            with state.cond:
                while index not in state.values and not state.finished:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"map: result {index} did not arrive in time")
                    state.cond.wait(remaining)
                if index in state.values:
                    value = state.values.pop(index)
                elif state.error is not None:
                    if isinstance(state.error, JobCancelled | asyncio.CancelledError):
                        raise concurrent.futures.CancelledError(str(state.error))
                    raise _as_exception(state.error)
                else:
                    return
            ok, payload = _outcome(value)
            if not ok:
                raise payload
            index += 1
            yield payload
    finally:
        if not state.finished:
            job.cancel()
