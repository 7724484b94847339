"""Dispatch: a job's objects and tasks go up to S3 (or to Lambda's Invoke), and
come down again when the job ends.

Every function takes the job's :class:`~dolambda._backends.lambda_.state.RunState`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from dolambda._aws.invoke import tier_alias
from dolambda._backends.lambda_.state import Pending, RunState
from dolambda._core.tasks import PlannedTask
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import plan_context

#: the most bytes an asynchronous (``InvocationType="Event"``) Invoke request may carry:
#: 1 MB since October 2025 (256 KB before); synchronous ones may carry 6 MB.
#: https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html and
#: https://docs.aws.amazon.com/lambda/latest/dg/API_Invoke.html
EVENT_PAYLOAD_LIMIT = 1024 * 1024
#: room left in the payload: Lambda's on-failure record for an invocation embeds its
#: payload (``requestPayload``) next to ``requestContext``, ``responseContext`` and the
#: error (``responsePayload``, a message and maybe a stack trace), so a payload at the
#: limit would leave no room for the record that reports its failure
RECORD_HEADROOM = 64 * 1024
#: the largest JSON payload (bucket, key and the base64 task) dolambda sends inline;
#: a larger task goes to S3 and the payload names its key. Base64 grows a task by 4/3,
#: so tasks up to ~720 KiB travel inline.
INLINE_LIMIT = EVENT_PAYLOAD_LIMIT - RECORD_HEADROOM


# a body at least this large is uploaded only when the bucket lacks it (one HEAD first);
# a smaller one is simply PUT (one request either way, and it may as well be fresh)
SHARED_BODY_OVER = 256 * 1024
# a shared body last written longer ago than this is written again: the bucket's
# lifecycle rule (`dolambda deploy --expire-days`, 1 day at least) counts from the last
# write, and must not expire it under a running job
BODY_REFRESH = 6 * 3600.0


async def put_job_objects(run: RunState) -> None:
    """The sealed manifest under ``jobs/<id>/`` and the body under ``bodies/<sha256>``."""
    sealed, s3, p = run.sealed, run.s3, run.prefix
    await asyncio.gather(
        s3.put(_keys.manifest_key(p, sealed.job_id), sealed.sealed_manifest), put_body(run)
    )


async def put_body(run: RunState) -> None:
    """The job's body, by content: a large one already in the bucket (another job put it
    there, less than :data:`BODY_REFRESH` ago) is not sent again."""
    sealed, s3 = run.sealed, run.s3
    key = sealed.body_key(run.prefix)
    if len(sealed.sealed_body) >= SHARED_BODY_OVER:
        age = await s3.age(key)
        if age is not None and age < BODY_REFRESH:
            return
    await s3.put(key, sealed.sealed_body)


async def send(run: RunState, task_id: int, blob: bytes) -> None:
    """Enqueue one task; the caller holds a place in ``run.uploads``. A task on a memory
    tier above the base goes to that tier's alias with an Invoke (its key is then not
    one the bucket's notification fires for), or a call of that alias."""
    entry = run.pending.get(task_id)
    tier = entry.tier if entry is not None else run.start_tier
    qualifier = None if tier == 0 else tier_alias(run.settings.ladder[tier])
    invoke = run.settings.trigger in ("invoke", "call") or qualifier is not None
    key = _keys.task_key(run.prefix, run.job.job_id, task_id, invoke=invoke)
    if qualifier is not None and run.settings.trigger == "s3":
        run.invoked.add(task_id)  # (its key, for the cleanup)
    if invoke:
        payload = invoke_payload(run.settings.bucket, key, blob)
        if "task" not in payload:
            await run.s3.put(key, blob)
        else:
            run.s3.counter.sent(len(payload["task"]))
        if run.settings.trigger == "call":
            from dolambda._backends.lambda_ import call  # (it imports this module)

            # the worker returns the result in the response: no LIST, no GET
            await call.start(run, task_id, {**payload, "respond": True}, qualifier)
            return
        await run.s3.invoker.invoke(payload, qualifier)
    else:
        await run.s3.put(key, blob)


