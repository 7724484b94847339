"""Attach: rebuild a job from what is in S3, after the client that submitted it died.

The results in S3 are the only source of truth: the job's ``manifest.json``,
its ``plan.json`` (written last, with the loop's combine) and its task objects
become an :class:`~dolambda._backends.base.AttachedJob` (a job dispatched remotely: its
tasks come from its dispatch plan, ``jobs/<id>/dispatch``). A job that was not fully
dispatched cannot be finished: its queued tasks are cancelled and its objects
deleted.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import cast

from dolambda._aws.s3 import S3, gather_limited
from dolambda._backends.base import AttachedJob
from dolambda._backends.lambda_.settings import LambdaSettings
from dolambda._backends.lambda_.split import is_split
from dolambda._core.spec import LoopSpec
from dolambda._core.tasks import InnerDone, PlannedTask
from dolambda._errors import InvalidArgument, InvalidArgumentType
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import dispatch_context, manifest_context, plan_context, task_context
from dolambda._wire.models import DispatchPlan, JobManifest, TaskSpec


def check_job_id(job_id: object) -> str:
    """``job_id`` if it can name a dolambda job, else InvalidArgument."""
    if not isinstance(job_id, str):
        raise InvalidArgumentType(
            f"Job.attach: the job id must be a string such as job.id, got {job_id!r}"
        )
    if not _keys.valid_job_id(job_id):
        raise InvalidArgument(f"Job.attach: {job_id!r} is not a dolambda job id")
    return job_id


async def find_job(s3: S3, settings: LambdaSettings, job_id: str) -> AttachedJob:
    """The job ``job_id`` as stored under the settings' bucket and prefix."""
    prefix = settings.prefix
    blob = await s3.get(_keys.manifest_key(prefix, job_id))
    plan_blob = None if blob is None else await s3.get(_keys.plan_key(prefix, job_id))
    if blob is None:
        # a small job's tasks go out before its manifest: tasks without one are a
        # partial dispatch too
        # (list_keys is an async generator: close it at once, not when collected)
        listing = cast("AsyncGenerator[str, None]", s3.list_keys(_keys.queue_dir(prefix, job_id)))
        async with contextlib.aclosing(listing) as queued:
            first_task = await anext(queued, None)
        if first_task is None:
            raise InvalidArgument(
                f"Job.attach: no job {job_id!r} in s3://{settings.bucket}/{prefix}/"
                "jobs/ (finished and cleaned up, expired, or another bucket/prefix)"
            )
    if plan_blob is None:
        await _discard_partial(s3, prefix, job_id)
        raise InvalidArgument(
            f"Job.attach: job {job_id!r} was not fully dispatched (its client stopped "
            "before every task was uploaded); its queued tasks were cancelled and its "
            "objects deleted. Submit the loop again."
        )
    assert blob is not None  # a plan is written after the manifest
    key = settings.key
    manifest = codec.unseal_model(JobManifest, blob, key=key, context=manifest_context(job_id))
    plan = json.loads(codec.unseal(plan_blob, key=key, context=plan_context(job_id)))
    if plan.get("client") is None:
        raise InvalidArgument(
            f"Job.attach: job {job_id!r} cannot be attached: its combine function "
            "could not be pickled when it was submitted (it is still running; its "
            "results stay under results/ until cleaned up)"
        )
    spec: LoopSpec = codec.loads(base64.b64decode(plan["client"]))
    carried = plan.get("sealed_tasks")
    if isinstance(carried, dict):  # trigger="call": the plan carries the tasks
        ids = sorted(carried, key=int)
        task_keys = [_keys.task_key(prefix, job_id, int(t), invoke=True) for t in ids]
        blobs: list[bytes | None] = [base64.b64decode(carried[t]) for t in ids]
    elif plan.get("dispatch") == "remote":  # every task is in the dispatch plan
        dispatched = await s3.get(_keys.dispatch_plan_key(prefix, job_id))
        if dispatched is None:
            raise InvalidArgument(
                f"Job.attach: job {job_id!r} has lost its dispatch plan; it was cancelled "
                "or partly cleaned up"
            )
        tasks = codec.unseal_model(
            DispatchPlan, dispatched, key=key, context=dispatch_context(job_id)
        )
        task_keys = [_keys.task_key(prefix, job_id, t) for t in tasks.task_ids]
        blobs = list(tasks.tasks)
    else:
        task_keys = [k async for k in s3.list_keys(_keys.queue_dir(prefix, job_id))]
        blobs = await gather_limited(16, [s3.get(k) for k in task_keys])
    items: list[PlannedTask | InnerDone] = []
    for task_key, tblob in zip(task_keys, blobs, strict=True):
        parsed = _keys.parse_task_key(prefix, task_key)
        if parsed is None or tblob is None or is_split(parsed[1]):
            continue  # (a timed-out chunk's halves: the client that attaches splits it again)
        task = codec.unseal_model(TaskSpec, tblob, key=key, context=task_context(job_id, parsed[1]))
        items.append(
            PlannedTask(
                task.task_id,
                task.first,
                codec.loads(task.args),
                manifest.variables,
                None if task.paths is None else list(task.paths),
                None if task.slots is None else list(task.slots),
            )
        )
    if len(items) != plan["tasks"]:
        raise InvalidArgument(
            f"Job.attach: job {job_id!r} has {len(items)} of its {plan['tasks']} task objects "
            "left; it was cancelled or partly cleaned up"
        )
    items.extend(InnerDone(tuple(p), tuple(q), c) for p, q, c in plan["markers"])
    return AttachedJob(job_id=job_id, spec=spec, plan=items, seed=manifest.seed)


async def _discard_partial(s3: S3, prefix: str, job_id: str) -> None:
    """A partial plan cannot be finished: stop its queued tasks and clean up."""
    await s3.put(_keys.cancel_key(prefix, job_id), b"")
    for root in (_keys.queue_dir(prefix, job_id), _keys.results_dir(prefix, job_id)):
        await s3.delete_prefix(root)
    await s3.delete_keys(
        [
            k
            async for k in s3.list_keys(_keys.job_dir(prefix, job_id))
            if k != _keys.cancel_key(prefix, job_id)
        ]
    )
