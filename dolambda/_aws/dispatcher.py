"""A remote dispatcher: the worker queues a job's tasks from inside AWS (issue 17.2).

::

    client                          S3 / Lambda                      dispatcher (this module)
    ──────                          ───────────                      ────────────────────────
    PUT jobs/<id>/dispatch  ──────► every task, sealed (DispatchPlan)
    Invoke {"dispatch": 0..n} ────► ─────────────────────────────►   GET + verify the plan
                                                                     range > span: Invoke a
                                    ◄──── {"dispatch": a..b} x k ─── child per sub-range
                                                                     else, in batches:
                                                                       HEAD jobs/<id>/cancel
                                    ◄── PUT queue/<id>/<t>.task ──── (trigger="s3"), or
                                    ◄── Invoke {"bucket","key",...}  (trigger="invoke")

Each dispatcher first verifies the plan (signed with the job's key, for this job);
one whose range holds more than ``span`` tasks splits it
(:func:`dolambda._wire.events.split_range`), invokes a child dispatcher for each
sub-range but the first, and goes on with the first (split again, down the levels);
then it queues its tasks through a pool of :data:`THREADS` threads (boto3 clients
are thread-safe), looking at the job's cancel marker before each batch and at the
invocation's time left. A request that fails is logged and skipped, never raised: a
raise would make the invocation fail (and on a function with Lambda's retries on, run
the whole range again). Each task it could not queue (its PUT or Invoke failed, or the
Invoke of the child dispatcher for its range did) is reported as its result: a failure
of kind ``"undispatched"`` naming the error, which the client answers by sending the
task itself at once (a role without the DispatchTasks or InvokeItself grant would
otherwise leave every task to the client's lost-task timer, the function's timeout
later). What no report covers (the invocation ran out of time, or died) the timer sends.

Every task queued here carries a mark (S3 metadata ``dolambda-dispatched``, or
``"dispatched": true`` in the Invoke payload) that makes its worker look at the cancel
marker before it runs it: a task queued just after the client cancelled the job and
deleted its queue (the dispatcher looked just before) is then skipped, not run.

Lambda stops a chain of invocations caused by one event after 16 of them
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-recursion.html; the Invoke
API, S3 and SQS carry the count): the client's Invoke, at most :data:`LEVELS` levels of
dispatchers, then the task's own invocation is at most 5 of them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dolambda._aws.errors import OBJECT_MISSING, kind_of
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.events import (
    FANOUT,
    LEVELS,
    DispatchRange,
    dispatch_event,
    invoke_payload,
    split_range,
)
from dolambda._wire.models import DispatchPlan

#: requests in flight at once (the handler's clients hold as many connections)
THREADS = 32
#: tasks queued between two looks at the cancel marker (and at the time left)
BATCH = 2 * THREADS
#: the S3 object metadata (``x-amz-meta-...``) that marks a task a dispatcher queued
MARK = "dolambda-dispatched"


def dispatch(
    r: DispatchRange,
    context: Any,
    s3: Any,
    lam: Callable[[], Any],
    *,
    prefix: str,
    signing_key: bytes,
    function_name: str,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Queue the tasks of ``r`` (or invoke its children); counts of what happened.

    ``lam()`` returns the boto3 Lambda client (made on first use). Never raises for a
    request that fails: it is counted as ``"failed"`` and logged.
    """
    where = f"s3://{r.bucket}/{r.key}"
    if not _keys.valid_job_id(r.job_id) or r.key != _keys.dispatch_plan_key(prefix, r.job_id):
        log(f"dolambda: ignoring dispatch of {where}: not a dispatch plan under {prefix!r}")
        return {"ignored": 1}
    try:
        blob: bytes = s3.get_object(Bucket=r.bucket, Key=r.key)["Body"].read()
    except Exception as exc:
        if kind_of(exc) in OBJECT_MISSING:
            log(f"dolambda: dispatch plan {where} is gone (job finished or cancelled)")
            return {"gone": 1}
        log(f"dolambda: dispatch plan {where} cannot be read: {type(exc).__name__}: {exc}")
        return {"failed": r.size}
    try:
        plan = codec.unseal_model(
            DispatchPlan, blob, key=signing_key, context=codec.dispatch_context(r.job_id)
        )
    except Exception as exc:  # (a wrong signature, another wire version)
        log(f"dolambda: refusing dispatch plan {where}: {exc}")
        return {"refused": 1}
    if plan.job_id != r.job_id or r.last > len(plan.tasks):
        log(f"dolambda: refusing dispatch of {where}: range {r.first}..{r.last} is not its own")
        return {"refused": 1}
    budget = _remaining(context)
    # stop queueing this long before the invocation's end (the rest is the client's)
    margin = 0.0 if budget is None else min(2.0, budget / 8)
    counts: dict[str, int] = {}
    lock = threading.Lock()  # (the pool's threads count)

    def count(what: str, n: int = 1) -> None:
        with lock:
            counts[what] = counts.get(what, 0) + n

    failures: list[str] = []
    unqueued: list[tuple[int, str]] = []  # (task id, why): reported to the client

    def failed(what: str, exc: Exception, task_ids: Any = ()) -> None:
        count("failed")
        with lock:
            why = f"{what}: {type(exc).__name__}: {exc}"
            unqueued.extend((t, why) for t in task_ids)
            if len(failures) >= 3:  # (the first few say it; a thousand lines would not)
                return
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
        log(f"dolambda: dispatch of job {r.job_id}: {what}: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(THREADS) as pool:
        share = r  # (children first: the first sub-range is then queued from here)
        while share.size > share.span and share.depth < LEVELS - 1:
            if job_cancelled(s3, r.bucket, prefix, r.job_id, log):
                log(f"dolambda: dispatch of job {r.job_id} stopped: the job was cancelled")
                count("cancelled", share.size)
                return counts
            share, *children = split_range(share, FANOUT, LEVELS)

            def invoke_child(child: DispatchRange) -> None:
                try:
                    lam().invoke(
                        FunctionName=function_name,
                        InvocationType="Event",
                        Payload=json.dumps(dispatch_event(child)).encode(),
                    )
                    count("children")
                except Exception as exc:
                    failed(
                        f"the dispatcher of task positions {child.first}..{child.last}",
                        exc,
                        plan.task_ids[child.first : child.last],
                    )

            list(pool.map(invoke_child, children))

        def queue(position: int) -> None:
            task_id, task = plan.task_ids[position], plan.tasks[position]
            try:
                _queue_one(
                    s3, lam, plan.trigger, r.bucket, prefix, r.job_id, task_id, task, function_name
                )
                count("queued")
            except Exception as exc:
                failed(f"queueing task {task_id}", exc, (task_id,))

        for start in range(share.first, share.last, BATCH):
            left = _remaining(context)
            if left is not None and left < margin:
                log(
                    f"dolambda: dispatch of job {r.job_id} stopped at task position {start} "
                    f"of {share.first}..{share.last}: the invocation's time is up (the "
                    "client sends the rest)"
                )
                count("unsent", share.last - start)
                break
            if job_cancelled(s3, r.bucket, prefix, r.job_id, log):
                log(f"dolambda: dispatch of job {r.job_id} stopped: the job was cancelled")
                count("cancelled", share.last - start)
                break
            list(pool.map(queue, range(start, min(start + BATCH, share.last))))
        if unqueued:
            reported = pool.map(
                lambda item: _report_unqueued(s3, r.bucket, prefix, signing_key, r.job_id, *item),
                unqueued,
            )
            count("reported", sum(reported))
    return counts


def _report_unqueued(
    s3: Any, bucket: str, prefix: str, signing_key: bytes, job_id: str, task_id: int, why: str
) -> bool:
    """Write the ``"undispatched"`` result of a task this dispatcher could not queue
    (the client then sends it itself); False when even that fails (the client's timer
    sends it) or a result is already there."""
    from dolambda._aws.worker import put_failure  # (the worker imports this module)

    message = (
        f"the remote dispatcher could not queue task {task_id} ({why}); if this is "
        "AccessDenied, the function's role lacks the DispatchTasks or InvokeItself grant: "
        "run `dolambda doctor`, or `dolambda deploy` again"
    )
    try:
        return put_failure(
            s3, bucket, prefix, signing_key, job_id, task_id, "undispatched", message
        )
    except Exception as exc:
        print(f"dolambda: job {job_id}: task {task_id} could not be reported unqueued: {exc}")
        return False


def _queue_one(
    s3: Any,
    lam: Callable[[], Any],
    trigger: str,
    bucket: str,
    prefix: str,
    job_id: str,
    task_id: int,
    task: bytes,
    function_name: str,
) -> None:
    """PUT the task under ``queue/`` (trigger="s3"), or Invoke the function with it, as
    the client's dispatch would (:func:`dolambda._wire.events.invoke_payload`)."""
    if trigger == "s3":
        key = _keys.task_key(prefix, job_id, task_id)
        s3.put_object(Bucket=bucket, Key=key, Body=task, Metadata={MARK: "1"})
        return
    key = _keys.task_key(prefix, job_id, task_id, invoke=True)
    payload = invoke_payload(bucket, key, task)
    if "task" not in payload:  # too large to inline: the payload names its key
        s3.put_object(Bucket=bucket, Key=key, Body=task, Metadata={MARK: "1"})
    lam().invoke(
        FunctionName=function_name,
        InvocationType="Event",
        Payload=json.dumps({**payload, "dispatched": True}).encode(),
    )


def _remaining(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return float(remaining()) / 1000 if callable(remaining) else None


def job_cancelled(
    s3: Any, bucket: str, prefix: str, job_id: str, log: Callable[[str], None]
) -> bool:
    """Whether the job's cancel marker exists (a failure to tell: go on)."""
    try:
        s3.head_object(Bucket=bucket, Key=_keys.cancel_key(prefix, job_id))
    except Exception as exc:
        if kind_of(exc) not in OBJECT_MISSING:
            log(f"dolambda: job {job_id}: its cancel marker could not be read: {exc}")
        return False
    return True


def queued_by_dispatcher(response: Any) -> bool:
    """Whether a task object's GET response carries the dispatcher's mark."""
    metadata = response.get("Metadata") if isinstance(response, dict) else None
    return isinstance(metadata, dict) and metadata.get(MARK) == "1"
