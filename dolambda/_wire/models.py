"""The wire models: what client and workers exchange, on every backend.

A job is a :class:`JobManifest` (JSON), one body blob (dill) and tasks
(:class:`TaskSpec`, a chunk of iterations). A worker answers each task with one
:class:`TaskOutcome`. The local backend sends these over pipes; the Lambda
backend puts the very same bytes in S3. ``WIRE_VERSION`` changes whenever a
field changes meaning, and a worker refuses a version it does not know.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# 7: the "undispatched" failure kind (a remote dispatcher's report), and a body is signed
# for its digest (``bodies/<sha256>``), not its job, and stored under ``<prefix>/bodies/``
# (that change was merged beside 6 without a bump of its own: a worker of either 6 took
# the other's bodies for bad signatures, not another version); 6: a task's captured
# output (TaskOutcome.output, IterationError.output); 5: the "load"
# and "code" failure kinds, the manifest lists the job's code archives
# (``code``, installed before the body loads); 4: dolambda.rng pickles as
# dolambda._core.seeds.rng (was dolambda._worker)
WIRE_VERSION = 7

ErrorHandling = Literal["stop", "remove", "pass"]
Trigger = Literal["s3", "invoke", "call", "local"]
FailureKind = Literal[
    "signature",  # an object failed HMAC verification
    "version",  # Python/dill/wire version differs between client and worker
    "load",  # the job (its manifest or body) cannot be loaded on the worker
    "code",  # a code archive of the job cannot be read (missing from the bucket)
    "timeout",  # the task ran past the function timeout
    "memory",  # the task exceeded the memory limit
    "crashed",  # the worker process died
    "lost",  # no result and no trace: never started, or its event was dropped
    "internal",  # anything else that is not the body's fault
    # a remote dispatcher could not queue the task (it says why): the client sends it
    # itself, at once, not as a retry (dolambda._aws.dispatcher)
    "undispatched",
]


#: failures that no task of the job can escape: a job-level error whatever the errorhandling
JOB_FAILURES: tuple[FailureKind, ...] = ("signature", "version", "load", "code")


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
    #: sha256 digests of the source archives (``<prefix>/code/<digest>.zip``) that the
    #: worker puts on ``sys.path`` before it unpickles the body
    code: tuple[str, ...] = ()


class TaskSpec(_Model):
    """A chunk of consecutive iterations, column by column.

    Iteration ``k`` (``0 <= k < count``) has index ``first + k``, its path is
    ``paths[k]`` (``(first + k,)`` when ``paths`` is None) and its slots (where the
    client's combine puts it) ``slots[k]`` (``(first + k,)`` when None). ``args``
    is a pickle of one tuple of argument values per iteration, in the order of the
    manifest's ``variables``.
    """

    wire_version: int = WIRE_VERSION
    job_id: str
    task_id: int
    attempt: int = 0
    first: int
    count: int
    paths: tuple[tuple[int, ...], ...] | None = None
    slots: tuple[tuple[int, ...], ...] | None = None
    args: bytes
    #: a small job travels with its tasks: its sealed manifest and body (verified as if
    #: read from ``jobs/<id>/``), so a worker new to the job fetches nothing else
    job_manifest: bytes | None = None
    job_body: bytes | None = None


class DispatchPlan(_Model):
    """A remotely dispatched job's tasks, sealed as the client would have sent them:
    ``tasks[i]`` is task ``task_ids[i]``. Its dispatchers queue them (PUT under
    ``queue/``, or Invoke), each a range of positions."""

    wire_version: int = WIRE_VERSION
    job_id: str
    trigger: Literal["s3", "invoke"]
    task_ids: tuple[int, ...]
    tasks: tuple[bytes, ...]


class IterationError(_Model):
    """How iteration ``position`` (counted within its task) failed."""

    position: int
    error_type: str
    error_message: str
    traceback: str = ""
    #: the last lines its task printed (stdout, stderr, warnings, logging) up to the failure
    output: str = ""


class TaskFailure(_Model):
    """A failure of the whole task, not of one iteration's body. ``signature``,
    ``version``, ``load`` and ``code`` mean no task of the job can run (:data:`JOB_FAILURES`)."""

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
    """The answer to one task, column by column.

    :attr:`ran` iterations ran (all of the task's, or none when ``failure`` says
    why); ``ticks`` packs ``ran + 1`` readings of the worker's clock in
    seconds as little-endian float64 (see :func:`unpack_ticks`): iteration k ran
    from ``ticks[k]`` to ``ticks[k + 1]``. ``values`` is a pickle of a list aligned
    with the iterations that ran: each successful
    iteration's result and each failed one's exception object (or ``None`` when it
    could not be pickled); ``errors`` describes the failed ones. ``output`` is what
    the task's iterations wrote to stdout and stderr (prints, warnings, logging to a
    stream), its last ``OUTPUT_LIMIT`` characters (:mod:`dolambda._core.execute`).
    """

    wire_version: int = WIRE_VERSION
    job_id: str
    task_id: int
    attempt: int = 0
    ticks: bytes = b""
    errors: tuple[IterationError, ...] = ()
    values: bytes = b""
    failure: TaskFailure | None = None
    stats: TaskStats = TaskStats()
    output: str = ""

    @property
    def ran(self) -> int:
        return max(0, len(self.ticks) // 8 - 1)


def pack_ticks(ticks: Sequence[float]) -> bytes:
    """Clock readings as little-endian float64 (8 bytes an iteration, not ~20 of JSON)."""
    packed = array.array("d", ticks)
    if sys.byteorder != "little":  # pragma: no cover - every Lambda and CI host is LE
        packed.byteswap()
    return packed.tobytes()


def unpack_ticks(blob: bytes) -> list[float]:
    packed = array.array("d")
    packed.frombytes(blob[: len(blob) - len(blob) % 8])
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tolist()
