"""A job in its signed wire form, as worker processes and Lambda receive it.

The local and the Lambda backend send the very same bytes: a sealed
:class:`~dolambda._wire.models.JobManifest`, the sealed body, and one sealed
:class:`~dolambda._wire.models.TaskSpec` per task; each outcome that comes back
becomes a :class:`~dolambda._backends.base.TaskResult`.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import dill

from dolambda._backends.base import JobContext, TaskResult
from dolambda._core.tasks import PlannedTask
from dolambda._errors import SerializationError
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import (
    body_context,
    decode_values,
    manifest_context,
    python_version,
    task_context,
)
from dolambda._wire.models import JobManifest, TaskOutcome, TaskSpec, Trigger, unpack_ticks


@dataclass
class SealedJob:
    """``job`` signed with ``key`` for workers started by ``trigger``."""

    job: JobContext
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    trigger: Trigger = "local"
    #: seconds a task may run (the function's timeout), when the workers enforce one
    task_timeout: float | None = None
    #: digests of the code archives the workers install before they load the body
    code: tuple[str, ...] = ()

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @cached_property
    def manifest(self) -> JobManifest:
        job = self.job
        return JobManifest(
            job_id=job.job_id,
            created_at=job.created_at,
            python=python_version(),
            dill_version=str(dill.__version__),
            body_digest=job.body_digest,
            seed=job.seed,
            variables=job.variables,
            chunk_size=job.chunk_size,
            trigger=self.trigger,
            task_timeout=self.task_timeout,
            errorhandling=job.errorhandling,  # type: ignore[arg-type]
            code=self.code,
        )

    @cached_property
    def sealed_manifest(self) -> bytes:
        return codec.seal_model(self.manifest, key=self.key, context=manifest_context(self.job_id))

    @cached_property
    def sealed_body(self) -> bytes:
        job = self.job
        return codec.seal(job.body_bytes, key=self.key, context=body_context(job.body_digest))

    def body_key(self, prefix: str) -> str:
        """Where the sealed body is stored: by its content and the key it is signed with."""
        digest = self.job.body_digest
        return _keys.body_key(prefix, digest, codec.key_tag(self.key, digest))

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


#: a body that pickles to more than this is worth a word (it goes to every new worker)
LARGE_BODY = 5 * 1024 * 1024
_warned: set[str] = set()  # digests of the large bodies already warned about


class LargeBodyWarning(UserWarning):
    """A loop body captures a lot of data (said once per body and process)."""


def warn_if_large(job: JobContext, *, stacklevel: int = 2) -> None:
    """Warn once per body when ``job``'s pickled body is larger than :data:`LARGE_BODY`,
    naming what it captures and the alternative."""
    size = len(job.body_bytes)
    if size <= LARGE_BODY or job.body_digest in _warned:
        return
    _warned.add(job.body_digest)
    captured = [f"{name!r} ({_mb(n)})" for name, n in codec.captured_sizes(job.body)[:3]]
    what = f": it captures {', '.join(captured)}" if captured else ""
    warnings.warn(
        f"the loop body {getattr(job.body, '__qualname__', job.body)!r} pickles to "
        f"{_mb(size)}{what}. It is uploaded once and reused by later jobs with the same "
        "body, but every worker new to a job downloads it before its first task. For data "
        "that large, store it once (e.g. in S3, or a file the function can read) and load "
        "it inside the body (cache it in a global: warm workers keep it), or pass each "
        "iteration only its part as a loop variable",
        LargeBodyWarning,
        stacklevel=stacklevel,
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


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


def decode_outcome(outcome: TaskOutcome, attempts: int = 1) -> TaskResult:
    """Turn a verified wire outcome into a TaskResult (values unpickled)."""
    values, undecodable = decode_values(outcome)
    return TaskResult(
        task_id=outcome.task_id,
        values=values,
        ticks=unpack_ticks(outcome.ticks),
        # the body's own error (with its traceback) wins over "its exception cannot be
        # unpickled here"
        errors={**undecodable, **{e.position: e for e in outcome.errors}},
        failure=outcome.failure,
        stats=outcome.stats,
        attempts=attempts,
        output=outcome.output,
    )
