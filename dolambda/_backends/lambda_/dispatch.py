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
from typing import Literal

from dolambda._aws.invoke import tier_alias
from dolambda._backends.lambda_.state import Pending, RunState
from dolambda._core.tasks import PlannedTask
from dolambda._errors import ConfigError
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import dispatch_context, plan_context
from dolambda._wire.events import (
    EVENT_PAYLOAD_LIMIT,
    INLINE_LIMIT,
    RECORD_HEADROOM,
    REMOTE_DISPATCH,
    DispatchRange,
    dispatch_event,
    invoke_payload,
    tree_size,
)
from dolambda._wire.models import DispatchPlan

# (the Invoke payload is the wire's: a remote dispatcher sends the same one)
__all__ = ["EVENT_PAYLOAD_LIMIT", "INLINE_LIMIT", "RECORD_HEADROOM", "invoke_payload"]

#: dispatch="auto" hands the dispatch to Lambda from this many tasks on
REMOTE_FROM = 1_000
#: ... when the planner yields them within this many seconds (a slower one, e.g. a lazy
#: generator of inputs, is dispatched by the client as it goes: its first tasks run
#: while the rest is planned)
AUTO_WAIT = 1.0
#: tasks one remote dispatcher queues a second, for sizing its share: its CPU is the
#: bound (32 requests in flight at ~10-20 ms each in the region would be ~1,600-3,200 a
#: second, but boto3 spends ~1-2 ms of CPU a request, and a 1 GB function has ~0.6 vCPU)
DISPATCH_RATE = 500.0
#: a dispatcher queues at most this many tasks itself, ~2 s of it (a larger job is split
#: among children, who work in parallel, up to S3's 3,500 PUTs a second per prefix), and
#: at most what it queues in a quarter of the function's timeout at DISPATCH_RATE
MAX_SPAN = 1_000


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


async def _put_job_objects_after_first(run: RunState) -> None:
    """The job's objects once the first task is out (not beside it: its PUT is what
    starts the first worker)."""
    await run.sent_any.wait()
    await put_job_objects(run)


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
    """Send every task (at most ``pool`` uploads in flight), then write the plan; or,
    for a job dispatched remotely (:func:`dispatches_remotely`), hand it to Lambda."""
    job = run.job
    if not job.resumed and dispatches_remotely(run):
        ahead, remote = await _plan_ahead(run, tasks)
        if remote and await _function_dispatches(run):
            await _dispatch_remotely(run, ahead)
            return
        tasks = _replay(ahead, tasks)
    sends: set[asyncio.Task[None]] = set()
    if not job.resumed and not run.inline_job:
        await put_job_objects(run)  # before any task a worker could run
    # the tasks carry the job: its objects are for Job.attach (and retries after an
    # attach), so they go up once the first task is out, beside the others, before the plan
    job_objects: asyncio.Task[None] | None = None
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
            if job_objects is None and run.inline_job:
                job_objects = asyncio.create_task(_put_job_objects_after_first(run))
            for done in [s for s in sends if s.done()]:
                sends.discard(done)
                done.result()  # an upload error stops the dispatch
        await asyncio.gather(*sends)
        # every task is out: the gather's tail (GETs of the last keys) need not wait for
        # the job's objects and the plan
        run.tasks_out = True
        run.wake.set()
        if job_objects is not None:
            await job_objects
        elif run.inline_job and not job.resumed:  # (a job with no task at all)
            await put_job_objects(run)
    except BaseException:
        for s in (*sends, job_objects):
            if s is not None:
                s.cancel()
        raise
    if not job.resumed:
        await _put_plan(run)  # (last: its presence means the job was fully dispatched)
    job.attachable = True  # (an attached job was, and stays, attachable)
    run.tasks_out = True
    run.dispatch_done = True
    run.sent_any.set()  # (a job with no task at all)
    run.wake.set()


def dispatches_remotely(run: RunState) -> bool:
    """Whether the job may be dispatched from inside AWS: ``dispatch`` is not
    "client", the trigger is not "call" (the client is the caller), and the tasks
    start on the base memory tier (a tier's alias is the client's to invoke)."""
    settings = run.settings
    return (
        settings.dispatch != "client"
        and settings.trigger in ("s3", "invoke")
        and run.start_tier == 0
    )


