"""The one execution path: run a chunk of iterations of a loop body.

Every backend ends here: the sequential backend calls :func:`run_iterations`
directly; worker processes and the Lambda handler call :func:`run_task_blob`,
which verifies and decodes a task, runs it through :func:`run_iterations` and
encodes the outcome. Seeding, timing, capture of exceptions with their
formatted traceback, and pickling of results all happen here and only here.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import platform
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import dill

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

_current_rng: contextvars.ContextVar[Any] = contextvars.ContextVar("dolambda_rng", default=None)


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def rng() -> Any:
    """The current iteration's ``numpy.random.Generator``.

    Inside the body of a seeded loop (``.seed(s)``) this is iteration k's
    stream, ``numpy.random.default_rng(SeedSequence(s, spawn_key=(k,)))``,
    identical on every backend. Elsewhere it is a fresh, unseeded generator.

    >>> from dolambda import foreach, rng
    >>> draws = foreach(i=range(3)).seed(42).do(lambda i: float(rng().random()))
    """
    current = _current_rng.get()
    if current is not None:
        return current
    import numpy as np

    return np.random.default_rng()


@contextmanager
def seeded(seed: int | None, path: tuple[int, ...]) -> Iterator[None]:
    """Seed ``random``, numpy's global generator and :func:`rng` for one iteration."""
    if seed is None:
        yield
        return
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - numpy is in every supported setup
        raise ImportError("seed() needs numpy: pip install numpy") from exc
    ss = np.random.SeedSequence(seed, spawn_key=path)
    words = ss.generate_state(4, dtype=np.uint32)
    random.seed(int.from_bytes(words.tobytes(), "little"))
    np.random.seed(words)
    token = _current_rng.set(np.random.default_rng(ss))
    try:
        yield
    finally:
        _current_rng.reset(token)


@dataclass
class ChunkRun:
    """A chunk's outcome in memory, column by column: ``values[k]`` is iteration k's
    result (its exception when ``k in errors``); it ran from ``ticks[k]`` to
    ``ticks[k + 1]`` (seconds of ``time.perf_counter``)."""

    values: list[Any] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    errors: dict[int, IterationError] = field(default_factory=dict)


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
) -> ChunkRun:
    """Run ``body(**dict(zip(names, row)))`` for each row; never raises for the body.

    Iteration ``k`` is seeded from its path (``paths[k]``, or ``(first + k,)``).
    ``positional`` (see :func:`binds_positionally`; worked out when None) calls
    ``body(*row)`` instead, the same binding without building a dict per call.
    """
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


def manifest_context(job_id: str) -> str:
    return f"jobs/{job_id}/manifest"


def plan_context(job_id: str) -> str:
    return f"jobs/{job_id}/plan"


def body_context(job_id: str) -> str:
    return f"jobs/{job_id}/body"


def task_context(job_id: str, task_id: int) -> str:
    return f"queue/{job_id}/{task_id}"


def outcome_context(job_id: str, task_id: int) -> str:
    return f"results/{job_id}/{task_id}"


def check_versions(manifest: JobManifest) -> None:
    """Raise VersionMismatch when this worker cannot faithfully run the job."""
    here_py, here_dill = python_version(), str(dill.__version__)
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


def load_job(manifest_blob: bytes, body_blob: bytes, *, key: bytes, job_id: str) -> LoadedJob:
    """Verify and decode a job's manifest and body (raises SignatureError/VersionMismatch)."""
    manifest = codec.unseal_model(
        JobManifest, manifest_blob, key=key, context=manifest_context(job_id)
    )
    check_versions(manifest)
    body_bytes = codec.unseal(body_blob, key=key, context=body_context(job_id))
    if codec.digest(body_bytes) != manifest.body_digest:
        raise SignatureError(f"the body of job {job_id} does not match its manifest's digest")
    return LoadedJob(manifest=manifest, body=codec.loads(body_bytes))


_ALL_VALUES, _PER_VALUE = b"A", b"P"


