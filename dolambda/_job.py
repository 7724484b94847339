"""Running a loop: plan, hand tasks to a backend, combine what comes back.

::

    Loop ──► plan_tasks ───────────────► task source ──► backend.run_tasks ──┐
               (lazy)          │ InnerDone                                     │ TaskResult
                               ▼                                               ▼
                         CombineTree.declare ◄──────────── errorhandling ◄── per iteration
                               │
                               ▼
                        top-level result (final), progress, stats, as_completed events

The :class:`Job` handle wraps one run: ``result()``, ``await job``,
``cancel()``, ``progress``, ``as_completed()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dolambda import _sync
from dolambda._backends.base import Backend, JobContext, TaskResult
from dolambda._core.combine import Accumulator
from dolambda._core.plan import InnerDone, Leaf, PlannedTask, all_variables, plan_tasks
from dolambda._errors import DolambdaError, JobCancelled, TaskError
from dolambda._stats import JobStats
from dolambda._wire import codec
from dolambda._wire.models import TaskFailure

if TYPE_CHECKING:
    from dolambda._loop import Loop


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


class _Node:
    __slots__ = ("acc", "expected", "received")

    def __init__(self, acc: Accumulator) -> None:
        self.acc = acc
        self.expected: int | None = None
        self.received = 0


class CombineTree:
    """One accumulator per running loop instance; inner results flow to their parent."""

    def __init__(self, loop: Loop, on_top: Callable[[Sequence[int], list[Any]], None]) -> None:
        self.levels: list[Loop] = []
        level: Loop | None = loop
        while level is not None:
            self.levels.append(level)
            level = level.inner_loop
        self.on_top = on_top
        self.nodes: dict[tuple[int, ...], _Node] = {(): _Node(loop.combine_spec.accumulator())}

    def _node(self, prefix: tuple[int, ...]) -> _Node:
        node = self.nodes.get(prefix)
        if node is None:
            node = _Node(self.levels[len(prefix)].combine_spec.accumulator())
            self.nodes[prefix] = node
        return node

    def deliver(
        self, slots: tuple[int, ...], path: tuple[int, ...], value: Any, present: bool = True
    ) -> None:
        prefix = slots[:-1]
        node = self._node(prefix)
        if present:
            node.acc.put(slots[-1], value)
        else:
            node.acc.skip(slots[-1])
        node.received += 1
        if not prefix:
            if present:
                self.on_top((path[0],), [value])
            return
        self._maybe_finish(prefix, path[:-1])

    def deliver_run(self, first: int, indexes: Sequence[int], values: list[Any]) -> None:
        """The values of top-level slots ``first, first + 1, ...`` (a flat loop's task)."""
        node = self.nodes[()]
        node.acc.put_run(first, values)
        node.received += len(values)
        self.on_top(indexes, values)

    def declare(self, prefix: tuple[int, ...], path: tuple[int, ...], count: int) -> None:
        node = self._node(prefix)
        node.expected = count
        self._maybe_finish(prefix, path)

    def _maybe_finish(self, prefix: tuple[int, ...], path: tuple[int, ...]) -> None:
        if not prefix:
            return
        node = self.nodes[prefix]
        if node.expected is not None and node.received == node.expected:
            del self.nodes[prefix]
            self.deliver(prefix, path, node.acc.finish())

    def finish(self) -> Any:
        return self.nodes[()].acc.finish()


def leaf_error_mode(loop: Loop) -> str:
    """R's rule: the outermost explicit errorhandling wins, else the innermost loop's."""
    level: Loop | None = loop
    innermost = "stop"
    while level is not None:
        if level.error_mode is not None:
            return str(level.error_mode)
        level = level.inner_loop
    return innermost


def known_total(loop: Loop) -> int | None:
    """The number of iterations when it can be known without consuming anything."""
    if loop.inner_loop is not None or loop.predicate is not None:
        return None
    sizes = []
    for _, value in loop.variables:
        if isinstance(value, (range, list, tuple, str, bytes, dict, set, frozenset)) or (
            hasattr(value, "__len__") and hasattr(value, "__getitem__")
        ):
            try:
                sizes.append(len(value))
            except TypeError:
                return None
        else:
            return None
    return min(sizes) if sizes else 0


def _describe_vars(kwargs: dict[str, Any]) -> str:
    parts = []
    for k, v in kwargs.items():
        r = repr(v)
        parts.append(f"{k}={r if len(r) <= 40 else r[:37] + '...'}")
    return ", ".join(parts)


def _iteration_name(leaf: Leaf) -> str:
    where = str(leaf.path[0]) if len(leaf.path) == 1 else str(leaf.path)
    return f"iteration {where} ({_describe_vars(leaf.kwargs)})"


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
        loop: Loop,
        body: Callable[..., Any],
        backend: Backend,
        *,
        progress: bool | None = None,
        job_id: str | None = None,
        plan: list[PlannedTask | InnerDone] | None = None,
        seed: int | None = None,
    ) -> None:
        self.id = job_id or new_job_id()
        self._plan = plan
        self._seed = seed if plan is not None else loop.seed_value
        self._loop_spec = loop
        self._body = body
        self.backend = backend
        self._show_progress = (
            getattr(backend, "progress_default", backend.remote) if progress is None else progress
        )
        self._done = 0
        self._failed = 0
        self._total: int | None = (
            known_total(loop)
            if plan is None
            else sum(len(t) for t in plan if isinstance(t, PlannedTask))
        )
        self.stats = JobStats(job_id=self.id, backend=backend.name)
        # top-level (indexes, values) as combined, a batch per task, for as_completed
        self._events: list[tuple[Sequence[int], list[Any]]] = []
        self._event_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._events_lock = threading.Lock()
        self._finished = False
        self._cancel_requested = False
        self._ctx: JobContext | None = None
        self._task: asyncio.Task[Any] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._future: concurrent.futures.Future[Any] | None = None
        self._print_summary = False

    def __repr__(self) -> str:
        state = "done" if self._finished else "running"
        return f"<Job {self.id} {state} {self.progress} on {self.backend.name}>"

    # ------------------------------------------------------------------ public handle

    @property
    def progress(self) -> Progress:
        """Iterations done (including failed) of the total, when known."""
        return Progress(self._done, self._total, self._failed)

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
        self._cancel_requested = True
        loop, task = self._task_loop, self._task
        if self._ctx is not None and loop is not None:
            loop.call_soon_threadsafe(self._ctx.cancelled.set)
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)
        elif self._future is not None:
            self._future.cancel()

    async def as_completed(self) -> AsyncIterator[tuple[int, Any]]:
        """Yield ``(index, value)`` for each top-level iteration as it is combined."""
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

    @classmethod
    def attach(cls, job_id: str, backend: Backend | None = None) -> Job:
        """Resume gathering a job after the client that submitted it died."""
        from dolambda._registry import resolve_remote_backend

        target = resolve_remote_backend(backend, lambda_only=False)
        job: Job = _sync.run_sync(target.attach(job_id))
        return job

    # ------------------------------------------------------------------ starting

    def start_on_portal(self) -> Job:
        """Run the job on the helper thread's loop: ``result()`` may then block anywhere
        and ``await job`` works from any event loop."""
        self._future = _sync.submit_to_portal(self._run_here())
        return self

    async def _run_here(self) -> Any:
        self._task_loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        return await self._run()

    # ------------------------------------------------------------------ the core

    def _notify(self) -> None:
        for loop, event in list(self._event_waiters):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def _on_top(self, indexes: Sequence[int], values: list[Any]) -> None:
        with self._events_lock:
            self._events.append((indexes, values))
        if self._event_waiters:
            self._notify()

    async def _run(self) -> Any:
        self._task_loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            result = await self._execute()
            if self._print_summary:
                self.stats.wall_time = time.perf_counter() - started
                self.stats.iterations, self.stats.failed = self._done, self._failed
                from tqdm.auto import tqdm

                tqdm.write(f"dolambda: {self.stats.summary()}")
            return result
        except asyncio.CancelledError:
            if self._cancel_requested:
                raise JobCancelled(f"job {self.id} was cancelled") from None
            raise
        finally:
            self.stats.wall_time = time.perf_counter() - started
            self.stats.iterations = self._done
            self.stats.failed = self._failed
            with self._events_lock:
                self._finished = True
            self._notify()

    async def _execute(self) -> Any:
        loop, backend = self._loop_spec, self.backend
        ctx = JobContext(
            job_id=self.id,
            body=self._body,
            seed=self._seed,
            variables=tuple(all_variables(loop)),
            chunk_size=1,
            errorhandling=leaf_error_mode(loop),
            attached=self._plan is not None,
        )
        self._ctx = ctx
        if self._cancel_requested:
            ctx.cancelled.set()
        digest = None
        if backend.remote and self._plan is None:
            digest = ctx.body_digest  # fails before anything starts if the body cannot travel
            ctx.client_state = _client_state(loop)
        if loop.chunk == "auto":
            measured = None if digest is None else _SECONDS_PER_ITERATION.get(digest)
            ctx.chunk_size = backend.chunk_size_for(self._total, measured)
        else:
            ctx.chunk_size = int(loop.chunk)
        chunk_size = ctx.chunk_size
        # seconds the body ran and iterations that ran: the next run's chunk size
        compute_seconds, computed = 0.0, 0
        mode = leaf_error_mode(loop)
        tree = CombineTree(loop, self._on_top)
        pending: dict[int, PlannedTask] = {}
        planned_leaves = 0
        bar = _progress_bar(self._show_progress, self._total, backend.name)

        async def task_source() -> AsyncIterator[PlannedTask]:
            nonlocal planned_leaves
            yielded_at = time.perf_counter()
            source = self._plan if self._plan is not None else plan_tasks(loop, chunk_size)
            for item in source:
                if isinstance(item, InnerDone):
                    ctx.markers.append(item)
                    tree.declare(item.prefix, item.path, item.count)
                    continue
                pending[item.task_id] = item
                planned_leaves += len(item)
                yield item
                if time.perf_counter() - yielded_at > 0.005:
                    # let results in while a long generator is planned, without paying a
                    # loop round per task
                    await asyncio.sleep(0)
                    yielded_at = time.perf_counter()
            self._total = planned_leaves
            if bar is not None:
                bar.total = planned_leaves
                bar.refresh()

        def fail(leaf: Leaf, error: TaskError, original: BaseException | None) -> None:
            self._failed += 1
            if mode == "stop":
                raise error
            if mode == "remove":
                tree.deliver(leaf.slots, leaf.path, None, present=False)
            else:
                tree.deliver(leaf.slots, leaf.path, original if original is not None else error)

        def absorb(result: TaskResult) -> None:
            nonlocal compute_seconds, computed
            task = pending.pop(result.task_id)
            if result.stats is not None:
                self.stats.tasks.append(result.stats)
            self.stats.retries += max(0, result.attempts - 1)
            if result.failure is not None:
                for k in range(len(task)):
                    self._done += 1
                    leaf = task.leaf(k)
                    fail(leaf, _failure_error(leaf, result.failure), None)
                return
            values, errors = result.values, result.errors
            ran = min(len(values), len(task))
            compute_seconds += result.compute_seconds
            computed += len(values)
            if task.flat and not errors:
                self._done += ran
                tree.deliver_run(
                    task.first,
                    task.top_indexes(ran),
                    values if ran == len(values) else values[:ran],
                )
            else:
                for k in range(ran):
                    self._done += 1
                    err = errors.get(k)
                    if err is None:
                        tree.deliver(task.slot(k), task.path(k), values[k])
                        continue
                    leaf = task.leaf(k)
                    original = values[k] if isinstance(values[k], BaseException) else None
                    error = TaskError(
                        f"{_iteration_name(leaf)} failed: {err.error_type}: {err.error_message}",
                        index=leaf.path[0],
                        path=leaf.path,
                        variables=leaf.kwargs,
                        error_type=err.error_type,
                        remote_traceback=err.traceback,
                        exception=original,
                    )
                    fail(leaf, error, original)
            if ran < len(task) and not ctx.cancelled.is_set():
                failure = TaskFailure(kind="lost", message="the worker returned no outcome for it")
                for k in range(ran, len(task)):
                    self._done += 1
                    leaf = task.leaf(k)
                    fail(leaf, _failure_error(leaf, failure), None)

        try:
            async with contextlib.aclosing(backend.run_tasks(ctx, task_source())) as results:
                try:
                    async for result in results:
                        before = self._done
                        try:
                            absorb(result)
                        finally:
                            if bar is not None:
                                bar.update(self._done - before)
                                if self._failed:
                                    bar.set_postfix(failed=self._failed, refresh=False)
                except BaseException:
                    ctx.cancelled.set()  # before the backend is closed, so it sees why
                    raise
        finally:
            if bar is not None:
                bar.close()
        self.stats.client_s3_requests = dict(ctx.client_requests)
        self.stats.memory_mb = int(getattr(backend, "memory_mb", 0) or 0)
        self.stats.architecture = str(getattr(backend, "architecture", "x86_64"))
        self._print_summary = bar is not None and backend.name == "lambda"
        if ctx.cancelled.is_set() and self._cancel_requested:
            raise JobCancelled(f"job {self.id} was cancelled")
        if pending:
            raise DolambdaError(
                f"job {self.id}: the {backend.name} backend finished without answering "
                f"{len(pending)} task(s); this is a bug in the backend"
            )
        if digest is not None and computed:
            _remember(digest, compute_seconds / computed)
        return tree.finish()


