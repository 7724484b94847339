"""The wire models: what client and workers exchange, on every backend.

A job is a :class:`JobManifest` (JSON), one body blob (dill) and tasks
(:class:`TaskSpec`, a chunk of iterations). A worker answers each task with one
:class:`TaskOutcome`. The local backend sends these over pipes; the Lambda
backend puts the very same bytes in S3. ``WIRE_VERSION`` changes whenever a
field changes meaning, and a worker refuses a version it does not know.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WIRE_VERSION = 1

ErrorHandling = Literal["stop", "remove", "pass"]
Trigger = Literal["s3", "invoke", "local"]
FailureKind = Literal[
    "signature",  # an object failed HMAC verification
    "version",  # Python/dill/wire version differs between client and worker
    "cancelled",  # the job was cancelled before the task started
    "timeout",  # the task ran past the function timeout
    "memory",  # the task exceeded the memory limit
    "crashed",  # the worker process died
    "lost",  # no result and no trace: never started, or its event was dropped
    "internal",  # anything else that is not the body's fault
]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


class JobManifest(_Model):
    """Everything a worker needs to know about a job, written once per job."""

    wire_version: int = WIRE_VERSION
    job_id: str
    created_at: float
    python: str = Field(description="client's Python major.minor, e.g. '3.11'")
    dill_version: str
    body_digest: str = Field(description="sha256 of the body blob")
    seed: int | None = None
    variables: tuple[str, ...] = ()
    chunk_size: int = 1
    trigger: Trigger = "local"
    task_timeout: float | None = None
    errorhandling: ErrorHandling = "stop"


class IterationRef(_Model):
    """One leaf iteration: its ordinal among all leaves and its index at each level."""

    index: int
    path: tuple[int, ...]
    slots: tuple[int, ...] = ()


class TaskSpec(_Model):
    """A chunk of iterations. ``args`` is a dill blob: one kwargs dict per iteration."""

    wire_version: int = WIRE_VERSION
    job_id: str
    task_id: int
    attempt: int = 0
    iterations: tuple[IterationRef, ...]
    args: bytes


class IterationOutcome(_Model):
    """How one iteration went. Values travel in :attr:`TaskOutcome.values`."""

    index: int
    path: tuple[int, ...]
    ok: bool
    duration: float = 0.0
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""


class TaskFailure(_Model):
    """A failure of the whole task, not of one iteration's body."""

    kind: FailureKind
    message: str


class TaskStats(_Model):
    """What a worker measured while running a task."""

    worker: str = ""
    request_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    duration: float = 0.0
    cold_start: bool = False
    memory_used_mb: float = 0.0
    memory_limit_mb: int = 0
    s3_requests: int = 0


class TaskOutcome(_Model):
    """The answer to one task: per-iteration outcomes and their values.

    ``values`` is a dill blob of a list aligned with ``iterations``: the result
    of each successful iteration and the exception object (or ``None`` when it
    could not be pickled) of each failed one.
    """

    wire_version: int = WIRE_VERSION
    job_id: str
    task_id: int
    attempt: int = 0
    iterations: tuple[IterationOutcome, ...] = ()
    values: bytes = b""
    failure: TaskFailure | None = None
    stats: TaskStats = TaskStats()
