"""``trigger="call"``: each task is a synchronous Invoke whose response carries its result.

The payload is the invoke trigger's (:func:`~dolambda._backends.lambda_.dispatch.invoke_payload`)
with ``"respond": true``. The worker still writes the result object (so ``Job.attach``
and the cleanup work as for the other triggers) and returns it, sealed, in the response
when it fits Lambda's 6 MB response limit, else only its key
(:func:`dolambda._aws.worker.response_entry`); the client then GETs it. The result goes
through the gather's checks (:func:`~dolambda._backends.lambda_.gather.accept`) as if
it had been fetched, and the gather makes no LIST.

Lambda throttles a synchronous invoke beyond the function's concurrency with a 429
instead of queueing it, so at most ``run.call_slots`` calls are out at once (the
function's concurrency, as :attr:`LambdaBackend.workers` knows it) and a 429 is waited
out by the invoker. A call that gets no answer (its client's read timeout is the task's
deadline: the function timeout and the grace period), or a function error, is sent again
up to ``retries`` times, then reported as a ``"lost"`` failure for its iterations.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from dolambda._aws.invoke import CallFailed, tier_alias
from dolambda._backends.base import TaskResult
from dolambda._backends.lambda_ import dispatch, gather
from dolambda._backends.lambda_.state import RunState
from dolambda._wire import keys as _keys
from dolambda._wire.models import TaskFailure


async def start(
    run: RunState, task_id: int, payload: dict[str, Any], qualifier: str | None = None
) -> None:
    """Call the function (``qualifier``: the alias of the task's memory tier) for the task
    in the background, once a call slot is free.

    The dispatch does not wait for the slot: it finishes (and writes the plan, so the
    job can be attached) while the calls are still queued here."""
    entry = run.pending.get(task_id)
    if entry is None:  # (answered meanwhile)
        return
    run.seen.add(task_id)  # answered by the call: never listed, never requeued
    task = asyncio.create_task(_call(run, task_id, entry.attempt, payload, qualifier))
    run.calls.add(task)
    task.add_done_callback(run.calls.discard)


async def resume(run: RunState) -> None:
    """An attached call-mode job: the tasks without a result (after the gather's first
    LIST) are called again, same attempt (a late result of the departed client's call
    counts); the LIST loop goes on for the rest."""
    for task_id, entry in list(run.pending.items()):
        if task_id in run.seen:
            continue
        blob = run.sealed.sealed_task(entry.planned, attempt=entry.attempt)
        key = _keys.task_key(run.prefix, run.job.job_id, task_id, invoke=True)
        payload = dispatch.invoke_payload(run.settings.bucket, key, blob)
        if "task" not in payload:
            await run.s3.put(key, blob)
        tier = entry.tier
        qualifier = None if tier == 0 else tier_alias(run.settings.ladder[tier])
        await start(run, task_id, {**payload, "respond": True}, qualifier)


async def _call(
    run: RunState, task_id: int, attempt: int, payload: dict[str, Any], qualifier: str | None
) -> None:
    try:
        await run.call_slots.acquire()  # (a cancel here leaves no slot taken)
        try:
            entry = run.pending.get(task_id)
            if entry is None or entry.attempt != attempt:
                return  # answered, or sent again, while it waited
            entry.dispatched_at = time.monotonic()  # its deadline runs from the call
            answer, error = await run.s3.invoker.call(payload, qualifier)
        except CallFailed as exc:
            answer, error = b"", f"the call got no answer ({exc})"
        finally:
            run.call_slots.release()
        run.seen.discard(task_id)
        if error is None:
            entries = _results(answer)
            for item in entries:
                key = item["key"]
                if "result" in item:
                    blob: bytes | None = base64.b64decode(item["result"])
                else:  # too large for the response: in S3
                    async with run.downloads:
                        blob = await run.s3.get(key)
                if blob is not None:
                    await gather.accept(run, task_id, key, blob)
                    return
            error = f"the function answered without a result: {answer[:500]!r}"
        else:
            error = f"the function failed ({error}): {_error_text(answer)}"
        await failed(run, task_id, attempt, error)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # to the job (fan_in re-raises it)
        run.out.put_nowait(exc)
    finally:
        run.wake.set()


def _results(answer: bytes) -> list[dict[str, str]]:
    """The ``results`` of a handler's response (empty when it has none)."""
    try:
        body = json.loads(answer)
    except ValueError:
        return []
    found = body.get("results") if isinstance(body, dict) else None
    if not isinstance(found, list):
        return []
    return [e for e in found if isinstance(e, dict) and isinstance(e.get("key"), str)]


def _error_text(answer: bytes) -> str:
    """A function error's ``errorType: errorMessage``."""
    try:
        body = json.loads(answer)
    except ValueError:
        return answer[:500].decode("utf-8", "replace")
    if isinstance(body, dict):
        return f"{body.get('errorType', 'Error')}: {body.get('errorMessage', '')}"[:2000]
    return str(body)[:500]


async def failed(run: RunState, task_id: int, attempt: int, message: str) -> None:
    """A call that brought no result: a result written before the worker died counts;
    else the task is sent again while retries are left, then reported lost."""
    entry = run.pending.get(task_id)
    if entry is None or entry.attempt != attempt:
        return  # answered, or sent again, meanwhile
    key = _keys.result_key(run.prefix, run.job.job_id, task_id)
    blob = await run.s3.get(key)
    if blob is not None:
        await gather.accept(run, task_id, key, blob)
        return
    if entry.attempt < run.settings.retries and not run.job.cancelled.is_set():
        entry.last_failure = message
        await dispatch.resend(run, task_id, entry)
        return
    del run.pending[task_id]
    run.last_progress = time.monotonic()
    text = (
        f"no result for task {task_id} after {entry.attempt + 1} attempt(s) "
        f"(trigger='call'): {message}"
    )
    if entry.last_failure and entry.last_failure != message:
        text += f"; an earlier attempt failed: {entry.last_failure}"
    await gather.deliver(
        run,
        TaskResult(
            task_id, failure=TaskFailure(kind="lost", message=text), attempts=entry.attempt + 1
        ),
    )


async def stop(run: RunState) -> None:
    """Cancel the calls still out (the job ended or was stopped)."""
    calls = list(run.calls)
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
