"""The one execution path: run a chunk of iterations of a loop body.

Every backend ends here: the sequential backend calls :func:`run_iterations`
directly; worker processes and the Lambda worker call :func:`run_task_blob`,
which verifies and decodes a task, runs it through :func:`run_iterations` and
encodes the outcome. Seeding, timing, capture of exceptions with their
formatted traceback, capture of a task's output (what its iterations write to
``sys.stdout`` and ``sys.stderr``: prints, warnings, logging to a stream; still
written through to the worker's own streams, the function's log), and the
worker's warm state (the loaded job) live here;
bytes are made and read by :mod:`dolambda._wire.codec`. No boto3, no S3: the
Lambda side of the worker is :mod:`dolambda._aws.worker`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import dill

from dolambda._code import loader
from dolambda._code.archive import unseal_archive
from dolambda._core.seeds import seeded
from dolambda._errors import SignatureError, VersionMismatch
from dolambda._wire import codec
from dolambda._wire.models import (
    WIRE_VERSION,
    IterationError,
    JobManifest,
    TaskFailure,
    TaskOutcome,
    TaskSpec,
    TaskStats,
    pack_ticks,
)


@dataclass
class ChunkRun:
    """A chunk's outcome in memory, column by column: ``values[k]`` is iteration k's
    result (its exception when ``k in errors``); it ran from ``ticks[k]`` to
    ``ticks[k + 1]`` (seconds of ``time.perf_counter``)."""

    values: list[Any] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    errors: dict[int, IterationError] = field(default_factory=dict)
    #: what the iterations wrote to stdout/stderr, the last OUTPUT_LIMIT characters
    #: (only when run with ``capture=True``)
    output: str = ""


#: characters of a task's output its result carries (the last ones)
OUTPUT_LIMIT = 64 * 1024
#: lines of its task's output a failed iteration's error carries (up to the failure)
ERROR_OUTPUT_LINES = 20


class OutputTail:
    """The last ``limit`` characters written to it."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False
        self.total = 0  # characters ever written (the part since a mark: see since)

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        self.total += len(text)
        if self._size > 2 * self.limit:  # trim now and then, not on every write
            self._parts = [self.text()]
            self._size = len(self._parts[0])

    def text(self) -> str:
        joined = "".join(self._parts)
        if len(joined) > self.limit:
            self.truncated = True
            joined = joined[-self.limit :]
        return joined

    def since(self, mark: int) -> str:
        """What was written after ``total`` was ``mark`` (as much of it as is kept)."""
        new = self.total - mark
        return self.text()[-new:] if new > 0 else ""

    def last_lines(self, n: int) -> str:
        return "\n".join(self.text().rstrip("\n").split("\n")[-n:]) if self._size else ""


class _Tee:
    """A text stream that keeps what is written in an OutputTail and writes it through."""

    def __init__(self, stream: Any, tail: OutputTail) -> None:
        self._stream = stream
        self._tail = tail

    def write(self, text: str) -> int:
        self._tail.add(text)
        if self._stream is not None:
            with contextlib.suppress(Exception):  # a closed stream must not fail the body
                self._stream.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ...: the stream's
        return getattr(self._stream, name)