#: the mean seconds per iteration each body took in this process, by body digest: the
#: next "auto" chunk size for the same body is sized from it (Backend.chunk_size_for)
_SECONDS_PER_ITERATION: dict[str, float] = {}


def _remember(digest: str, seconds: float) -> None:
    _SECONDS_PER_ITERATION.pop(digest, None)
    _SECONDS_PER_ITERATION[digest] = seconds
    while len(_SECONDS_PER_ITERATION) > 256:  # the oldest first
        del _SECONDS_PER_ITERATION[next(iter(_SECONDS_PER_ITERATION))]


def _client_state(loop: Loop) -> bytes | None:
    """The pickled loop without its variables (they may be generators): what Job.attach
    needs, or None when its combine functions cannot travel."""
    stripped: Loop | None = None
    levels: list[Loop] = []
    level: Loop | None = loop
    while level is not None:
        levels.append(level)
        level = level.inner_loop
    for lv in reversed(levels):
        stripped = lv.model_copy(
            update={"variables": (), "inner_loop": stripped, "bound_body": None}
        )
    try:
        return codec.dumps(stripped)
    except Exception:
        return None


def _failure_error(leaf: Leaf, failure: TaskFailure) -> TaskError:
    return TaskError(
        f"{_iteration_name(leaf)} failed: {failure.message}",
        index=leaf.path[0],
        path=leaf.path,
        variables=leaf.kwargs,
        error_type=failure.kind,
    )


def _progress_bar(show: bool, total: int | None, backend: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"dolambda[{backend}]", unit="it", leave=True)
