"""The run engine: plan a loop, hand its tasks to a backend, combine what comes back.

::

    LoopSpec ──► plan_tasks ──────────────► task source ──► backend.run_tasks ──┐
                  (lazy)          │ InnerDone                                     │ TaskResult
                                  ▼                                               ▼
                            CombineTree.declare ◄──────────── errorhandling ◄── per iteration
                                  │
                                  ▼
                           top-level result (final), progress, stats, as_completed events

One :class:`JobRun` is one run of a job; :class:`~dolambda.Job` is the handle
on it. The engine reads the loop through :class:`~dolambda._core.spec.LoopSpec`
and the backend through the knobs :class:`~dolambda._backends.base.Backend`
declares.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from dolambda._backends.base import Backend, JobContext, JobRecord, TaskResult
from dolambda._core.combine import Accumulator
from dolambda._core.plan import plan_tasks
from dolambda._core.spec import LoopSpec, all_variables, levels
from dolambda._core.tasks import InnerDone, Leaf, PlannedTask
from dolambda._errors import (
    DolambdaError,
    JobCancelled,
    SerializationError,
    SignatureError,
    StorageError,
    TaskError,
    VersionMismatch,
)
from dolambda._stats import JobStats
from dolambda._wire import codec
from dolambda._wire.models import JOB_FAILURES, IterationError, TaskFailure

#: called with the top-level (indexes, values) of each batch as it is combined
OnTop = Callable[[Sequence[int], list[Any]], None]


class _Node:
    __slots__ = ("acc", "expected", "received")

    def __init__(self, acc: Accumulator) -> None:
        self.acc = acc
        self.expected: int | None = None
        self.received = 0


class CombineTree:
    """One accumulator per running loop instance; inner results flow to their parent."""

    def __init__(self, loop: LoopSpec, on_top: OnTop) -> None:
        self.levels = levels(loop)
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


def leaf_error_mode(loop: LoopSpec) -> str:
    """R's rule: the outermost explicit errorhandling wins, else the innermost loop's."""
    for level in levels(loop):
        if level.error_mode is not None:
            return str(level.error_mode)
    return "stop"


def known_total(loop: LoopSpec) -> int | None:
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


def pickled_spec(loop: LoopSpec) -> bytes | None:
    """The pickled loop without its variables (they may be generators) or body: what
    Job.attach needs, or None when its combine functions cannot travel."""
    stripped: LoopSpec | None = None
    for level in reversed(levels(loop)):
        stripped = level.model_copy(
            update={"variables": (), "inner_loop": stripped, "bound_body": None}
        )
    try:
        return codec.dumps(stripped)
    except Exception:
        return None


#: the mean seconds per iteration each body took in this process, by body digest: the
#: next "auto" chunk size for the same body is sized from it (Backend.chunk_size_for)
_SECONDS_PER_ITERATION: dict[str, float] = {}


def _remember(digest: str, seconds: float) -> None:
    _SECONDS_PER_ITERATION.pop(digest, None)
    _SECONDS_PER_ITERATION[digest] = seconds
    while len(_SECONDS_PER_ITERATION) > 256:  # the oldest first
        del _SECONDS_PER_ITERATION[next(iter(_SECONDS_PER_ITERATION))]


# --------------------------------------------------------------------------- failures


def _describe_vars(kwargs: dict[str, Any]) -> str:
    parts = []
    for k, v in kwargs.items():
        r = repr(v)
        parts.append(f"{k}={r if len(r) <= 40 else r[:37] + '...'}")
    return ", ".join(parts)


def _iteration_name(leaf: Leaf) -> str:
    where = str(leaf.path[0]) if len(leaf.path) == 1 else str(leaf.path)
    return f"iteration {where} ({_describe_vars(leaf.kwargs)})"


def iteration_error(leaf: Leaf, err: IterationError, original: BaseException | None) -> TaskError:
    """The TaskError for an iteration whose body raised."""
    return TaskError(
        f"{_iteration_name(leaf)} failed: {err.error_type}: {err.error_message}",
        index=leaf.path[0],
        path=leaf.path,
        variables=leaf.kwargs,
        error_type=err.error_type,
        remote_traceback=err.traceback,
        exception=original,
        output=err.output,
    )


def failure_error(leaf: Leaf, failure: TaskFailure) -> TaskError:
    """The TaskError for an iteration whose task died (timeout, memory, crash, lost)."""
    return TaskError(
        f"{_iteration_name(leaf)} failed: {failure.message}",
        index=leaf.path[0],
        path=leaf.path,
        variables=leaf.kwargs,
        error_type=failure.kind,
    )


#: the error a job-level failure raises, by TaskFailure kind (see JOB_FAILURES)
_JOB_ERRORS: dict[str, type[DolambdaError]] = {
    "signature": SignatureError,
    "version": VersionMismatch,
    "load": SerializationError,
    "code": StorageError,
}


def job_failure_error(job_id: str, backend: str, failure: TaskFailure) -> DolambdaError:
    """The error for a failure no task of the job can escape: nothing ran, whatever the
    errorhandling (so ``"remove"`` does not turn it into an empty success)."""
    return _JOB_ERRORS[failure.kind](
        f"job {job_id} cannot run on the {backend} backend: {failure.message}"
    )


def _progress_bar(show: bool | None, total: int | None, backend: str) -> Any:
    """A tqdm bar on stderr, or None. ``show=None`` follows tqdm's own rule on every
    backend: a bar in Jupyter or when stderr is a terminal, none otherwise (a CI log
    does not fill with ``\\r`` frames); True and False force it on or off."""
    if show is False:
        return None
    stream = sys.stderr
    in_jupyter = "ipykernel" in sys.modules
    if show is None and not in_jupyter and not (stream is not None and stream.isatty()):
        return None  # what tqdm(disable=None) decides, without importing it
    from tqdm.auto import tqdm  # an optional dependency, imported only when a bar may show

    widget = in_jupyter and _is_widget(tqdm)
    options: dict[str, Any] = {"display": False} if widget else {}
    bar = tqdm(
        total=total,
        desc=f"dolambda[{backend}]",
        unit="it",
        leave=True,
        file=stream,
        disable=None if show is None else False,
        **options,
    )
    if bar.disable:
        bar.close()
        return None
    if widget:
        # shown with a display id, so that closing it updates its text form too: a saved
        # notebook (and any viewer without the widget's state) shows the final state
        from IPython.display import display

        shown: Any = bar  # a tqdm_notebook: it has a container (the widget)
        shown.dolambda_display = display(shown.container, display_id=True)  # type: ignore[no-untyped-call]
    return bar


def _is_widget(bar_type: type) -> bool:
    """Whether tqdm.auto picked the Jupyter widget bar (ipywidgets is installed)."""
    try:
        from tqdm.notebook import tqdm_notebook
    except ImportError:  # pragma: no cover - tqdm always has it
        return False
    return issubclass(bar_type, tqdm_notebook)


def _close_bar(bar: Any) -> None:
    bar.close()
    shown = getattr(bar, "dolambda_display", None)
    if shown is not None:
        shown.update(bar.container)  # the widget's text form: its final state, not 0%


# --------------------------------------------------------------------------- the engine


class JobRun:
    """One run of a job: plan it, drive ``backend`` through its tasks, combine.

    ``plan`` and ``seed`` are given for a job rebuilt by ``Backend.attach`` (its
    tasks exist already); ``on_top`` receives each batch of top-level results as it
    is combined. ``done``, ``failed``, ``total`` and ``stats`` may be read while it runs.
    """

    def __init__(
        self,
        job_id: str,
        loop: LoopSpec,
        body: Callable[..., Any],
        backend: Backend,
        *,
        progress: bool | None,
        on_top: OnTop,
        plan: list[PlannedTask | InnerDone] | None = None,
        seed: int | None = None,
    ) -> None:
        self.job_id = job_id
        self.loop = loop
        self.body = body
        self.backend = backend
        self.plan = plan
        self.seed = seed if plan is not None else loop.seed_value
        self.show_progress = progress
        self.done = 0
        self.failed = 0
        self.total: int | None = (
            known_total(loop)
            if plan is None
            else sum(len(t) for t in plan if isinstance(t, PlannedTask))
        )
        self.stats = JobStats(job_id=job_id, backend=backend.name)
        self.context: JobContext | None = None
        self.cancel_requested = False
        self.mode = leaf_error_mode(loop)
        self.tree = CombineTree(loop, on_top)
        self.pending: dict[int, PlannedTask] = {}  # planned, not yet answered
        self.planned_all = False  # the task source is exhausted
        # seconds the body ran and iterations that ran: the next run's chunk size
        self.compute_seconds = 0.0
        self.computed = 0
        self.bar: Any = None
        self.print_summary = False
        # captured output by task id, and the tasks that ran each top-level iteration
        # (only tasks that wrote something)
        self.task_outputs: dict[int, str] = {}
        self.output_tasks: dict[int, list[int]] = {}

    async def run(self) -> Any:
        """Run the job to its combined result; JobCancelled when it was cancelled."""
        started = time.perf_counter()
        try:
            result = await self._execute()
            if self.print_summary:
                self._count(started)
                from tqdm.auto import tqdm  # optional, as for the bar

                # stderr, with the bar: the program's stdout stays its own output
                tqdm.write(f"dolambda: {self.stats.summary()}", file=sys.stderr)
            return result
        except asyncio.CancelledError:
            if self.cancel_requested:
                raise JobCancelled(f"job {self.job_id} was cancelled") from None
            raise
        finally:
            self._count(started)

    @property
    def answered(self) -> bool:
        """Every task was planned and answered: what is left is the backend's cleanup."""
        return self.planned_all and not self.pending

    def _count(self, started: float) -> None:
        self.stats.wall_time = time.perf_counter() - started
        self.stats.iterations = self.done
        self.stats.failed = self.failed

    async def _execute(self) -> Any:
        ctx = self.context = self._context()
        if self.cancel_requested:
            ctx.cancelled.set()
        digest = self._check_body(ctx)
        if self.backend.keeps_records and not ctx.resumed:
            ctx.record = JobRecord(pickled_spec(self.loop))
        await self.backend.prepare()  # (the Lambda backend reads the account's concurrency)
        ctx.chunk_size = self._chunk_size(digest)
        self.bar = _progress_bar(self.show_progress, self.total, self.backend.name)
        try:
            await self._drive(ctx)
        finally:
            if self.bar is not None:
                _close_bar(self.bar)
        return self._conclude(ctx, digest)

    # ------------------------------------------------------------------ before

    def _context(self) -> JobContext:
        return JobContext(
            job_id=self.job_id,
            body=self.body,
            seed=self.seed,
            variables=tuple(all_variables(self.loop)),
            chunk_size=1,
            errorhandling=self.mode,
            stats=self.stats,
            resumed=self.plan is not None,
            export=self.loop.exported,
            noexport=self.loop.not_exported,
        )

    def _check_body(self, ctx: JobContext) -> str | None:
        """The body's digest when it must travel (None for a resumed job, whose body is
        stored already); fails before anything starts if the body cannot be pickled."""
        if self.backend.body_must_pickle and self.plan is None:
            return ctx.body_digest
        return None

    def _chunk_size(self, digest: str | None) -> int:
        if self.loop.chunk == "auto":
            measured = None if digest is None else _SECONDS_PER_ITERATION.get(digest)
            return self.backend.chunk_size_for(self.total, measured)
        return int(self.loop.chunk)

    # ------------------------------------------------------------------ during

    async def _task_source(self, ctx: JobContext) -> AsyncIterator[PlannedTask]:
        """The job's tasks, planned lazily as the backend pulls them; the InnerDone
        markers go to the combine tree (and the backend's record)."""
        planned_leaves = 0
        yielded_at = time.perf_counter()
        source: Iterable[PlannedTask | InnerDone] = (
            self.plan if self.plan is not None else plan_tasks(self.loop, ctx.chunk_size)
        )
        for item in source:
            if isinstance(item, InnerDone):
                if ctx.record is not None:
                    ctx.record.markers.append(item)
                self.tree.declare(item.prefix, item.path, item.count)
                continue
            self.pending[item.task_id] = item
            planned_leaves += len(item)
            yield item
            if time.perf_counter() - yielded_at > 0.005:
                # let results in while a long generator is planned, without paying a
                # loop round per task
                await asyncio.sleep(0)
                yielded_at = time.perf_counter()
        self.total = planned_leaves
        self.planned_all = True
        if self.bar is not None:
            self.bar.total = planned_leaves
            self.bar.refresh()

    async def _drive(self, ctx: JobContext) -> None:
        """Feed the backend and absorb each TaskResult it yields."""
        results = self.backend.run_tasks(ctx, self._task_source(ctx))
        async with contextlib.aclosing(results):
            try:
                async for result in results:
                    before = self.done
                    try:
                        self._absorb(ctx, result)
                    finally:
                        self._show(self.done - before)
            except BaseException:
                ctx.cancelled.set()  # before the backend is closed, so it sees why
                raise

    def _show(self, advanced: int) -> None:
        if self.bar is not None:
            self.bar.update(advanced)
            postfix: dict[str, object] = {}
            if self.failed:
                postfix["failed"] = self.failed
            if self.stats.backups:  # straggler backups sent (the Lambda backend)
                postfix["backups"] = f"{self.stats.backups} ({self.stats.backups_won} won)"
            if self.stats.dispatch == "remote":  # (the Lambda backend: issue 17.2)
                postfix["dispatch"] = "remote"
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def _absorb(self, ctx: JobContext, result: TaskResult) -> None:
        """One task's outcome into the combine tree, iteration by iteration."""
        task = self.pending.pop(result.task_id)
        if result.stats is not None:
            self.stats.tasks.append(result.stats)
        self.stats.retries += max(0, result.attempts - 1)
        if result.failure is not None and result.failure.kind in JOB_FAILURES:
            raise job_failure_error(self.job_id, self.backend.name, result.failure)
        values, errors = result.values, result.errors
        ran = min(len(values), len(task))
        if result.output:
            self._keep_output(task, ran, result.output)
        self.compute_seconds += result.compute_seconds
        self.computed += len(values)
        if not ran:
            pass
        elif task.flat and not errors:
            self.done += ran
            self.tree.deliver_run(
                task.first, task.top_indexes(ran), values if ran == len(values) else values[:ran]
            )
        else:
            for k in range(ran):
                self.done += 1
                err = errors.get(k)
                if err is None:
                    self.tree.deliver(task.slot(k), task.path(k), values[k])
                    continue
                leaf = task.leaf(k)
                original = values[k] if isinstance(values[k], BaseException) else None
                self._fail(leaf, iteration_error(leaf, err, original), original)
        if result.failure is not None:  # the iterations that finished first are kept
            self._fail_all(task, range(ran, len(task)), result.failure)
        elif ran < len(task) and not ctx.cancelled.is_set():
            lost = TaskFailure(kind="lost", message="the worker returned no outcome for it")
            self._fail_all(task, range(ran, len(task)), lost)

    def _keep_output(self, task: PlannedTask, ran: int, output: str) -> None:
        self.task_outputs[task.task_id] = output
        for index in dict.fromkeys(task.path(k)[0] for k in range(ran)):
            self.output_tasks.setdefault(index, []).append(task.task_id)

    def output(self, index: int) -> str:
        """What the task(s) that ran top-level iteration ``index`` wrote (see Job.output)."""
        return "".join(self.task_outputs[t] for t in self.output_tasks.get(index, ()))

    def _fail_all(self, task: PlannedTask, positions: range, failure: TaskFailure) -> None:
        for k in positions:
            self.done += 1
            leaf = task.leaf(k)
            self._fail(leaf, failure_error(leaf, failure), None)

    def _fail(self, leaf: Leaf, error: TaskError, original: BaseException | None) -> None:
        """An iteration failed: raise (stop), drop it (remove) or deliver it (pass)."""
        self.failed += 1
        if self.mode == "stop":
            raise error
        if self.mode == "remove":
            self.tree.deliver(leaf.slots, leaf.path, None, present=False)
        else:
            self.tree.deliver(leaf.slots, leaf.path, original if original is not None else error)

    # ------------------------------------------------------------------ after

    def _conclude(self, ctx: JobContext, digest: str | None) -> Any:
        backend = self.backend
        self.stats.memory_mb = backend.memory_mb
        self.stats.architecture = backend.architecture
        self.print_summary = self.bar is not None and backend.prints_summary
        if ctx.cancelled.is_set() and self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if self.pending:
            raise DolambdaError(
                f"job {self.job_id}: the {backend.name} backend finished without answering "
                f"{len(self.pending)} task(s); this is a bug in the backend"
            )
        if digest is not None and self.computed:
            _remember(digest, self.compute_seconds / self.computed)
        return self.tree.finish()