def encode_run(run: ChunkRun) -> tuple[list[IterationError], bytes]:
    """Pickle the values in one go; when that fails, one by one, so an unpicklable result
    fails only its own iteration. Returns the errors (with any such failures added)."""
    if not run.errors:  # exceptions may pickle yet not unpickle: they go one by one
        try:
            return [], _ALL_VALUES + codec.dumps(run.values)
        except Exception:
            pass
    errors = dict(run.errors)
    blobs: list[bytes | None] = []
    for k, value in enumerate(run.values):
        try:
            blob: bytes | None = codec.dumps(value)
        except Exception as exc:
            blob = None
            if k not in errors:
                errors[k] = IterationError(
                    position=k,
                    error_type="SerializationError",
                    error_message=(
                        f"its result (a {type(value).__module__}.{type(value).__qualname__}) "
                        "cannot be pickled: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                )
        blobs.append(blob)
    return [errors[k] for k in sorted(errors)], _PER_VALUE + codec.dumps(blobs)


def decode_values(outcome: TaskOutcome) -> list[Any]:
    """The values of a verified outcome, one for each iteration that ran."""
    count = outcome.ran
    if not outcome.values:
        return [None] * count
    kind, data = outcome.values[:1], outcome.values[1:]
    if kind == _ALL_VALUES:
        try:
            return list(codec.loads(data))
        except Exception:  # e.g. a class that cannot be rebuilt here
            return [None] * count
    blobs: list[bytes | None] = codec.loads(data)
    values: list[Any] = []
    for blob in blobs:
        if blob is None:
            values.append(None)
            continue
        try:
            values.append(codec.loads(blob))
        except Exception:  # e.g. an exception class that cannot be rebuilt here
            values.append(None)
    return values


def memory_used_mb() -> float:
    """Peak resident memory of this process in MB (what Lambda reports as Max Memory Used)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024
    except Exception:  # pragma: no cover - non-POSIX
        return 0.0


def run_task_blob(
    state: WorkerState,
    task_blob: bytes,
    *,
    key: bytes,
    job_id: str,
    task_id: int,
    fetch_job: Callable[[], tuple[bytes, bytes]],
    stats: dict[str, Any] | None = None,
) -> TaskOutcome:
    """Verify, decode and run one task; always return an outcome (never raise for the body).

    ``fetch_job`` returns the job's sealed manifest and body; it is called only
    when this worker has not loaded the job yet (warm reuse) and the task does not
    carry them (a small job travels with its tasks).
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
    ) -> TaskOutcome:
        return TaskOutcome(
            job_id=job_id,
            task_id=task_id,
            attempt=attempt,
            ticks=pack_ticks(ticks),
            errors=errors,  # type: ignore[arg-type]
            values=values,
            failure=failure,
            stats=TaskStats(
                worker=extra.get("worker", f"{platform.node()}:{os.getpid()}"),
                request_id=extra.get("request_id", ""),
                started_at=started,
                finished_at=time.time(),
                duration=time.perf_counter() - t0,
                cold_start=extra.get("cold_start", cold),
                memory_used_mb=memory_used_mb(),
                memory_limit_mb=int(extra.get("memory_limit_mb", 0)),
                s3_requests=int(extra.get("s3_requests", 0)),
            ),
        )

    try:
        task = codec.unseal_model(
            TaskSpec, task_blob, key=key, context=task_context(job_id, task_id)
        )
        if task.job_id != job_id or task.task_id != task_id:
            raise SignatureError(
                f"task object {task_context(job_id, task_id)!r} holds task "
                f"{task.job_id}/{task.task_id}; refusing it"
            )
        job = state.jobs.get(job_id)
        if job is None:
            if task.job_manifest is not None and task.job_body is not None:
                manifest_blob, body_blob = task.job_manifest, task.job_body
            else:
                manifest_blob, body_blob = fetch_job()
            job = load_job(manifest_blob, body_blob, key=key, job_id=job_id)
            state.jobs = {job_id: job}  # keep only the current job: bodies may be large
        rows: list[tuple[Any, ...]] = codec.loads(task.args)
        if len(rows) != task.count or (task.paths is not None and len(task.paths) != task.count):
            raise ValueError(
                f"task {task_id} holds {len(rows)} argument rows and "
                f"{'no' if task.paths is None else len(task.paths)} paths for {task.count} "
                "iterations"
            )
        run = run_iterations(
            job.body,
            job.manifest.variables,
            rows,
            first=task.first,
            paths=task.paths,
            seed=job.manifest.seed,
            positional=job.positional,
        )
        errors, values = encode_run(run)
        return finish(run.ticks, errors, values, attempt=task.attempt)
    except SignatureError as exc:
        return finish(failure=TaskFailure(kind="signature", message=str(exc)))
    except VersionMismatch as exc:
        return finish(failure=TaskFailure(kind="version", message=str(exc)))
    except Exception as exc:
        return finish(
            failure=TaskFailure(
                kind="internal",
                message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
            )
        )


# --------------------------------------------------------------------------- S3 tasks (Lambda)


def process_s3_task(
    s3: Any,
    bucket: str,
    key: str,
    *,
    prefix: str,
    signing_key: bytes,
    state: WorkerState,
    context: Any = None,
    inline_task: bytes | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Run the task stored at ``bucket``/``key`` and write its result; return what happened.

    ``s3`` is a boto3 S3 client (the one the Lambda runtime ships). Keys outside
    ``<prefix>/queue/`` are ignored, so nothing this writes can trigger it again.
    A task object that is gone was cancelled. The result is written with
    ``If-None-Match: *``: a duplicate event cannot overwrite a result. Returns
    ``"ignored"``, ``"gone"``, ``"done"`` or ``"duplicate"``; never raises for the body.
    """
    from dolambda._wire import keys as _keys

    parsed = _keys.parse_task_key(prefix, key)
    if parsed is None:
        log(f"dolambda: ignoring s3://{bucket}/{key}: not a task under {prefix!r}/queue/")
        return "ignored"
    job_id, task_id = parsed
    requests = 0

    def get(object_key: str) -> bytes:
        nonlocal requests
        requests += 1
        body: bytes = s3.get_object(Bucket=bucket, Key=object_key)["Body"].read()
        return body

    if inline_task is not None:
        blob = inline_task
    else:
        try:
            blob = get(key)
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                log(f"dolambda: task s3://{bucket}/{key} is gone (job cancelled or finished)")
                return "gone"
            raise
    stats: dict[str, Any] = {}
    if context is not None:
        stats["request_id"] = str(getattr(context, "aws_request_id", ""))
        stats["memory_limit_mb"] = int(getattr(context, "memory_limit_in_mb", 0) or 0)
    outcome = run_task_blob(
        state,
        blob,
        key=signing_key,
        job_id=job_id,
        task_id=task_id,
        fetch_job=lambda: (
            get(_keys.manifest_key(prefix, job_id)),
            get(_keys.body_key(prefix, job_id)),
        ),
        stats=stats,
    )
    outcome = outcome.model_copy(
        update={"stats": outcome.stats.model_copy(update={"s3_requests": requests + 1})}
    )
    if outcome.failure is not None:
        log(f"dolambda: task {job_id}/{task_id}: {outcome.failure.kind}: {outcome.failure.message}")
    if not put_result(s3, bucket, prefix, signing_key, outcome):
        return "duplicate"
    return "done"


def put_result(s3: Any, bucket: str, prefix: str, signing_key: bytes, outcome: TaskOutcome) -> bool:
    """Write a task's result once (``If-None-Match: *``); False when one already exists."""
    from dolambda._wire import keys as _keys

    job_id, task_id = outcome.job_id, outcome.task_id
    data = codec.seal_model(outcome, key=signing_key, context=outcome_context(job_id, task_id))
    try:
        s3.put_object(
            Bucket=bucket, Key=_keys.result_key(prefix, job_id, task_id), Body=data, IfNoneMatch="*"
        )
    except Exception as exc:
        if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise
    return True


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def task_records(event: Any) -> list[tuple[str, str, bytes | None]]:
    """``(bucket, key, inline task)`` for each task in an S3 event or a direct invoke.

    S3 records carry URL-encoded keys (``queue%2Fjob%2F0000001.task``); a direct
    invoke is ``{"bucket": ..., "key": ..., "task": <base64, optional>}``.
    Anything else yields nothing.
    """
    import base64
    from urllib.parse import unquote_plus

    out: list[tuple[str, str, bytes | None]] = []
    if not isinstance(event, dict):
        return out
    records = event.get("Records")
    if isinstance(records, list):
        for record in records:
            try:
                s3 = record["s3"]
                out.append(
                    (str(s3["bucket"]["name"]), unquote_plus(str(s3["object"]["key"])), None)
                )
            except (KeyError, TypeError):
                continue
        return out
    bucket, key = event.get("bucket"), event.get("key")
    if isinstance(bucket, str) and isinstance(key, str):
        inline = event.get("task")
        try:
            blob = base64.b64decode(inline, validate=True) if isinstance(inline, str) else None
        except ValueError:
            blob = None
        out.append((bucket, key, blob))
    return out


def signing_key_from_env(value: str | None = None) -> bytes | None:
    """The signing key from ``value`` or DOLAMBDA_SIGNING_KEY (hex if it parses as hex)."""
    text = value if value is not None else os.environ.get("DOLAMBDA_SIGNING_KEY")
    if not text:
        return None
    return signing_key_bytes(text)


def signing_key_bytes(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        if len(text) >= 32 and len(text) % 2 == 0:
            return bytes.fromhex(text)
    except ValueError:
        pass
    return text.encode()


# --------------------------------------------------------------------------- runtime failures


def failure_records(event: Any) -> tuple[list[tuple[str, str, bytes | None]], str, str]:
    """The tasks of a Lambda on-failure destination record, the failure kind and message.

    Lambda sends an invocation that failed for good (timed out, ran out of memory,
    crashed) to the function's on-failure destination, which dolambda deploy points
    at the function itself: ``{"requestContext": {"condition": ...}, "requestPayload":
    <original event>, "responsePayload": {"errorType", "errorMessage"}}``.
    Returns ``([], "", "")`` for any other event.
    """
    if not (
        isinstance(event, dict)
        and isinstance(event.get("requestContext"), dict)
        and "requestPayload" in event
    ):
        return [], "", ""
    response = event.get("responsePayload")
    error_type = str(response.get("errorType", "")) if isinstance(response, dict) else ""
    message = str(response.get("errorMessage", "")) if isinstance(response, dict) else ""
    condition = str(event["requestContext"].get("condition", ""))
    if error_type == "Sandbox.Timedout" or "timed out" in message.lower():
        kind = "timeout"
    elif error_type == "Runtime.OutOfMemory" or "out of memory" in message.lower():
        kind = "memory"
    else:
        kind = "crashed"
    text = message or error_type or condition or "the invocation failed"
    return task_records(event["requestPayload"]), kind, text


def write_failure(
    s3: Any,
    bucket: str,
    key: str,
    *,
    prefix: str,
    signing_key: bytes,
    kind: str,
    message: str,
    context: Any = None,
) -> str:
    """Write an error result for the task at ``key`` (unless a result already exists)."""
    from dolambda._wire import keys as _keys

    parsed = _keys.parse_task_key(prefix, key)
    if parsed is None:
        return "ignored"
    job_id, task_id = parsed
    limit = int(getattr(context, "memory_limit_in_mb", 0) or 0)
    if kind == "memory":
        text = f"the task ran out of memory (the function's limit is {limit} MB): {message}"
    elif kind == "timeout":
        text = f"the task ran past the function's timeout: {message}"
    else:
        text = f"the worker running the task crashed: {message}"
    outcome = TaskOutcome(
        job_id=job_id,
        task_id=task_id,
        failure=TaskFailure(kind=kind, message=text),  # type: ignore[arg-type]
        stats=TaskStats(memory_limit_mb=limit, finished_at=time.time()),
    )
    if not put_result(s3, bucket, prefix, signing_key, outcome):
        return "duplicate"
    return "failure-recorded"


def handle_event(
    event: Any,
    context: Any,
    s3: Any,
    *,
    prefix: str,
    signing_key: bytes | None,
    state: WorkerState,
    only_bucket: str | None = None,
) -> dict[str, int]:
    """Everything the Lambda handler does with one event; counts what happened to each task.

    A task event runs its task; a record from our own on-failure destination (a task
    that timed out, ran out of memory or crashed) writes an error result for it.
    """
    outcomes: dict[str, int] = {}
    failed, kind, message = failure_records(event)
    work: list[tuple[str, str, bytes | None, bool]] = [(b, k, None, True) for b, k, _ in failed]
    work += [(b, k, inline, False) for b, k, inline in task_records(event)]
    for bucket, object_key, inline, is_failure in work:
        if only_bucket is not None and bucket != only_bucket:
            print(f"dolambda: ignoring event from bucket {bucket!r} (serving {only_bucket!r})")
            what = "ignored"
        elif signing_key is None:
            print("dolambda: DOLAMBDA_SIGNING_KEY is not set; refusing to run anything")
            what = "no-key"
        elif is_failure:
            what = write_failure(
                s3,
                bucket,
                object_key,
                prefix=prefix,
                signing_key=signing_key,
                kind=kind,
                message=message,
                context=context,
            )
        else:
            what = process_s3_task(
                s3,
                bucket,
                object_key,
                prefix=prefix,
                signing_key=signing_key,
                state=state,
                context=context,
                inline_task=inline,
            )
        outcomes[what] = outcomes.get(what, 0) + 1
    return outcomes
