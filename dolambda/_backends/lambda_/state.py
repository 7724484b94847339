"""One job's run on Lambda: the state its dispatch and its gather share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dolambda._aws.s3 import S3
from dolambda._backends.base import JobContext, TaskResult
from dolambda._backends.lambda_.settings import LambdaSettings
from dolambda._backends.sealing import SealedJob
from dolambda._core.tasks import PlannedTask

if TYPE_CHECKING:
    from dolambda._backends.lambda_.backups import Backups
    from dolambda._backends.lambda_.split import Halves
    from dolambda._code.distributions import FunctionPackage

# a job whose sealed manifest + body are at most this big travels inside every task: a
# worker new to the job then makes no request for them (2 GETs per worker per job, i.e.
# 2,000 GETs for a job spread over 1,000 cold workers), and the tasks need not wait for
# the job objects to be written. Typical bodies pickle to 0.1-1 KB.
JOB_INLINE_LIMIT = 4 * 1024


@dataclass
class Pending:
    """A task sent and not yet answered."""

    planned: PlannedTask
    attempt: int
    dispatched_at: float
    last_failure: str = ""  # what the runtime said about the previous attempt
    #: copies of the task out (a straggler's backup makes two; a retry starts again at one)
    copies: int = 1
    #: when its backup was sent (a task gets at most one), None: none
    backup_at: float | None = None
    #: when it could start running (the function runs at most ``max_concurrency`` at once)
    running_since: float | None = None
    #: the memory tier it runs on (an index in ``settings.ladder``), and how many times it
    #: moved up a tier after running out of memory (those runs are not retries)
    tier: int = 0
    escalations: int = 0
    #: times the client sent it because a remote dispatcher could not (not retries)
    client_sends: int = 0

    @property
    def retries_used(self) -> int:
        """Attempts past the first that were retries (not moves to a larger tier, nor the
        client's sends of a task a remote dispatcher could not queue)."""
        return self.attempt - self.escalations - self.client_sends

    @property
    def last_sent(self) -> float:
        """When the newest copy of the task went out (its deadline runs from then)."""
        return (
            self.dispatched_at
            if self.backup_at is None
            else max(self.dispatched_at, self.backup_at)
        )


class RunState:
    """One job's dispatch and gather over one pooled client."""

    def __init__(
        self,
        settings: LambdaSettings,
        s3: S3,
        job: JobContext,
        sealed: SealedJob,
        pool: int,
        backups: Backups | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.job = job
        self.sealed = sealed
        self.prefix = settings.prefix
        self.pending: dict[int, Pending] = {}
        self.task_ids: list[int] = []  # every task of the job, for the cleanup
        self.seen: set[int] = set()  # results listed, being fetched
        #: every task is sent (the gather's tail starts here); ``dispatch_done``: and the
        #: job's objects and plan are written (the gather ends only after that)
        self.tasks_out = False
        self.dispatch_done = False
        self.last_progress = time.monotonic()
        self.uploads = asyncio.Semaphore(pool)
        self.downloads = asyncio.Semaphore(pool)
        self.out: asyncio.Queue[TaskResult | BaseException | None] = asyncio.Queue()
        self.wake = asyncio.Event()  # dispatch finished: the gather should look now
        self.sent_any = asyncio.Event()  # no result can exist before a task was sent
        self.first_send = 0.0  # seconds the first task's PUT (or Invoke) took
        self.deadline = settings.task_timeout + settings.grace
        self.backups = backups  # straggler backups (None: off)
        self.splits: dict[int, Halves] = {}  # timed-out chunks waiting for their halves
        #: the memory tier tasks start on (the loop's memory=, or what an earlier run of
        #: the same body needed), and the highest a task then finished on
        self.start_tier = settings.start_tier
        self.top_tier_done = -1
        #: task ids sent to a tier's alias with an Invoke (their key is the invoke kind's)
        self.invoked: set[int] = set()
        # an attached job's body is only in S3 (its tasks and retries refer to it there)
        # trigger="call": the synchronous calls out (at most the function's concurrency:
        # LambdaBackend.run_tasks sets it from what it learned), each answering its task
        self.call_slots = asyncio.Semaphore(settings.max_concurrency or 1000)
        self.calls: set[asyncio.Task[None]] = set()
        #: trigger="call": each task sealed (without the job), for the plan (Job.attach)
        self.task_blobs: dict[int, bytes] = {}
        #: the job was dispatched from inside AWS (dispatch.send_tasks)
        self.remote = False
        #: the function's package record (None: no record), read when a job would be
        #: dispatched remotely: only a function whose record lists "remote-dispatch" is
        self.function_record: Callable[[], Awaitable[FunctionPackage | None]] | None = None
        self.inline_job = not job.resumed and (
            len(sealed.sealed_manifest) + len(sealed.sealed_body) <= JOB_INLINE_LIMIT
        )
