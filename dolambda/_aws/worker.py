"""The boto3 side of the Lambda worker: events in, task objects read, results written.

The handler (``handler/lambda_function.py``) hands each event to :func:`handle_event`:

- an S3 ``ObjectCreated`` record or a direct invoke names a task under
  ``<prefix>/queue/`` (:func:`task_records`); :func:`process_s3_task` reads it
  (and, for a worker new to the job, the manifest and body, and the job's code
  archives it has not cached, ``<prefix>/code/<sha256>.zip``), runs it through the
  one execution path (:func:`dolambda._core.execute.run_task_blob`) and writes the
  sealed outcome once (:func:`put_result`, ``If-None-Match: *``);
- a remote dispatcher's event (``{"dispatch": ...}``) queues a range of a job's tasks
  from its signed dispatch plan (:mod:`dolambda._aws.dispatcher`);
- with the deployed handler's :class:`~dolambda._aws.watchdog.Watchdog`, the
  iterations run in a warm child process, so a task that runs past the invocation's
  time, out of memory or crashes becomes an error result written here, in seconds
  (Lambda's own retries are off and no on-failure destination is configured: the
  client owns retries).

``s3`` is the boto3 client the Lambda runtime ships (this module imports neither
boto3 nor aioboto3: the deployment package stays small).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from dolambda._aws import dispatcher
from dolambda._aws.dispatcher import job_cancelled, queued_by_dispatcher
from dolambda._aws.errors import OBJECT_MISSING, Kind, kind_of
from dolambda._aws.watchdog import Watchdog
from dolambda._core.execute import BodyNotLoaded, CodeUnavailable, WorkerState, run_task_blob
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.events import parse_dispatch
from dolambda._wire.models import (
    FailureKind,
    JobManifest,
    TaskFailure,
    TaskOutcome,
    TaskSpec,
    TaskStats,
)


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
    watchdog: Watchdog | None = None,
    written: Callable[[str, bytes], None] | None = None,
    check_cancel: bool = False,
) -> str:
    """Run the task stored at ``bucket``/``key`` and write its result; return what happened.

    ``s3`` is a boto3 S3 client (the one the Lambda runtime ships). Keys outside
    ``<prefix>/queue/`` are ignored, so nothing this writes can trigger it again (only a
    remote dispatcher writes under ``queue/``: :mod:`dolambda._aws.dispatcher`).
    A task object that is gone was cancelled. The result is written with
    ``If-None-Match: *``: a duplicate event cannot overwrite a result. Returns
    ``"ignored"``, ``"gone"``, ``"done"``, ``"duplicate"`` or ``"cancelled"``; never raises
    for the body. With a ``watchdog`` and a ``context`` that tells the time left, the task
    runs in the watchdog's child process, which is stopped (and no result written) when
    the job's cancel marker appears while it runs. ``written(key, sealed)`` is told the
    result this call wrote (trigger="call" returns it in the response). A task a remote
    dispatcher queued (``check_cancel``, or its object's mark) is skipped when the job's
    cancel marker exists (:mod:`dolambda._aws.dispatcher`).
    """
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

    def get_code(digest: str) -> bytes:
        code_key = _keys.code_key(prefix, digest)
        try:
            return get(code_key)
        except Exception as exc:
            kind = kind_of(exc)
            why = "it does not exist" if kind in OBJECT_MISSING else f"{type(exc).__name__}: {exc}"
            raise CodeUnavailable(
                f"the code archive of job {job_id}, s3://{bucket}/{code_key}, cannot be "
                f"read ({why}); nothing of the job can run. It is uploaded before the "
                "job's tasks: was it deleted (by a lifecycle rule?) while the job ran? "
                "Run the job again"
            ) from exc

    def fetch_job() -> tuple[bytes, bytes]:
        manifest = get(_keys.manifest_key(prefix, job_id))
        # the body is stored by its digest, which the (verified) manifest names
        digest = codec.unseal_model(
            JobManifest, manifest, key=signing_key, context=codec.manifest_context(job_id)
        ).body_digest
        body_key = _keys.body_key(prefix, digest, codec.key_tag(signing_key, digest))
        try:
            return manifest, get(body_key)
        except Exception as exc:
            if kind_of(exc) not in OBJECT_MISSING:
                raise
            raise BodyNotLoaded(
                f"the body of job {job_id}, s3://{bucket}/{body_key}, does not exist; nothing "
                "of the job can run. It is uploaded before the job's tasks: was it deleted "
                "(by a lifecycle rule?) while the job ran? Run the job again"
            ) from exc

    if inline_task is not None:
        blob = inline_task
    else:
        try:
            requests += 1
            response = s3.get_object(Bucket=bucket, Key=key)
            blob = response["Body"].read()
        except Exception as exc:
            if kind_of(exc) in OBJECT_MISSING:
                log(f"dolambda: task s3://{bucket}/{key} is gone (job cancelled or finished)")
                return "gone"
            raise
        check_cancel = check_cancel or queued_by_dispatcher(response)
    stats: dict[str, Any] = {}
    if context is not None:
        stats["request_id"] = str(getattr(context, "aws_request_id", ""))
        stats["memory_limit_mb"] = int(getattr(context, "memory_limit_in_mb", 0) or 0)

    def cancelled() -> bool:
        nonlocal requests
        requests += 1
        return job_cancelled(s3, bucket, prefix, job_id, log)

    if check_cancel and cancelled():
        log(f"dolambda: task {job_id}/{task_id} skipped: the job was cancelled")
        return "cancelled"
    task = _verified_task(blob, signing_key, job_id, task_id)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if watchdog is not None and task is not None and callable(remaining):
        watched = watchdog.run(
            blob,
            task,
            key=signing_key,
            remaining=lambda: float(remaining()) / 1000,
            fetch_job=fetch_job,
            fetch_code=get_code,
            stats=stats,
            cancelled=cancelled,
        )
        if watched is None:
            log(f"dolambda: task {job_id}/{task_id} stopped: the job was cancelled")
            return "cancelled"
        outcome = watched
    else:  # no deadline to watch (or a task that fails verification): in this process
        outcome = run_task_blob(
            state,
            blob,
            key=signing_key,
            job_id=job_id,
            task_id=task_id,
            fetch_job=fetch_job,
            stats=stats,
            fetch_code=get_code,
        )
    outcome = outcome.model_copy(
        update={"stats": outcome.stats.model_copy(update={"s3_requests": requests + 1})}
    )
    if outcome.failure is not None:
        log(f"dolambda: task {job_id}/{task_id}: {outcome.failure.kind}: {outcome.failure.message}")
    if not put_result(s3, bucket, prefix, signing_key, outcome, written=written):
        return "duplicate"
    return "done"


def _verified_task(blob: bytes, key: bytes, job_id: str, task_id: int) -> TaskSpec | None:
    """The task, or None when it fails verification (the in-process path reports why)."""
    try:
        task = codec.unseal_model(
            TaskSpec, blob, key=key, context=codec.task_context(job_id, task_id)
        )
    except Exception:
        return None
    return task if (task.job_id, task.task_id) == (job_id, task_id) else None


def put_result(
    s3: Any,
    bucket: str,
    prefix: str,
    signing_key: bytes,
    outcome: TaskOutcome,
    *,
    written: Callable[[str, bytes], None] | None = None,
) -> bool:
    """Write a task's result once (``If-None-Match: *``); False when one already exists.
    ``written(key, sealed)`` is called with what was written."""
    job_id, task_id = outcome.job_id, outcome.task_id
    data = codec.seal_model(
        outcome, key=signing_key, context=codec.outcome_context(job_id, task_id)
    )
    key = _keys.result_key(prefix, job_id, task_id)
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            if written is not None:
                written(key, data)
            return True
        except Exception as exc:
            kind = kind_of(exc)
            if kind is Kind.EXISTS:
                return False
            if kind is not Kind.WRITE_CONFLICT or attempt == CONFLICT_RETRIES:
                raise
            time.sleep(0.05 * 2**attempt)  # 409: another write to the key was in flight
    raise AssertionError("unreachable")  # pragma: no cover


def report_handler_error(
    s3: Any,
    bucket: str,
    key: str,
    *,
    prefix: str,
    signing_key: bytes,
    exc: Exception,
    written: Callable[[str, bytes], None] | None = None,
) -> str:
    """Write an ``internal`` failure for the task at ``key`` naming ``exc`` (the AWS error
    code and message as S3 gave them); re-raise when even that cannot be written."""
    import traceback

    parsed = _keys.parse_task_key(prefix, key)
    if parsed is None:
        raise exc
    job_id, task_id = parsed
    traceback.print_exception(exc)  # the function's log has it whole
    message = (
        f"the worker could not run the task s3://{bucket}/{key}: {type(exc).__name__}: "
        f"{exc}. If this is AccessDenied, the function's role lacks a permission: run "
        "`dolambda doctor` (it checks the role's policy) or `dolambda deploy` again"
    )
    try:
        stored = put_failure(
            s3, bucket, prefix, signing_key, job_id, task_id, "internal", message, written
        )
    except Exception:
        raise exc from None
    return "failure-recorded" if stored else "duplicate"


def put_failure(
    s3: Any,
    bucket: str,
    prefix: str,
    signing_key: bytes,
    job_id: str,
    task_id: int,
    kind: FailureKind,
    message: str,
    written: Callable[[str, bytes], None] | None = None,
) -> bool:
    """Write a task's result that is a failure of ``kind`` (no iteration ran), once, as
    :func:`put_result` does; False when a result is already there."""
    outcome = TaskOutcome(
        job_id=job_id,
        task_id=task_id,
        failure=TaskFailure(kind=kind, message=message),
        stats=TaskStats(finished_at=time.time()),
    )
    return put_result(s3, bucket, prefix, signing_key, outcome, written=written)


#: how often a result PUT that S3 answers 409 ConditionalRequestConflict is tried again
CONFLICT_RETRIES = 4


def task_records(event: Any) -> list[tuple[str, str, bytes | None]]:
    """``(bucket, key, inline task)`` for each task in an S3 event or a direct invoke.

    S3 records carry URL-encoded keys (``queue%2Fjob%2F0000001.task``); a direct
    invoke is ``{"bucket": ..., "key": ..., "task": <base64, optional>}``.
    Anything else yields nothing.
    """
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
    return codec.signing_key_bytes(text)


def handle_event(
    event: Any,
    context: Any,
    s3: Any,
    *,
    prefix: str,
    signing_key: bytes | None,
    state: WorkerState,
    only_bucket: str | None = None,
    watchdog: Watchdog | None = None,
    results: list[dict[str, str]] | None = None,
    lambda_client: Callable[[], Any] | None = None,
    function_name: str = "",
) -> dict[str, int]:
    """Everything the Lambda handler does with one event; counts what happened to each task.

    A remote dispatcher's event (``{"dispatch": ...}``) queues a range of a job's tasks
    (:mod:`dolambda._aws.dispatcher`) through ``s3`` and ``lambda_client()`` (the boto3
    Lambda client, made on first use), invoking ``function_name`` (this function).

    With a ``watchdog`` (the deployed handler's), each task runs in its warm child
    process (:mod:`dolambda._aws.watchdog`). When the event asks for its results
    (``"respond": true``, trigger="call") and ``results`` is a list, each result written
    is appended to it (:func:`response_entry`) for the handler to return.
    """
    outcomes: dict[str, int] = {}
    respond = isinstance(event, dict) and event.get("respond") is True
    share = parse_dispatch(event)
    if share is not None:
        if only_bucket is not None and share.bucket != only_bucket:
            print(f"dolambda: ignoring dispatch from bucket {share.bucket!r} (not {only_bucket!r})")
            return {"ignored": 1}
        if signing_key is None:
            print("dolambda: DOLAMBDA_SIGNING_KEY is not set; refusing to dispatch anything")
            return {"no-key": 1}
        return dispatcher.dispatch(
            share,
            context,
            s3,
            lambda_client or _no_lambda_client,
            prefix=prefix,
            signing_key=signing_key,
            function_name=function_name,
        )
    dispatched = isinstance(event, dict) and event.get("dispatched") is True
    budget = [RESPONSE_BUDGET]

    def written(key: str, data: bytes) -> None:
        if results is not None and respond:
            results.append(response_entry(key, data, budget))

    for bucket, object_key, inline in task_records(event):
        if only_bucket is not None and bucket != only_bucket:
            print(f"dolambda: ignoring event from bucket {bucket!r} (serving {only_bucket!r})")
            what = "ignored"
        elif signing_key is None:
            print("dolambda: DOLAMBDA_SIGNING_KEY is not set; refusing to run anything")
            what = "no-key"
        else:
            try:
                what = process_s3_task(
                    s3,
                    bucket,
                    object_key,
                    prefix=prefix,
                    signing_key=signing_key,
                    state=state,
                    context=context,
                    inline_task=inline,
                    watchdog=watchdog,
                    written=written,
                    check_cancel=dispatched,
                )
            except Exception as exc:
                # not the body's (that is in the outcome): S3 refused the worker, most
                # often AccessDenied from a role that lacks a permission. Lambda's own
                # retries are off and no destination is set, so unless the worker says
                # so the client would only see it at its deadline: write the failure.
                what = report_handler_error(
                    s3,
                    bucket,
                    object_key,
                    prefix=prefix,
                    signing_key=signing_key,
                    exc=exc,
                    written=written,
                )
        outcomes[what] = outcomes.get(what, 0) + 1
    return outcomes


def _no_lambda_client() -> Any:
    raise RuntimeError("the handler gave the worker no Lambda client")


#: the largest response a synchronous invoke may return: 6 MB (the request's limit too).
#: https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
RESPONSE_LIMIT = 6 * 1024 * 1024
#: what the response's results may take: the limit less room for the rest of the
#: response (the outcome counts, the keys, JSON punctuation)
RESPONSE_BUDGET = RESPONSE_LIMIT - 64 * 1024


def response_entry(key: str, data: bytes, budget: list[int]) -> dict[str, str]:
    """``{"key", "result": <base64 sealed result>}`` for a synchronous invoke's response,
    or only ``{"key"}`` when the result (4/3 larger in base64) does not fit what is left
    of ``budget[0]``: the client then GETs it. The budget shrinks by what is returned.

    >>> budget = [RESPONSE_BUDGET]
    >>> sorted(response_entry("k", b"abc", budget)), RESPONSE_BUDGET - budget[0]
    (['key', 'result'], 4)
    >>> response_entry("k", bytes(5 * 1024 * 1024), budget)
    {'key': 'k'}
    """
    size = 4 * -(-len(data) // 3)
    if size > budget[0]:
        return {"key": key}
    budget[0] -= size
    return {"key": key, "result": base64.b64encode(data).decode()}