def invoke_payload(bucket: str, key: str, blob: bytes) -> dict[str, Any]:
    """The Invoke payload for the task ``blob`` at ``key``: the task inline when the
    encoded payload stays within :data:`INLINE_LIMIT`, else only its key (then the
    caller PUTs the task first).

    >>> len(json.dumps(invoke_payload("b", "k", bytes(700 * 1024)))) <= INLINE_LIMIT
    True
    >>> "task" in invoke_payload("b", "k", bytes(800 * 1024))
    False
    """
    payload: dict[str, Any] = {"bucket": bucket, "key": key}
    if 4 * -(-len(blob) // 3) < INLINE_LIMIT:  # base64 length: skip encoding what cannot fit
        inline = {**payload, "task": base64.b64encode(blob).decode()}
        if len(json.dumps(inline).encode()) <= INLINE_LIMIT:
            return inline
    return payload


async def _send_and_release(run: RunState, task_id: int, blob: bytes) -> None:
    try:
        started = time.monotonic()
        await send(run, task_id, blob)
        if not run.sent_any.is_set():
            run.first_send = time.monotonic() - started
            run.sent_any.set()
    finally:
        run.uploads.release()


async def send_tasks(run: RunState, tasks: AsyncIterator[PlannedTask]) -> None:
    """Send every task (at most ``pool`` uploads in flight), then write the plan."""
    job = run.job
    sends: set[asyncio.Task[None]] = set()
    if not job.resumed and not run.inline_job:
        await put_job_objects(run)  # before any task a worker could run
    try:
        async for planned in tasks:
            run.pending[planned.task_id] = Pending(
                planned, 0, time.monotonic(), tier=run.start_tier
            )
            run.task_ids.append(planned.task_id)
            if job.resumed:
                continue
            blob = run.sealed.sealed_task(planned, with_job=run.inline_job)
            if run.settings.trigger == "call":
                # the tasks are in no object: the plan carries them, for Job.attach
                run.task_blobs[planned.task_id] = (
                    run.sealed.sealed_task(planned) if run.inline_job else blob
                )
            await run.uploads.acquire()  # backpressure: at most `pool` uploads in flight
            sends.add(asyncio.create_task(_send_and_release(run, planned.task_id, blob)))
            for done in [s for s in sends if s.done()]:
                sends.discard(done)
                done.result()  # an upload error stops the dispatch
        await asyncio.gather(*sends)
    except BaseException:
        for s in sends:
            s.cancel()
        raise
    if not job.resumed:
        if run.inline_job:
            # the tasks carried the job: its objects are for Job.attach (and retries
            # after an attach), which needs the plan too, so they go up now, before it
            await put_job_objects(run)
        await _put_plan(run)
    job.attachable = True  # (an attached job was, and stays, attachable)
    run.dispatch_done = True
    run.sent_any.set()  # (a job with no task at all)
    run.wake.set()


async def _put_plan(run: RunState) -> None:
    """``plan.json``, written last: its presence means the job was fully dispatched."""
    job, record = run.job, run.job.record
    state = None if record is None else record.spec
    plan = {
        "tasks": len(run.task_ids),
        "markers": []
        if record is None
        else [[list(m.prefix), list(m.path), m.count] for m in record.markers],
        # the loop's combine, for Job.attach (None: it could not be pickled)
        "client": None if state is None else base64.b64encode(state).decode(),
    }
    if run.task_blobs:  # trigger="call": the sealed tasks (no task object holds them)
        plan["sealed_tasks"] = {
            str(t): base64.b64encode(b).decode() for t, b in run.task_blobs.items()
        }
        run.task_blobs.clear()
    await run.s3.put(
        _keys.plan_key(run.prefix, job.job_id),
        codec.seal(json.dumps(plan).encode(), key=run.sealed.key, context=plan_context(job.job_id)),
    )


async def resend(run: RunState, task_id: int, entry: Pending) -> None:
    """Enqueue the task again (a new ObjectCreated event, or a new Invoke)."""
    entry.attempt += 1
    entry.dispatched_at = time.monotonic()
    entry.copies = 1  # the copies out before are given up (a late result still counts)
    blob = run.sealed.sealed_task(entry.planned, attempt=entry.attempt, with_job=run.inline_job)
    async with run.uploads:
        await send(run, task_id, blob)


async def withdraw(run: RunState, finished: bool) -> None:
    """The job is over: a stopped job's queued tasks are cancelled (workers then skip
    them); unless ``keep``, the job's objects are deleted. Errors are ignored. A
    detached job (the client left it running, for ``Job.attach``) is left as it is."""
    job, s3, p = run.job, run.s3, run.prefix
    if job.detached:
        return
    with contextlib.suppress(Exception):
        stopped = not finished or job.cancelled.is_set()
        cleanup = not run.settings.keep and (finished or job.cancelled.is_set())
        invoke = run.settings.trigger in ("invoke", "call")
        if stopped:
            await s3.put(_keys.cancel_key(p, job.job_id), b"")
            if not cleanup:  # otherwise the cleanup below deletes the queued tasks
                await s3.delete_keys(
                    _keys.task_key(p, job.job_id, t, invoke=invoke or t in run.invoked)
                    for t in run.pending
                )
        if cleanup:
            # every key is known: no LIST, one DeleteObjects per 1,000 keys
            keys = [_keys.task_key(p, job.job_id, t, invoke=invoke) for t in run.task_ids]
            keys += [_keys.task_key(p, job.job_id, t, invoke=True) for t in run.invoked]
            keys += [_keys.result_key(p, job.job_id, t) for t in run.task_ids]
            # (not the body: other jobs may share it; the lifecycle rule expires it)
            keys += [_keys.manifest_key(p, job.job_id), _keys.plan_key(p, job.job_id)]
            if not job.cancelled.is_set():
                keys.append(_keys.cancel_key(p, job.job_id))
            await s3.delete_keys(keys)
