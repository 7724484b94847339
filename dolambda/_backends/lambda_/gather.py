"""Gather: LIST the job's results prefix, GET new results, notice lost work.

Every function takes the job's :class:`~dolambda._backends.lambda_.state.RunState`;
results go to ``run.out`` as :class:`~dolambda._backends.base.TaskResult`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dolambda._backends.base import TaskResult
from dolambda._backends.lambda_ import backups, dispatch, split
from dolambda._backends.lambda_.state import Pending, RunState
from dolambda._backends.sealing import decode_outcome
from dolambda._errors import SignatureError
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import outcome_context
from dolambda._wire.models import JOB_FAILURES, TaskFailure, TaskOutcome

log = logging.getLogger("dolambda")

# LIST interval: fast on the tail, slowing to POLL_MAX after a minute without progress
POLL_MIN, POLL_FAST_MAX, POLL_MAX = 0.01, 0.05, 1.0
# while tasks are still being dispatched, wait for about this many results per LIST
RESULTS_PER_LIST = 100
# once every task is out: with this few left (or this little time to go), poll fast
TAIL_TASKS, TAIL_SECONDS = 4, 0.1
POLL_TAIL = 0.02  # while waiting on the tail, LIST at least this often (the first minute)
# once every task is out and at most this many results are still unseen, the gather GETs
# their result keys instead of LISTing: the GET that finds a result is its fetch, so a
# result is seen one round trip sooner (LIST then GET is two), with no more requests than
# a LIST per poll, and a GET is priced at a twelfth of a LIST (S3 pricing: GET $0.0004,
# LIST $0.005 per 1,000 requests, https://aws.amazon.com/s3/pricing/). A GET of a key that
# is missing, then written, then read again sees the object: S3 reads are strongly
# consistent after writes, 404s included
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/Welcome.html#ConsistencyModel).
# The client gets a 404 for a missing key (not a 403) because it may list the bucket.
GET_POLL_MAX = 1
# failures the worker reports for the Lambda runtime (its watchdog): worth a retry
RUNTIME_FAILURES = ("timeout", "memory", "crashed")


async def gather_results(run: RunState) -> None:
    """Poll until every task of the job has its result (or was given up as lost)."""
    if not run.job.resumed:
        await run.sent_any.wait()
        # a result needs at least two more round trips (the worker's GET of the task,
        # or the Invoke, then its PUT), each about as long as the first task's send:
        # a LIST before then finds nothing
        await asyncio.sleep(min(2 * run.first_send, POLL_FAST_MAX))
    if run.settings.trigger == "call" and not run.job.resumed:
        await _wait_for_calls(run)
        return
    if run.settings.trigger == "call" and run.job.resumed:
        from dolambda._backends.lambda_ import call  # (it imports this module)

        await _poll_once(run)  # what finished while no client was there
        await call.resume(run)  # the rest is called again
    interval = POLL_MIN
    started = time.monotonic()
    received = 0
    while True:
        found = await _poll_once(run)  # (nothing pending: no request)
        if run.dispatch_done and not run.pending:
            return  # the last result is in: no wait for another poll round
        if found:
            received += found
            rate = received / max(time.monotonic() - started, 1e-3)
            interval = _next_interval(run, rate)
        else:
            await _requeue_lost(run)
            idle = time.monotonic() - run.last_progress
            # see the last ones soon (sooner still while GETs poll: they cost a twelfth)
            floor = POLL_FAST_MAX
            if _on_tail(run):
                floor = POLL_MIN if _get_polling(run) else POLL_TAIL
            interval = min(floor + idle / 60 * POLL_MAX, POLL_MAX, interval * 1.5)
        await backups.launch_due(run)
        run.wake.clear()
        await sleep_unless_woken(run.wake, interval)


async def _wait_for_calls(run: RunState) -> None:
    """trigger="call": the calls bring the results (no LIST); each call ends with a
    result or a failure within the task's deadline (its client's read timeout), so this
    only waits for the last one."""
    while True:
        run.wake.clear()
        if run.dispatch_done and not run.pending:
            return
        await sleep_unless_woken(run.wake, POLL_MAX)


async def fetch(run: RunState, task_id: int, key: str) -> bool:
    """GET one result (False: it is not there); a runtime failure with retries left sends
    the task again."""
    async with run.downloads:
        blob = await run.s3.get(key)
    if blob is None:
        run.seen.discard(task_id)
        return False
    await accept(run, task_id, key, blob)
    return True


async def accept(run: RunState, task_id: int, key: str, blob: bytes) -> None:
    """A task's sealed result ``blob`` (from ``key``, or from a call's response): verified,
    then retried, split or delivered as it says."""
    entry = run.pending.get(task_id)
    if entry is None:
        run.seen.discard(task_id)
        return
    try:
        outcome = codec.unseal_model(
            TaskOutcome,
            blob,
            key=run.sealed.key,
            context=outcome_context(run.job.job_id, task_id),
        )
    except SignatureError as exc:
        raise SignatureError(f"result s3://{run.settings.bucket}/{key}: {exc}") from None
    failure = outcome.failure
    if outcome.attempt < entry.attempt and (failure is None or failure.kind not in JOB_FAILURES):
        # a result of an attempt the client already gave up on (it ran late, or a
        # duplicate event ran it again): not this attempt's. Clear it, so the current
        # attempt's result can be written; a job failure holds for every attempt.
        await run.s3.delete_keys([key])
        run.seen.discard(task_id)
        return
    run.last_progress = time.monotonic()
    if (
        failure is not None
        and failure.kind in RUNTIME_FAILURES
        and await backups.drop_failed_copy(run, task_id, key, entry, failure)
    ):
        return  # a backup or its original failed while the other is still out
    again = None if failure is None else _run_again(run, task_id, entry, failure.kind)
    if again is not None and failure is not None:
        # the task runs again (split, on a larger tier, retried, or sent by the client):
        # an invocation that ran was billed all the same, so it counts in the job's stats
        if outcome.stats is not None and again != "client":
            run.job.stats.tasks.append(outcome.stats)
        if again == "split":
            # its halves go out instead (an out-of-memory chunk is split before it moves
            # up a tier: one iteration's need should not put the others on a larger tier)
            await split.split_task(run, task_id, entry)
            return
        # clear the error result, so the next attempt's result can be written
        await run.s3.delete_keys([key])
        run.seen.discard(task_id)
        entry.last_failure = failure.message
        if again == "tier":  # out of memory: the next tier up (an Invoke of its alias)
            entry.tier += 1
            entry.escalations += 1
        if again == "client":  # a remote dispatcher could not queue it: not a retry
            entry.client_sends += 1
            _undispatched(run, failure.message)
        await dispatch.resend(run, task_id, entry)
        return
    del run.pending[task_id]
    run.last_progress = time.monotonic()
    if run.backups is not None:
        run.backups.finished(run, entry, outcome, run.last_progress)
    if failure is None and entry.escalations:
        run.top_tier_done = max(run.top_tier_done, entry.tier)
    if failure is not None and failure.kind == "memory":
        outcome = outcome.model_copy(
            update={
                "failure": failure.model_copy(
                    update={"message": _memory_message(run, entry, failure.message)}
                )
            }
        )
    # (moves up a memory tier are not retries: they are counted by tier in the stats)
    await _deliver(run, decode_outcome(outcome, attempts=entry.retries_used + 1))


def _undispatched(run: RunState, message: str) -> None:
    """A remote dispatcher reported a task it could not queue (the client sends it now,
    not at the lost-task deadline): counted, and said once per job."""
    if not run.job.stats.undispatched:
        log.warning(
            "dolambda: job %s: %s. The client sends every such task itself",
            run.job.job_id,
            message,
        )
    run.job.stats.undispatched += 1


def _run_again(run: RunState, task_id: int, entry: Pending, kind: str) -> str | None:
    """How a task whose runtime failed (``kind``) runs again: ``"split"`` (a timed-out or
    out-of-memory chunk), ``"tier"`` (out of memory, a larger tier left), ``"retry"``
    (retries left), ``"client"`` (a remote dispatcher could not queue it: the client
    sends it, whatever the retries left), or None: its failure stands."""
    if run.job.cancelled.is_set():
        return None
    if kind == "undispatched":
        return "client"
    if kind not in RUNTIME_FAILURES:
        return None
    if kind in ("timeout", "memory") and split.can_split(task_id, entry):
        return "split"
    if kind == "memory" and entry.tier + 1 < len(run.settings.ladder):
        return "tier"
    return "retry" if entry.retries_used < run.settings.retries else None


def _memory_message(run: RunState, entry: Pending, message: str) -> str:
    """An out-of-memory failure that stands: the tiers it ran out of memory on, and what
    to do."""
    ladder = run.settings.ladder
    tried = [str(mb) for mb in ladder[entry.tier - entry.escalations : entry.tier + 1]]
    sizes = tried[0] if len(tried) == 1 else ", ".join(tried[:-1]) + " and " + tried[-1]
    if entry.tier + 1 >= len(ladder) and len(ladder) > 1:
        hint = "it needs more than the largest memory tier"
    else:
        hint = "deploy a larger memory tier (dolambda deploy --memory-tiers ...)"
    return f"ran out of memory on {sizes} MB ({hint}): {message}"


async def _deliver(run: RunState, result: TaskResult) -> None:
    """A task's final result to the engine (a split task's once its halves are in)."""
    merged = split.absorb(run, result)
    if merged is not None:
        await run.out.put(merged)


deliver = _deliver  # (for the call trigger's failures)


async def _poll_once(run: RunState) -> int:
    if not run.pending:
        return 0
    job_id = run.job.job_id
    if _get_polling(run):  # the last few: GET their keys (no LIST)
        unseen = [t for t in run.pending if t not in run.seen]
        run.seen.update(unseen)
        found = await asyncio.gather(
            *(fetch(run, t, _keys.result_key(run.prefix, job_id, t)) for t in unseen)
        )
        return sum(found)
    first = min(run.pending)
    start_after = _keys.result_key(run.prefix, job_id, first - 1) if first > 0 else ""
    new: list[tuple[int, str]] = []
    async for key in run.s3.list_keys(_keys.results_dir(run.prefix, job_id), start_after):
        task_id = _keys.parse_result_key(run.prefix, job_id, key)
        if task_id is None or task_id in run.seen or task_id not in run.pending:
            continue
        run.seen.add(task_id)
        new.append((task_id, key))
    if new:
        await asyncio.gather(*(fetch(run, t, k) for t, k in new))
    return len(new)


async def _requeue_lost(run: RunState) -> None:
    """A task with no result past its deadline is sent again, or, out of retries,
    reported as lost (never a hang)."""
    now = time.monotonic()
    for task_id, entry in list(run.pending.items()):
        if task_id in run.seen:
            continue
        since = now - max(entry.last_sent, run.last_progress)
        if since < run.deadline:
            continue
        if entry.retries_used >= run.settings.retries:
            del run.pending[task_id]
            message = (
                f"no result for task {task_id} after {entry.attempt + 1} attempt(s), each "
                f"given {run.deadline:.0f}s: it timed out (function timeout "
                f"{run.settings.task_timeout:.0f}s), ran out of memory, crashed, or was never "
                "started (event lost)"
            )
            if entry.last_failure:
                message += f"; an earlier attempt failed: {entry.last_failure}"
            await _deliver(
                run,
                TaskResult(
                    task_id,
                    failure=TaskFailure(kind="lost", message=message),
                    attempts=entry.attempt + 1,
                ),
            )
            continue
        await dispatch.resend(run, task_id, entry)


async def sleep_unless_woken(wake: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds`` or until ``wake`` is set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives
    as the event is set (it returns the event's result instead), and a job cancelled
    just as its dispatch finished then kept polling instead of stopping.
    """
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((woken,), timeout=seconds)
    finally:
        woken.cancel()


def _get_polling(run: RunState) -> bool:
    """Every task is out and at most :data:`GET_POLL_MAX` results are still unseen."""
    if not run.tasks_out:
        return False
    unseen = sum(1 for t in run.pending if t not in run.seen)
    return 0 < unseen <= GET_POLL_MAX


def _on_tail(run: RunState) -> bool:
    """Every task is out and only the last few are still running."""
    return run.tasks_out and len(run.pending) <= TAIL_TASKS


def _next_interval(run: RunState, rate: float) -> float:
    """Seconds to the next LIST while results stream in at ``rate`` per second.

    A LIST returns up to 1,000 keys, so each one should collect many results;
    but the last result must be seen fast (fan-in latency), and progress should
    show at least every POLL_MAX.
    """
    if not run.tasks_out:
        return min(max(RESULTS_PER_LIST / rate, POLL_FAST_MAX), POLL_MAX)
    remaining = len(run.pending) / rate  # seconds until the last result, at this rate
    if _on_tail(run) or remaining <= TAIL_SECONDS:
        return POLL_MIN
    # each LIST collects about a quarter of what is left: a few LISTs per job
    return min(max(remaining / 4, POLL_FAST_MAX), POLL_MAX)