async def _plan_ahead(
    run: RunState, tasks: AsyncIterator[PlannedTask]
) -> tuple[list[PlannedTask], bool]:
    """The tasks planned so far, and whether the job is dispatched remotely: always for
    dispatch="remote" (every task is planned), and for "auto" once
    :data:`REMOTE_FROM` tasks are planned within :data:`AUTO_WAIT` seconds."""
    planned: list[PlannedTask] = []
    if run.settings.dispatch == "remote":
        planned = [t async for t in tasks]
        return planned, True
    started = time.monotonic()
    async for task in tasks:
        planned.append(task)
        if len(planned) >= REMOTE_FROM:
            planned.extend([t async for t in tasks])
            return planned, True
        if time.monotonic() - started > AUTO_WAIT:
            break
    return planned, False


async def _function_dispatches(run: RunState) -> bool:
    """Whether the function can dispatch remotely: its package record lists the
    feature. dispatch="auto" falls back to the client's own dispatch otherwise (a
    function deployed by an older dolambda ignores a dispatch event, and every task
    would wait for the lost-task timer); dispatch="remote" is refused before anything
    is sent. Without a record at all, "auto" dispatches itself and "remote" trusts the
    caller."""
    record = None if run.function_record is None else await run.function_record()
    if record is not None and REMOTE_DISPATCH in record.features:
        return True
    if run.settings.dispatch != "remote":
        return False
    if record is None:
        return True
    raise ConfigError(
        f"LambdaBackend(dispatch='remote'): function {record.function_name!r} was deployed "
        f"by a dolambda without remote dispatch (its package record, {record.where}, does "
        "not list it), so it would ignore the dispatch event; run `dolambda deploy` again "
        "(it also adds the role's two grants for it), or use dispatch='client'"
    )


async def _replay(
    planned: list[PlannedTask], rest: AsyncIterator[PlannedTask]
) -> AsyncIterator[PlannedTask]:
    for task in planned:
        yield task
    async for task in rest:
        yield task


def dispatch_span(task_timeout: float) -> int:
    """The most tasks one remote dispatcher queues itself (:data:`MAX_SPAN`, or what it
    queues in a quarter of the function's timeout at :data:`DISPATCH_RATE`).

    >>> dispatch_span(900.0), dispatch_span(4.0)
    (1000, 500)
    """
    return max(1, min(MAX_SPAN, int(DISPATCH_RATE * task_timeout / 4)))


async def _dispatch_remotely(run: RunState, planned: list[PlannedTask]) -> None:
    """Remote dispatch: the job's objects, every task sealed in ONE dispatch plan, the
    plan for Job.attach, then ONE asynchronous Invoke of the function with a dispatch
    event: the function queues the tasks (:mod:`dolambda._aws.dispatcher`). Each task is
    pending from the Invoke on, so a task no dispatcher queued is sent again by the
    lost-task timer, as any lost task is."""
    job, settings = run.job, run.settings
    run.inline_job = False  # (the job's objects go up first: a task carries no copy)
    run.remote = True
    await put_job_objects(run)
    blobs = [run.sealed.sealed_task(p) for p in planned]
    trigger: Literal["s3", "invoke"] = "invoke" if settings.trigger == "invoke" else "s3"
    plan = DispatchPlan(
        job_id=job.job_id,
        trigger=trigger,
        task_ids=tuple(p.task_id for p in planned),
        tasks=tuple(blobs),
    )
    plan_key = _keys.dispatch_plan_key(run.prefix, job.job_id)
    sealed_plan = codec.seal_model(plan, key=run.sealed.key, context=dispatch_context(job.job_id))
    await run.s3.put(plan_key, sealed_plan)
    for p in planned:
        run.task_ids.append(p.task_id)
    await _put_plan(run)  # (before the Invoke: Job.attach can resume from here on)
    share = DispatchRange(
        settings.bucket, plan_key, job.job_id, 0, len(planned), dispatch_span(settings.task_timeout)
    )
    job.stats.dispatch = "remote"
    job.stats.dispatchers = tree_size(share)
    now = time.monotonic()
    for p in planned:
        run.pending[p.task_id] = Pending(p, 0, now, tier=run.start_tier)
    if planned:
        started = time.monotonic()
        await run.s3.invoker.invoke(dispatch_event(share))
        run.first_send = time.monotonic() - started
    job.attachable = True
    run.tasks_out = run.dispatch_done = True
    run.sent_any.set()
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
        # dispatched remotely: the tasks are in the dispatch plan (Job.attach reads them
        # there; with trigger="invoke" small ones are in no object of their own)
        "dispatch": "remote" if run.remote else "client",
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
            keys.append(_keys.dispatch_plan_key(p, job.job_id))  # (if dispatched remotely)
            if not job.cancelled.is_set():
                keys.append(_keys.cancel_key(p, job.job_id))
            await s3.delete_keys(keys)
