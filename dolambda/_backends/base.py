"""The backend contract, and nothing else: one async method that runs a job's tasks.

A backend receives a :class:`JobContext` and an async iterator of planned
tasks (pulled lazily, so it bounds how much is in flight) and yields one
:class:`TaskResult` per task, in completion order. Everything else (planning,
combine, error handling, progress, stats) is built once above it, in
:mod:`dolambda._core.run`. Every knob the engine, :class:`~dolambda.Job` or
:class:`~dolambda.Loop` reads from a backend is declared on :class:`Backend`.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from dolambda._core.execute import ChunkRun, binds_positionally
from dolambda._core.spec import LoopSpec
from dolambda._core.tasks import InnerDone, PlannedTask
from dolambda._errors import DolambdaError
from dolambda._stats import JobStats
from dolambda._wire import codec
from dolambda._wire.models import IterationError, TaskFailure, TaskStats


@dataclass
class JobRecord:
    """What a backend that keeps records of its jobs (:attr:`Backend.keeps_records`)
    stores so that :meth:`Backend.attach` can rebuild a job whose client died."""

    #: the pickled loop spec without its variables and body (its combine, errorhandling,
    #: nesting); None when it cannot be pickled (then the job cannot be attached)
    spec: bytes | None
    #: the plan's InnerDone markers, appended as the engine plans the job
    markers: list[InnerDone] = field(default_factory=list)


@dataclass
class JobContext:
    """A job as a backend sees it."""

    job_id: str
    body: Callable[..., Any]
    seed: int | None
    variables: tuple[str, ...]
    chunk_size: int
    errorhandling: str
    #: set when the job is stopping (cancelled, or an iteration failed with "stop"):
    #: take no new task and stop running ones where possible
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    created_at: float = field(default_factory=time.time)
    #: the job's statistics: the engine fills them from the TaskResults; a backend adds
    #: what only it measures (the requests the client made to its service)
    stats: JobStats = field(default_factory=JobStats)
    #: for a backend that keeps records (Backend.keeps_records), what it must store for
    #: Backend.attach; None for other backends and for a job rebuilt by attach
    record: JobRecord | None = None
    #: the job was rebuilt by Backend.attach: its tasks exist already, send none again
    resumed: bool = False
    #: the loop's ``.export(...)`` (modules, module objects or paths that must travel
    #: with the job) and ``.noexport(...)`` (top-level module names that must not), for
    #: a backend that ships the user's code (:mod:`dolambda._code`)
    export: tuple[Any, ...] = ()
    noexport: tuple[str, ...] = ()
    #: the client leaves the job running (its process exits): end the run without
    #: stopping the job (no cancel marker, nothing deleted), so that attach resumes it
    detached: bool = False
    #: set by a backend that keeps records once the job's plan is stored: from then on
    #: :meth:`Backend.attach` can resume it
    attachable: bool = False
    #: for a backend with a queue: how many tasks are sent and not answered yet (what
    #: a cancel deletes); None otherwise
    queued: Callable[[], int] | None = None

    @cached_property
    def positional(self) -> bool:
        """Whether the body may be called with each row's values by position."""
        return binds_positionally(self.body, self.variables)

    @cached_property
    def body_bytes(self) -> bytes:
        """The pickled body; raises SerializationError when it cannot travel."""
        return codec.dumps_body(self.body)

    @cached_property
    def body_digest(self) -> str:
        return codec.digest(self.body_bytes)


@dataclass
class TaskResult:
    """A task's outcome in memory, as the job core consumes it: the first
    ``len(values)`` iterations of the task ran; ``values[k]`` is iteration k's result,
    or its exception when ``k in errors``; it ran from ``ticks[k]`` to ``ticks[k + 1]``."""

    task_id: int
    values: list[Any] = field(default_factory=list)
    ticks: Sequence[float] = ()
    errors: dict[int, IterationError] = field(default_factory=dict)
    failure: TaskFailure | None = None
    stats: TaskStats | None = None
    attempts: int = 1
    #: what the task's iterations wrote to stdout and stderr (its last 64 KiB)
    output: str = ""

    @classmethod
    def of_run(cls, task_id: int, run: ChunkRun) -> TaskResult:
        return cls(task_id, run.values, run.ticks, run.errors, output=run.output)

    @property
    def compute_seconds(self) -> float:
        """Seconds the body ran over the whole task."""
        return self.ticks[-1] - self.ticks[0] if len(self.ticks) > 1 else 0.0


@dataclass(frozen=True)
class AttachedJob:
    """What :meth:`Backend.attach` found of a job: enough for ``Job.attach`` to
    rebuild it and resume gathering."""

    job_id: str
    #: the loop spec without variables or body (what combines the results)
    spec: LoopSpec
    #: every task of the job and the plan's InnerDone markers
    plan: list[PlannedTask | InnerDone]
    seed: int | None


class Backend(abc.ABC):
    """Where tasks run. Subclasses implement :meth:`run_tasks` (one async method).

    >>> from dolambda import Backend, LocalBackend
    >>> isinstance(LocalBackend(workers=2), Backend)
    True
    """

    #: the backend's name in progress bars, stats and ``registered()``
    name: ClassVar[str] = "backend"
    #: iterations run in other processes: the body must pickle (checked before anything
    #: starts), and "auto" chunks are sized from the body's last measured run
    body_must_pickle: ClassVar[bool] = False
    #: print the job's stats summary (its estimated cost) after a job with a progress bar
    prints_summary: ClassVar[bool] = False
    #: sync verbs run the job on the helper thread's loop (where clients stay warm
    #: across jobs) even when no event loop is running in the caller's thread
    run_on_portal: ClassVar[bool] = False
    #: the backend stores each job's JobRecord, so that attach can resume it
    keeps_records: ClassVar[bool] = False
    #: tasks run on AWS Lambda: ``do_lambda`` takes only such a backend
    runs_on_lambda: ClassVar[bool] = False
    #: memory (MB) each worker is billed for, for the cost estimate (0: not billed)
    memory_mb: int = 0
    #: the workers' CPU architecture, for the cost estimate ("x86_64" or "arm64")
    architecture: str = "x86_64"

    @property
    def workers(self) -> int:
        """How many tasks may run at once."""
        return 1

    async def prepare(self) -> None:
        """Called before each job sizes its chunks (:meth:`chunk_size_for`, :attr:`workers`):
        a backend may look up what sizes them here. The default does nothing."""
        return None

    def chunk_size_for(self, total: int | None, per_iteration: float | None = None) -> int:
        """The chunk size used when the loop says ``"auto"``; ``per_iteration`` is the
        mean seconds an iteration of the same body took last time, when known."""
        if total is None:
            return 8
        return max(1, min(1000, -(-total // (self.workers * 4))))

    def describe(self) -> tuple[str, int]:
        """``(name, workers)``, as ``registered()`` reports them."""
        return (self.name, self.workers)

    @abc.abstractmethod
    def run_tasks(
        self, job: JobContext, tasks: AsyncIterator[PlannedTask]
    ) -> AsyncGenerator[TaskResult, None]:
        """Run every task from ``tasks``; yield one TaskResult per task as each completes.

        When ``job.cancelled`` is set, stop taking tasks and stop running ones
        where possible. Closing the returned iterator early must release every
        resource the run took.
        """

    async def attach(self, job_id: str) -> AttachedJob:
        """Find a job this backend ran (see :attr:`keeps_records`) to resume it."""
        raise DolambdaError(
            f"job {job_id!r} cannot be attached: the {self.name} backend keeps no record "
            "of its jobs; only LambdaBackend jobs can be resumed"
        )
