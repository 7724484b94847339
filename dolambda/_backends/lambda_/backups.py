"""Straggler backups: a task out much longer than its finished peers is sent once more.

Cubed's rule (``cubed/runtime/backup.py``, cubed#14: "it's common to see a small
number of tasks take a lot longer than the others"): once at least ``min_tasks``
tasks exist and more than ``min_done`` of them are done, a task that has been out
longer than ``slow_factor`` times the median finished duration gets ONE backup, a
second copy of the same task (same iterations, seeds and positions). Both copies
write the same result key with ``If-None-Match: *``: the first result wins and the
other's PUT is refused, so a backup can never change a result. A runtime failure
(timeout, out of memory, crash) of one copy while its twin is still out is not an
error: that copy's error result is cleared and the twin goes on.

Everything is measured from what the client knows. A task is "out" from the moment
it could run: its dispatch time, or, when more tasks are out than the function may
run at once (``max_concurrency``, else Lambda's default account limit of 1,000),
the moment it moved into the first ``max_concurrency`` outstanding tasks (Lambda
queues the rest: a throttled task is waiting, not straggling). A finished task's
duration runs from then to the moment its result was read (or, for a task that both
started and finished between two LISTs, is the time its worker reported).

A backup carries the attempt number of the copy it backs up plus
:data:`BACKUP_ATTEMPT`, so the result says which copy won, and a backup is never
mistaken for an older attempt (whose late records the gather ignores).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field

from dolambda._backends.lambda_ import dispatch
from dolambda._backends.lambda_.state import Pending, RunState
from dolambda._errors import InvalidArgument, InvalidArgumentType
from dolambda._wire.models import TaskFailure, TaskOutcome

#: a backup's attempt number is its twin's plus this (attempts are otherwise 0..retries)
BACKUP_ATTEMPT = 1 << 16
#: Lambda's default concurrency quota per account and region: what the client assumes
#: may run at once when ``max_concurrency`` is not set
DEFAULT_CONCURRENCY = 1000


@dataclass(frozen=True)
class BackupPolicy:
    """When a straggler gets its backup (Cubed's defaults).

    >>> BackupPolicy().threshold([1.0, 1.5, 2.0, 5.0], total=10, done=6)
    6.0
    >>> BackupPolicy().threshold([1.0] * 5, total=12, done=5) is None  # not half done
    True
    """

    #: no backup before the job has this many tasks
    min_tasks: int = 10
    #: no backup before more than this fraction of the tasks is done
    min_done: float = 0.5
    #: a task out longer than this many times the median finished duration is backed up
    slow_factor: float = 3.0

    def __post_init__(self) -> None:
        for name in ("min_tasks", "min_done", "slow_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgumentType(
                    f"LambdaBackend: backup_{name} must be a number, got {value!r}"
                )
        if not isinstance(self.min_tasks, int) or self.min_tasks < 1:
            raise InvalidArgument(
                f"LambdaBackend: backup_min_tasks must be an integer >= 1, got {self.min_tasks!r}"
            )
        if not 0.0 <= self.min_done < 1.0:
            raise InvalidArgument(
                "LambdaBackend: backup_min_done must be a fraction in [0, 1), "
                f"got {self.min_done!r}"
            )
        if not self.slow_factor >= 1.0:
            raise InvalidArgument(
                "LambdaBackend: backup_slow_factor must be a number >= 1 (times the median "
                f"finished duration), got {self.slow_factor!r}"
            )

    def threshold(self, durations: list[float], total: int, done: int) -> float | None:
        """Seconds out past which a task gets a backup, or None while none may.

        ``total`` tasks, ``done`` of them finished, ``durations`` (sorted) those of the
        finished ones the client could time. As in Cubed, the reference is the
        ``ceil(total x min_done)``-th shortest finished duration (the median of the whole
        job once more than half is done), taken at the same rank among the timed ones.
        """
        n = math.ceil(total * self.min_done) - 1
        if total < self.min_tasks or done <= n or not durations:
            return None
        rank = math.ceil((max(n, 0) + 1) * len(durations) / done) - 1
        return durations[min(max(rank, 0), len(durations) - 1)] * self.slow_factor


def backup_policy(
    backups: object, min_tasks: object, min_done: object, slow_factor: object
) -> BackupPolicy | None:
    """The policy a LambdaBackend's ``backups=`` arguments describe (None: off)."""
    if not isinstance(backups, bool):
        raise InvalidArgumentType(f"LambdaBackend: backups must be True or False, got {backups!r}")
    policy = BackupPolicy(min_tasks, min_done, slow_factor)  # type: ignore[arg-type]  # checked there
    return policy if backups else None


@dataclass
class Backups:
    """One job's backups: the finished durations, and what the backups did."""

    policy: BackupPolicy
    #: tasks the function may run at once (the rest wait in Lambda's queue)
    concurrency: int
    durations: list[float] = field(default_factory=list)  # sorted
    done: int = 0  # tasks finished (timed or not)
    #: seconds each finished task's worker reported (for the cost of the losing copies)
    worker_seconds: list[float] = field(default_factory=list)
    sent: int = 0
    won: int = 0
    #: copies that failed (timeout, memory, crash) while their twin was still out
    failed_copies: int = 0

    def mark_running(self, run: RunState, now: float) -> None:
        """Start the clock of the tasks that moved into the first ``concurrency`` out."""
        for entry in itertools.islice(run.pending.values(), self.concurrency):
            if entry.running_since is None:
                entry.running_since = max(entry.dispatched_at, now)

    def finished(self, run: RunState, entry: Pending, outcome: TaskOutcome, now: float) -> None:
        """A task's result was read: its duration counts, and a backup may have won.

        A task that finished before the client saw it start (it moved into the running
        ones and finished between two LISTs) cannot be timed by the client: the time
        its worker reported stands in (without the invoke and result latencies).
        """
        self.done += 1
        if entry.running_since is not None:
            bisect.insort(self.durations, max(0.0, now - entry.running_since))
        elif outcome.stats.duration > 0:
            bisect.insort(self.durations, outcome.stats.duration)
        self.worker_seconds.append(outcome.stats.duration)
        if entry.backup_at is not None and outcome.attempt >= BACKUP_ATTEMPT:
            self.won += 1
            run.job.stats.backups_won = self.won

    def loser_seconds(self) -> float:
        """Estimated seconds the losing copies ran: a typical task's each (the client
        never sees a losing copy: its result PUT was refused)."""
        if not self.sent:
            return 0.0
        typical = statistics.median(self.worker_seconds) if self.worker_seconds else 0.0
        return self.sent * typical


async def launch_due(run: RunState) -> int:
    """Send a backup of every straggler the policy names now; how many were sent."""
    backups = run.backups
    if backups is None or run.job.cancelled.is_set() or not run.pending:
        return 0
    now = time.monotonic()
    backups.mark_running(run, now)
    limit = backups.policy.threshold(backups.durations, len(run.task_ids), backups.done)
    if limit is None:
        return 0
    due = [
        (task_id, entry)
        for task_id, entry in itertools.islice(run.pending.items(), backups.concurrency)
        if entry.backup_at is None
        and entry.running_since is not None
        and task_id not in run.seen
        and now - entry.running_since > limit
    ]
    for _, entry in due:  # before the sends: a slow send must not send it twice
        entry.backup_at = now
    await asyncio.gather(*(send_backup(run, task_id, entry) for task_id, entry in due))
    return len(due)


async def send_backup(run: RunState, task_id: int, entry: Pending) -> None:
    """The same task once more, to the same result key: the first result wins."""
    assert run.backups is not None
    entry.copies += 1
    entry.backup_at = time.monotonic()
    run.backups.sent += 1
    run.job.stats.backups = run.backups.sent
    blob = run.sealed.sealed_task(
        entry.planned, attempt=entry.attempt + BACKUP_ATTEMPT, with_job=run.inline_job
    )
    async with run.uploads:
        await dispatch.send(run, task_id, blob)


async def drop_failed_copy(
    run: RunState, task_id: int, key: str, entry: Pending, failure: TaskFailure
) -> bool:
    """A copy failed at runtime while its twin is still out: clear its error result (so
    the twin's can be written) and wait for the twin. False when no twin is out."""
    if entry.copies < 2 or run.backups is None:
        return False
    entry.copies -= 1
    entry.last_failure = failure.message  # named if the twin is lost too
    run.backups.failed_copies += 1
    await run.s3.delete_keys([key])
    run.seen.discard(task_id)
    return True


def record_stats(run: RunState) -> None:
    """What the job's backups did, into its stats (for the summary and the cost)."""
    backups = run.backups
    if backups is None:
        return
    stats = run.job.stats
    stats.backups = backups.sent
    stats.backups_won = backups.won
    stats.backup_seconds = backups.loser_seconds()