@contextlib.contextmanager
def captured_output(tail: OutputTail) -> Iterator[OutputTail]:
    """Keep what is written to ``sys.stdout`` and ``sys.stderr`` in ``tail`` (both, in
    the order written), writing it through. Not captured: writes to the file
    descriptors themselves (C extensions, subprocesses), and logging handlers made
    before with an explicit stream."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, tail), _Tee(err, tail)
    try:
        yield tail
    finally:
        sys.stdout, sys.stderr = out, err


def binds_positionally(body: Callable[..., Any], names: Sequence[str]) -> bool:
    """Whether ``body(*values)`` binds exactly as ``body(**dict(zip(names, values)))``:
    its first parameters are ``names``, in order, each positional-or-keyword."""
    try:
        params = list(inspect.signature(body).parameters.values())
    except (TypeError, ValueError):
        return False
    if len(params) < len(names):
        return False
    return all(
        p.kind is p.POSITIONAL_OR_KEYWORD and p.name == name
        for p, name in zip(params, names, strict=False)
    )


def run_iterations(
    body: Callable[..., Any],
    names: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    *,
    first: int = 0,
    paths: Sequence[tuple[int, ...]] | None = None,
    seed: int | None = None,
    positional: bool | None = None,
    capture: bool = False,
    tail: OutputTail | None = None,
) -> ChunkRun:
    """Run ``body(**dict(zip(names, row)))`` for each row; never raises for the body.

    Iteration ``k`` is seeded from its path (``paths[k]``, or ``(first + k,)``).
    ``positional`` (see :func:`binds_positionally`; worked out when None) calls
    ``body(*row)`` instead, the same binding without building a dict per call.
    ``capture`` keeps what the iterations write to stdout and stderr in the run's
    ``output`` (a remote task's output; see :func:`captured_output`), and a failed
    iteration's error carries the last lines of it. ``tail``: the caller captures into
    it already (a task run one row at a time); errors carry its last lines.
    """
    if tail is not None:
        return _run_rows(body, names, rows, first, paths, seed, positional, tail)
    if not capture:
        return _run_rows(body, names, rows, first, paths, seed, positional, None)
    tail = OutputTail()
    with captured_output(tail):
        run = _run_rows(body, names, rows, first, paths, seed, positional, tail)
    run.output = tail.text()
    return run


def _run_rows(
    body: Callable[..., Any],
    names: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    first: int,
    paths: Sequence[tuple[int, ...]] | None,
    seed: int | None,
    positional: bool | None,
    tail: OutputTail | None,
) -> ChunkRun:
    if positional is None:
        positional = binds_positionally(body, names)
    run = ChunkRun()
    take = run.values.append
    clock = time.perf_counter
    ticks = run.ticks
    tick = ticks.append
    tick(clock())
    for k, row in enumerate(rows):
        try:
            if seed is not None:
                with seeded(seed, (first + k,) if paths is None else paths[k]):
                    take(body(*row) if positional else body(**dict(zip(names, row, strict=True))))
            elif positional:
                take(body(*row))
            else:
                take(body(**dict(zip(names, row, strict=True))))
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # SystemExit included: it is the body's error
            take(exc)
            run.errors[k] = IterationError(
                position=k,
                error_type=type(exc).__qualname__,
                error_message=_exception_text(exc),
                traceback="".join(traceback.format_exception(exc)),
                output="" if tail is None else tail.last_lines(ERROR_OUTPUT_LINES),
            )
        tick(clock())
    return run


def _exception_text(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"the body called sys.exit({exc.code!r})"
    return str(exc)


# --------------------------------------------------------------------------- tasks as bytes


@dataclass
class LoadedJob:
    """A job as a worker holds it: its manifest and its unpickled body (cached per job)."""

    manifest: JobManifest
    body: Callable[..., Any]

    @cached_property
    def positional(self) -> bool:
        return binds_positionally(self.body, self.manifest.variables)


@dataclass
class WorkerState:
    """What a warm worker keeps between tasks."""

    jobs: dict[str, LoadedJob] = field(default_factory=dict)
    tasks_run: int = 0


def check_versions(manifest: JobManifest) -> None:
    """Raise VersionMismatch when this worker cannot faithfully run the job."""
    here_py, here_dill = codec.python_version(), str(dill.__version__)
    if manifest.wire_version != WIRE_VERSION:
        raise VersionMismatch(
            f"the client speaks wire version {manifest.wire_version} but this worker speaks "
            f"{WIRE_VERSION}; deploy the same dolambda version as the client (dolambda deploy)"
        )
    if manifest.python != here_py or manifest.dill_version != here_dill:
        raise VersionMismatch(
            f"the client runs Python {manifest.python} with dill {manifest.dill_version} but the "
            f"worker runs Python {here_py} with dill {here_dill}; functions pickled by one "
            "cannot be trusted to load in the other. Use the same versions (dolambda deploy "
            "picks the runtime matching your Python)."
        )


def load_job(
    manifest_blob: bytes,
    body_blob: bytes,
    *,
    key: bytes,
    job_id: str,
    fetch_code: Callable[[str], bytes] | None = None,
) -> LoadedJob:
    """Verify and decode a job's manifest and body (raises SignatureError/VersionMismatch).

    The job's code archives (``manifest.code``) go on ``sys.path`` first, since
    unpickling the body imports the user's modules: each is activated from the
    worker's cache, or fetched with ``fetch_code(digest)`` (its sealed bytes),
    verified and installed.
    """
    manifest = codec.unseal_model(
        JobManifest, manifest_blob, key=key, context=codec.manifest_context(job_id)
    )
    check_versions(manifest)
    body_bytes = codec.unseal(body_blob, key=key, context=codec.body_context(manifest.body_digest))
    if codec.digest(body_bytes) != manifest.body_digest:
        raise SignatureError(f"the body of job {job_id} does not match its manifest's digest")
    install_code(manifest, key=key, fetch_code=fetch_code)
    try:
        body = codec.loads(body_bytes)
    except Exception as exc:
        raise BodyNotLoaded(
            f"the loop body cannot be unpickled on the worker ({type(exc).__name__}: {exc}), "
            "so no iteration of this job can run. What the body refers to must exist where "
            "it runs: a module it imports must be in the function's package (dolambda deploy "
            "--requirements FILE), and a file or connection it captures must be opened inside "
            "the body instead"
        ) from exc
    return LoadedJob(manifest=manifest, body=body)


class BodyNotLoaded(Exception):
    """The job's body could not be unpickled where it runs (a job-level ``load`` failure)."""


def install_code(
    manifest: JobManifest, *, key: bytes, fetch_code: Callable[[str], bytes] | None
) -> None:
    """Put each of the job's code archives on ``sys.path`` (warm workers: from the cache),
    and take off it those of earlier jobs that this one does not list."""
    loader.retain(manifest.code)
    for digest in manifest.code:
        if loader.activate(digest):
            continue
        if fetch_code is None:
            raise CodeUnavailable(
                f"job {manifest.job_id} ships code (archive {digest}) but this worker "
                "cannot fetch it"
            )
        blob = fetch_code(digest)
        loader.install(unseal_archive(blob, digest, key=key), digest)


class CodeUnavailable(Exception):
    """A job's code archive cannot be read (the worker reports it as the task's failure)."""


def memory_used_mb() -> float:
    """Peak resident memory of this process in MB (what Lambda reports as Max Memory Used)."""
    try:
        import resource  # POSIX only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024
    except Exception:  # pragma: no cover - non-POSIX
        return 0.0


def open_task(
    state: WorkerState,
    task_blob: bytes,
    *,
    key: bytes,
    job_id: str,
    task_id: int,
    fetch_job: Callable[[], tuple[bytes, bytes]],
    fetch_code: Callable[[str], bytes] | None = None,
) -> tuple[TaskSpec, LoadedJob, list[tuple[Any, ...]]]:
    """Verify and decode a task, load its job (warm: from ``state``), unpickle its rows.

    Raises what :func:`failure_of` turns into the task's failure; see
    :func:`run_task_blob` for ``fetch_job`` and ``fetch_code``.
    """
    context = codec.task_context(job_id, task_id)
    task = codec.unseal_model(TaskSpec, task_blob, key=key, context=context)
    if task.job_id != job_id or task.task_id != task_id:
        raise SignatureError(
            f"task object {context!r} holds task {task.job_id}/{task.task_id}; refusing it"
        )
    job = state.jobs.get(job_id)
    if job is None:
        if task.job_manifest is not None and task.job_body is not None:
            manifest_blob, body_blob = task.job_manifest, task.job_body
        else:
            manifest_blob, body_blob = fetch_job()
        job = load_job(manifest_blob, body_blob, key=key, job_id=job_id, fetch_code=fetch_code)
        state.jobs = {job_id: job}  # keep only the current job: bodies may be large
    rows: list[tuple[Any, ...]] = codec.loads(task.args)
    if len(rows) != task.count or (task.paths is not None and len(task.paths) != task.count):
        raise ValueError(
            f"task {task_id} holds {len(rows)} argument rows and "
            f"{'no' if task.paths is None else len(task.paths)} paths for {task.count} "
            "iterations"
        )
    return task, job, rows


def failure_of(exc: Exception) -> TaskFailure:
    """The task failure for an exception :func:`open_task` raised (not the body's)."""
    if isinstance(exc, SignatureError):
        return TaskFailure(kind="signature", message=str(exc))
    if isinstance(exc, VersionMismatch):
        return TaskFailure(kind="version", message=str(exc))
    if isinstance(exc, BodyNotLoaded):
        return TaskFailure(kind="load", message=str(exc))
    if isinstance(exc, CodeUnavailable):
        return TaskFailure(kind="code", message=str(exc))
    text = "".join(traceback.format_exception(exc))
    return TaskFailure(kind="internal", message=f"{type(exc).__name__}: {exc}\n{text}")


def task_stats(
    extra: dict[str, Any], *, started: float, duration: float, cold: bool, memory_mb: float
) -> TaskStats:
    """A task's :class:`TaskStats`; ``extra`` may name the worker, request id, memory
    limit, S3 requests and whether it was a cold start."""
    return TaskStats(
        worker=extra.get("worker", f"{platform.node()}:{os.getpid()}"),
        request_id=extra.get("request_id", ""),
        started_at=started,
        finished_at=time.time(),
        duration=duration,
        cold_start=extra.get("cold_start", cold),
        memory_used_mb=memory_mb,
        memory_limit_mb=int(extra.get("memory_limit_mb", 0)),
        s3_requests=int(extra.get("s3_requests", 0)),
    )


def run_task_blob(
    state: WorkerState,
    task_blob: bytes,
    *,
    key: bytes,
    job_id: str,
    task_id: int,
    fetch_job: Callable[[], tuple[bytes, bytes]],
    stats: dict[str, Any] | None = None,
    fetch_code: Callable[[str], bytes] | None = None,
) -> TaskOutcome:
    """Verify, decode and run one task; always return an outcome (never raise for the body).

    ``fetch_job`` returns the job's sealed manifest and body; it is called only
    when this worker has not loaded the job yet (warm reuse) and the task does not
    carry them (a small job travels with its tasks); ``fetch_code(digest)`` returns
    the sealed code archive with that digest, when the job ships code the worker has
    not cached.
    """
    started = time.time()
    t0 = time.perf_counter()
    cold = state.tasks_run == 0
    state.tasks_run += 1
    extra = dict(stats or {})

    def finish(
        ticks: Sequence[float] = (),
        errors: list[IterationError] | tuple[IterationError, ...] = (),
        values: bytes = b"",
        failure: TaskFailure | None = None,
        attempt: int = 0,
        output: str = "",
    ) -> TaskOutcome:
        return TaskOutcome(
            job_id=job_id,
            task_id=task_id,
            attempt=attempt,
            ticks=pack_ticks(ticks),
            errors=errors,  # type: ignore[arg-type]
            values=values,
            failure=failure,
            output=output,
            stats=task_stats(
                extra,
                started=started,
                duration=time.perf_counter() - t0,
                cold=cold,
                memory_mb=memory_used_mb(),
            ),
        )

    try:
        task, job, rows = open_task(
            state,
            task_blob,
            key=key,
            job_id=job_id,
            task_id=task_id,
            fetch_job=fetch_job,
            fetch_code=fetch_code,
        )
        run = run_iterations(
            job.body,
            job.manifest.variables,
            rows,
            first=task.first,
            paths=task.paths,
            seed=job.manifest.seed,
            positional=job.positional,
            capture=True,
        )
        errors, values = codec.encode_run(run.values, run.errors)
        return finish(run.ticks, errors, values, attempt=task.attempt, output=run.output)
    except Exception as exc:
        # the attempt it answers, when the task verifies (the client ignores older ones)
        try:
            attempt = codec.unseal_model(
                TaskSpec, task_blob, key=key, context=codec.task_context(job_id, task_id)
            ).attempt
        except Exception:
            attempt = 0
        return finish(failure=failure_of(exc), attempt=attempt)
