"""The backend interface: one async method that runs a job's tasks.

A backend receives a :class:`JobContext` and an async iterator of planned
tasks (pulled lazily, so it bounds how much is in flight) and yields one
:class:`TaskResult` per task, in completion order. Everything else (planning,
combine, error handling, progress, stats) is built once above it in
:mod:`dolambda._job`.
"""

from __future__ import annotations

import abc
import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import dill

from dolambda._core.execute import ChunkRun, binds_positionally
from dolambda._core.plan import PlannedTask
from dolambda._errors import SerializationError
from dolambda._wire import codec
from dolambda._wire.codec import (
    body_context,
    decode_values,
    manifest_context,
    python_version,
    task_context,
)
from dolambda._wire.models import (
    IterationError,
    JobManifest,
    TaskFailure,
    TaskOutcome,
    TaskSpec,
    TaskStats,
    unpack_ticks,
)


@dataclass
class JobContext:
    """A job as a backend sees it."""

    job_id: str
    body: Callable[..., Any]
    seed: int | None
    variables: tuple[str, ...]
    chunk_size: int
    errorhandling: str
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    trigger: str = "local"
    task_timeout: float | None = None
    created_at: float = field(default_factory=time.time)
    #: InnerDone markers seen so far (the Lambda backend stores them for Job.attach)
    markers: list[Any] = field(default_factory=list)
    #: the pickled loop spec without its variables (the Lambda backend stores it for attach)
    client_state: bytes | None = None
    #: S3 requests the client made for this job, by kind (filled by the Lambda backend)
    client_requests: dict[str, int] = field(default_factory=dict)
    #: set by Job.attach: tasks already exist in the queue and must not be uploaded again
    attached: bool = False

    @cached_property
    def positional(self) -> bool:
        """Whether the body may be called with each row's values by position."""
        return binds_positionally(self.body, self.variables)

    @cached_property
    def body_bytes(self) -> bytes:
        return codec.dumps_body(self.body)

    @cached_property
    def body_digest(self) -> str:
        return codec.digest(self.body_bytes)

    @cached_property
    def manifest(self) -> JobManifest:
        return JobManifest(
            job_id=self.job_id,
            created_at=self.created_at,
            python=python_version(),
            dill_version=str(dill.__version__),
            body_digest=self.body_digest,
            seed=self.seed,
            variables=self.variables,
            chunk_size=self.chunk_size,
            trigger=self.trigger,  # type: ignore[arg-type]
            task_timeout=self.task_timeout,
            errorhandling=self.errorhandling,  # type: ignore[arg-type]
        )

    @cached_property
    def sealed_manifest(self) -> bytes:
        return codec.seal_model(self.manifest, key=self.key, context=manifest_context(self.job_id))

    @cached_property
    def sealed_body(self) -> bytes:
        return codec.seal(self.body_bytes, key=self.key, context=body_context(self.job_id))

    def encode_task(
        self, task: PlannedTask, attempt: int = 0, *, with_job: bool = False
    ) -> TaskSpec:
        """A planned task as a wire task; raises SerializationError naming the variable.

        ``with_job`` puts the sealed manifest and body in the task, so that a worker
        new to this job needs no request for them.
        """
        try:
            blob = codec.dumps(task.rows)
        except Exception as exc:
            raise _unpicklable_argument(task, exc) from exc
        return TaskSpec(
            job_id=self.job_id,
            task_id=task.task_id,
            attempt=attempt,
            first=task.first,
            count=len(task.rows),
            paths=task.paths,  # type: ignore[arg-type]
            slots=task.slots,  # type: ignore[arg-type]
            args=blob,
            job_manifest=self.sealed_manifest if with_job else None,
            job_body=self.sealed_body if with_job else None,
        )

    def sealed_task(self, task: PlannedTask, attempt: int = 0, *, with_job: bool = False) -> bytes:
        return codec.seal_model(
            self.encode_task(task, attempt, with_job=with_job),
            key=self.key,
            context=task_context(self.job_id, task.task_id),
        )


def _unpicklable_argument(task: PlannedTask, exc: Exception) -> Exception:
    for k, row in enumerate(task.rows):
        for name, value in zip(task.names, row, strict=True):
            try:
                codec.dumps(value)
            except Exception:
                path = task.path(k)
                where = path[0] if len(path) == 1 else path
                return SerializationError(
                    f"variable {name!r} of iteration {where} "
                    f"({codec.describe(value)}) cannot be serialized with dill: "
                    f"{type(exc).__name__}: {exc}"
                )
    return SerializationError(f"a task's arguments cannot be serialized: {exc}")


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

    @classmethod
    def of_run(cls, task_id: int, run: ChunkRun) -> TaskResult:
        return cls(task_id, run.values, run.ticks, run.errors)

    @property
    def compute_seconds(self) -> float:
        """Seconds the body ran over the whole task."""
        return self.ticks[-1] - self.ticks[0] if len(self.ticks) > 1 else 0.0


def decode_outcome(outcome: TaskOutcome, attempts: int = 1) -> TaskResult:
    """Turn a verified wire outcome into a TaskResult (values unpickled)."""
    return TaskResult(
        task_id=outcome.task_id,
        values=decode_values(outcome),
        ticks=unpack_ticks(outcome.ticks),
        errors={e.position: e for e in outcome.errors},
        failure=outcome.failure,
        stats=outcome.stats,
        attempts=attempts,
    )


async def fan_in(
    out: asyncio.Queue[TaskResult | BaseException | None],
    producers: list[Coroutine[Any, Any, None]],
) -> AsyncGenerator[TaskResult, None]:
    """Run ``producers`` concurrently and yield the TaskResults they put on ``out``.

    The first exception a producer raises is re-raised here; leaving early (or an
    error) cancels every producer and waits for their cleanup.
    """

    async def guard(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await out.put(exc)
            raise
        finally:
            out.put_nowait(None)

    tasks = [asyncio.create_task(guard(c)) for c in producers]
    running = len(tasks)
    try:
        while running:
            item = await out.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Backend(abc.ABC):
    """Where tasks run. Subclasses implement :meth:`run_tasks` (one async method).

    >>> from dolambda import Backend, LocalBackend
    >>> isinstance(LocalBackend(workers=2), Backend)
    True
    """

    name: str = "backend"
    #: whether iterations leave this process (progress on by default, body must pickle)
    remote: bool = False

    @property
    def workers(self) -> int:
        return 1

    def chunk_size_for(self, total: int | None, per_iteration: float | None = None) -> int:
        """The chunk size used when the loop says ``"auto"``; ``per_iteration`` is the
        mean seconds an iteration of the same body took last time, when known."""
        if total is None:
            return 8
        return max(1, min(1000, -(-total // (self.workers * 4))))

    def describe(self) -> tuple[str, int]:
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

    async def attach(self, job_id: str) -> Any:
        from dolambda._errors import DolambdaError

        raise DolambdaError(
            f"job {job_id!r} cannot be attached: the {self.name} backend keeps no record "
            "of its jobs; only LambdaBackend jobs can be resumed"
        )
