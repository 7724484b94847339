"""The Lambda backend: an S3 bucket is the job queue, AWS Lambda runs the tasks.

::

    client (this package)                       S3 bucket <prefix>/             Lambda (handler/)
    ─────────────────────                       ───────────────────             ─────────────────
    PUT code/<sha256>.zip: the user's modules
        (If-None-Match: *; shared by the jobs
        with the same files; skipped when the
        backend knows it is there)
    PUT jobs/<id>/manifest.json and
        bodies/<sha256>.pkl (once per job; first,
        unless the job is small enough to ride
        along in every task: then after the
        tasks; a large body is sent only when
        the bucket lacks it)
    dispatch: PUT queue/<id>/<task>.task ──────► ObjectCreated ───────────────► lambda_handler
      (bounded concurrency, streamed;            (trigger="s3"), or             GET task (+manifest,
       trigger="invoke": async Invoke,           async Invoke with the          body once per warm
       small tasks inlined in the payload)       task key (trigger="invoke")    container, unless
                                                                                the task carries
                                                                                them), run it
    remote dispatch (a large job): PUT jobs/<id>/dispatch (every task, sealed), one
      Invoke {"dispatch": ...} ────────────────────────────────────────────────► dispatchers
                                                 ◄── PUT queue/... or Invoke ── (a tree of them)
    gather: LIST results/<id>/ (StartAfter  ◄── results/<id>/<task>.out ◄──── PUT If-None-Match: *
      the first missing task), GET new ones
      concurrently, adaptive poll interval
    lost work: no result past the deadline ──► re-PUT the task (attempt+1), up to `retries`
    straggler: out > 3x the median finished ──► re-PUT it once (a backup): first result wins
    timed-out chunk of n > 1 iterations ──► PUT its two halves as new tasks (recursively)
    cancel / stop: PUT jobs/<id>/cancel, DELETE the queued tasks (workers then skip them)
    cleanup: DELETE the job's objects unless keep=True

The walk of one job, module by module:

- ``LambdaBackend.run_tasks()`` called (by the engine, :mod:`dolambda._core.run`):
  it finds the user's own modules the job needs and zips them
  (:mod:`~dolambda._backends.lambda_.code`: what cannot travel fails here, before any
  upload), opens a pooled S3 client (warm across jobs on the same event loop), checks
  once that the bucket notifies the function, uploads the code archive unless it is
  there, seals the job with the signing key (the manifest names the archive)
  and starts the dispatch and the gather side by side over one
  :class:`~dolambda._backends.lambda_.state.RunState`.
- Dispatch (:mod:`~dolambda._backends.lambda_.dispatch`): pulls planned tasks
  from the engine as upload slots free up, seals each and PUTs it under
  ``queue/`` (or Invokes the function with it); each becomes a pending entry with
  its dispatch time. When the last task is out it writes ``plan.json``: from then
  on ``Job.attach`` can resume the job. A large job (``dispatch="auto"``, 1,000 tasks
  or more) is dispatched remotely instead: every task sealed in one
  ``jobs/<id>/dispatch`` object, ``plan.json``, then one Invoke of the function with a
  dispatch event; the function's dispatchers (:mod:`dolambda._aws.dispatcher`) queue
  the tasks from inside AWS, and the client's lost-task timer covers any they miss.
- Gather (:mod:`~dolambda._backends.lambda_.gather`): LISTs ``results/`` from the
  first pending task on, GETs the new results concurrently, verifies and decodes
  them and hands each to the engine; the LIST interval follows the rate at which
  results arrive, and is short on the tail.
- Lost work: a pending task with no result past the function timeout plus a
  grace period, or whose worker reported a timeout, memory or crash failure, is
  sent again (a new attempt) up to ``retries`` times, then reported as a
  ``"lost"`` failure naming its iterations: never a hang.
- Stragglers (:mod:`~dolambda._backends.lambda_.backups`): once more than half of
  the tasks are done, a task out longer than three times the median finished
  duration is sent once more; both copies write the same result key once
  (``If-None-Match: *``), so the first result wins and the result is the same.
- A timed-out chunk (:mod:`~dolambda._backends.lambda_.split`): its halves are sent
  as tasks of their own, recursively, down to single iterations; their results are
  merged back into one for the engine, so only the iterations that time out fail.
- The end: a finished job's objects are deleted (unless ``keep=True``); a
  stopped one first PUTs ``jobs/<id>/cancel`` so workers skip its queued tasks.
  ``Job.attach`` (:mod:`~dolambda._backends.lambda_.attach`) rebuilds a job from
  ``manifest.json``, ``plan.json`` and the task objects: S3 is the only source of
  truth. Settings are merged in :mod:`~dolambda._backends.lambda_.settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from dolambda._aws.concurrency import (
    DEFAULT_CONCURRENCY,
    Concurrency,
    read_function_concurrency,
)
from dolambda._aws.s3 import S3, RequestCounter, open_s3, resolve_region
from dolambda._backends.base import AttachedJob, Backend, JobContext, TaskResult
from dolambda._backends.fan_in import fan_in
from dolambda._backends.lambda_ import attach as _attach
from dolambda._backends.lambda_ import backups as _backups
from dolambda._backends.lambda_ import call as _call
from dolambda._backends.lambda_ import code as _code
from dolambda._backends.lambda_ import dispatch, gather
from dolambda._backends.lambda_.settings import LambdaSettings, resolve_settings
from dolambda._backends.lambda_.state import RunState
from dolambda._backends.sealing import SealedJob, warn_if_large
from dolambda._core.tasks import PlannedTask
from dolambda._errors import ConfigError, InvalidArgument
from dolambda._wire import keys as _keys

log = logging.getLogger("dolambda")

#: seconds a concurrency reading (the account's quota, the function's reservation) is
#: used before Lambda is asked again
CONCURRENCY_TTL = 300.0

# seconds of client work per task (its PUT and its result's LIST share and GET; measured
# ~1-2 ms against S3 with 64 connections, ~7 ms against moto): sizes measured chunks
TASK_COST = 0.005


class LambdaBackend(Backend):
    """Run iterations on AWS Lambda with an S3 bucket as the job queue.

    Settings not given come from the config file that ``dolambda deploy`` writes.
    Credentials come from the standard AWS chain (environment, profile, config
    files, instance role) unless ``aws_access_key_id``/``aws_secret_access_key`` are given.

    ``memory=`` (MB) runs every task on the smallest of the function's memory tiers
    that has it (deploy publishes the tiers; ``memory_mb`` and ``memory_tiers`` say what
    the function has, read from the client config when not given); a task that runs out
    of memory is run again on the next tier up, to the largest, before it is reported.

    Straggler backups are on (``backups=False`` turns them off): once at least
    ``backup_min_tasks`` tasks exist and more than ``backup_min_done`` of them are done,
    a task out longer than ``backup_slow_factor`` times the median finished duration is
    sent once more; the first of the two results wins (the same result either way).

    ``dispatch`` says who queues the tasks: ``"client"`` (this process PUTs or Invokes
    each), ``"remote"`` (it writes every task in one signed plan and makes one Invoke:
    the function queues them from inside AWS, in a tree of dispatchers for a large job)
    or ``"auto"`` (the default: remote from 1,000 tasks on, with trigger "s3" or
    "invoke"; trigger "call" is always dispatched by the client).

    >>> from dolambda import LambdaBackend, foreach, register
    >>> backend = LambdaBackend(bucket="my-queue", region="us-east-1", signing_key="00" * 32)
    >>> register(backend)  # then foreach(x=range(1000)).combine(sum).run(simulate)
    """

    name = "lambda"
    body_must_pickle = True
    prints_summary = True
    run_on_portal = True  # sync verbs run on the helper loop, where clients stay warm
    keeps_records = True
    runs_on_lambda = True

    def __init__(
        self,
        bucket: str | None = None,
        function_name: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        prefix: str | None = None,
        trigger: str = "s3",
        chunk_size: int | str = "auto",
        retries: int = 2,
        task_timeout: float | None = None,
        max_concurrency: int | None = None,
        keep: bool = False,
        signing_key: str | bytes | None = None,
        *,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        backups: bool = True,
        backup_slow_factor: float = 3.0,
        backup_min_tasks: int = 10,
        backup_min_done: float = 0.5,
        memory: int | None = None,
        memory_mb: int | None = None,
        memory_tiers: Any = None,
        dispatch: str = "auto",
    ) -> None:
        #: straggler backups (None: ``backups=False``); see the backups module
        self.backup_policy = _backups.backup_policy(
            backups, backup_min_tasks, backup_min_done, backup_slow_factor
        )
        self.settings: LambdaSettings = resolve_settings(
            bucket,
            function_name,
            region,
            profile,
            endpoint_url,
            prefix,
            trigger,
            chunk_size,
            retries,
            task_timeout,
            max_concurrency,
            keep,
            signing_key,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            memory=memory,
            memory_mb=memory_mb,
            memory_tiers=memory_tiers,
            dispatch=dispatch,
        )
        _ = self.settings.start_tier  # (memory= larger than every tier: said now)
        self.memory_mb = self.settings.memory_mb
        #: the memory tier (index in settings.ladder) that last worked for a body, by the
        #: body's digest: the next run of that body starts there
        self._learned_tier: dict[str, int] = {}
        self.architecture = self.settings.architecture
        self._checked_setup = False
        self._keep_warm_clients()
        # aioboto3 sessions for runs on other loops (async callers), one set per thread:
        # botocore sessions are not thread-safe, and a new one costs ~100 ms a job
        self._sessions = threading.local()
        self.counter = RequestCounter()  # cumulative client requests over this backend's life
        # code archives this backend put in (or found in) the bucket: digest -> when
        self._code_known: dict[str, float] = {}
        # what Lambda said about the function's concurrency, and when (monotonic)
        self._concurrency: Concurrency | None = None
        self._concurrency_at: float | None = None
        # the function's package record, as read (check_function_distributions)
        self._records: dict[str, tuple[float, Any]] = {}

    def with_memory(self, memory: int) -> LambdaBackend:
        """This backend, its tasks starting on the smallest memory tier with ``memory`` MB
        (its clients, sessions and what it learned are shared)."""
        if isinstance(memory, bool) or not isinstance(memory, int) or not 0 < memory <= 10240:
            raise InvalidArgument(
                f"memory must be a whole number of MB up to 10240 (Lambda's largest), "
                f"got {memory!r}"
            )
        twin = copy.copy(self)
        twin.settings = dataclasses.replace(self.settings, memory=memory)
        _ = twin.settings.start_tier  # (more than every tier: said now)
        return twin

    def __getstate__(self) -> dict[str, Any]:
        # warm clients and sessions belong to this process's loops and threads
        state = dict(self.__dict__)
        del state["_shared"], state["_sessions"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._keep_warm_clients()
        self._sessions = threading.local()

    def _keep_warm_clients(self) -> None:
        """The warm clients, per event loop and region; closed on their own loop when
        that loop shuts down, or when this backend is dropped while the loop runs on
        (the portal's): left to the garbage collector, aiohttp would find them unclosed."""
        self._shared: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()
        closer = weakref.finalize(self, _close_warm_clients, self._shared)
        closer.atexit = False  # at exit the loops close them (they shut down their generators)

    @classmethod
    def from_config(cls, **overrides: Any) -> LambdaBackend:
        """The backend ``dolambda deploy`` configured (explicit overrides win)."""
        return cls(**overrides)

    def __repr__(self) -> str:
        return (
            f"LambdaBackend(bucket={self.bucket!r}, function_name={self.function_name!r}, "
            f"region={self.region!r}, prefix={self.prefix!r}, trigger={self.trigger!r}"
            + (f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else "")
            + ")"
        )

    # ------------------------------------------------------------------ settings

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    @property
    def function_name(self) -> str:
        return self.settings.function_name

    @property
    def region(self) -> str | None:
        return self.settings.region

    @property
    def profile(self) -> str | None:
        return self.settings.profile

    @property
    def endpoint_url(self) -> str | None:
        return self.settings.endpoint_url

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    @property
    def trigger(self) -> str:
        return self.settings.trigger

    @property
    def dispatch(self) -> str:
        """Who queues the tasks: "auto", "client" or "remote"."""
        return self.settings.dispatch

    @property
    def chunk_size(self) -> int | str:
        return self.settings.chunk_size

    @property
    def retries(self) -> int:
        return self.settings.retries

    @property
    def task_timeout(self) -> float:
        return self.settings.task_timeout

    @property
    def max_concurrency(self) -> int | None:
        return self.settings.max_concurrency

    @property
    def keep(self) -> bool:
        return self.settings.keep

    @property
    def grace(self) -> float:
        """Seconds past the function timeout before a task without a result counts as lost."""
        return self.settings.grace

    @property
    def key(self) -> bytes:
        """The signing key shared with the function; ConfigError when none is configured."""
        return self.settings.key

    # ------------------------------------------------------------------ the contract

    @property
    def workers(self) -> int:
        """How many tasks run at once: ``max_concurrency`` when given, else what Lambda
        allows the function (its reserved concurrency, else the account's unreserved
        quota: new accounts get far less than the default 1,000), read before each job
        (:meth:`prepare`), else 1,000."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        available = None if self._concurrency is None else self._concurrency.available
        return available if available else DEFAULT_CONCURRENCY

    async def prepare(self) -> None:
        """Before a job sizes its chunks: unless ``max_concurrency`` was given, ask Lambda
        how many of the function's invocations it runs at once (at most every
        :data:`CONCURRENCY_TTL` seconds). A function whose reserved concurrency is 0 runs
        nothing: that is a ConfigError before anything is sent."""
        if self.max_concurrency is not None:
            return
        now = time.monotonic()
        if self._concurrency_at is None or now - self._concurrency_at >= CONCURRENCY_TTL:
            self._concurrency_at = now
            sessions = getattr(self._sessions, "by_key", None)
            try:
                self._concurrency = await read_function_concurrency(
                    function_name=self.function_name,
                    region=resolve_region(self.region, self.profile),
                    profile=self.profile,
                    endpoint_url=self.endpoint_url,
                    credentials=self.settings.credentials,
                    sessions=sessions,
                )
            except Exception as exc:  # (no permission, no network): the job itself will say
                log.debug("dolambda: cannot read %s's concurrency: %s", self.function_name, exc)
        if self._concurrency is not None and self._concurrency.reserved == 0:
            raise ConfigError(
                f"Lambda function {self.function_name!r} has a reserved concurrency of 0, so "
                "Lambda throttles every invocation and no task would run; remove the "
                f"reservation (aws lambda delete-function-concurrency --function-name "
                f"{self.function_name}) or set it above 0"
            )

    def chunk_size_for(self, total: int | None, per_iteration: float | None = None) -> int:
        """Iterations per task for ``chunk_size="auto"``.

        Without a measurement: at most ``min(4 x workers, 500)`` tasks. When an earlier
        run of the same body measured ``per_iteration`` seconds, the size that balances
        the client's per-task cost against the compute each task carries,
        ``sqrt(total x TASK_COST / per_iteration)``, yet never more than 4 tasks a
        worker (as without a measurement), nor so many iterations that a task's
        compute passes a quarter of the timeout (that bound wins over the other).

        >>> b = LambdaBackend(bucket="b", signing_key="00" * 32, max_concurrency=1000)
        >>> b.chunk_size_for(10_000), b.chunk_size_for(10_000, per_iteration=1e-6)
        (20, 7072)
        >>> b.chunk_size_for(200, per_iteration=0.05), b.chunk_size_for(50, per_iteration=60)
        (5, 1)
        """
        if self.chunk_size != "auto":
            return int(self.chunk_size)
        if total is None:
            return 16
        if per_iteration is None:
            return max(1, math.ceil(total / min(self.workers * 4, 500)))
        per_iteration = max(per_iteration, 1e-7)
        balanced = math.sqrt(total * TASK_COST / per_iteration)
        size = max(balanced, total / (self.workers * 4))
        size = min(size, self.task_timeout * 0.25 / per_iteration, total)
        return max(1, math.ceil(size))

    async def run_tasks(
        self, job: JobContext, tasks: AsyncIterator[PlannedTask]
    ) -> AsyncGenerator[TaskResult, None]:
        region = resolve_region(self.region, self.profile)
        archive = needs = None
        if not job.resumed:  # (an attached job's manifest names its code already)
            # what cannot travel is refused here, before anything is uploaded
            first, tasks = await _code.peek(tasks)
            needs, archive = await asyncio.to_thread(_code.job_code, job, first)
        if not job.resumed:
            warn_if_large(job, stacklevel=4)
        sealed = SealedJob(
            job,
            key=self.key,
            trigger=self.settings.trigger,
            task_timeout=self.task_timeout,
            code=() if archive is None else (archive.digest,),
        )
        counter = RequestCounter()
        pool = 64
        try:
            async with self._open(region, pool, counter) as s3:
                await self._check_setup(s3)
                if needs is not None:  # a distribution the function lacks: nothing is sent
                    await _code.check_function_distributions(
                        s3,
                        needs,
                        prefix=self.prefix,
                        function_name=self.function_name,
                        ident=_code.record_id(self.function_name, region, self.endpoint_url),
                        cache=self._records,
                        seeded=job.seed is not None,
                    )
                if archive is not None:  # before any task a worker could run
                    await _code.upload_archive(
                        s3, self.prefix, archive, key=self.key, known=self._code_known
                    )
                backups = None
                if self.backup_policy is not None:
                    concurrency = self.max_concurrency or _backups.DEFAULT_CONCURRENCY
                    backups = _backups.Backups(self.backup_policy, concurrency)
                if self.trigger == "call":
                    backups = None  # (a call is answered or fails within its deadline)
                run = RunState(self.settings, s3, job, sealed, pool, backups)
                body = sealed.body_key(self.prefix)
                # the tier an earlier run of this body needed (its tasks ran out below it)
                run.start_tier = max(run.start_tier, self._learned_tier.get(body, 0))
                run.call_slots = asyncio.Semaphore(self.workers)
                ident = _code.record_id(self.function_name, region, self.endpoint_url)
                run.function_record = functools.partial(
                    _code.function_package,
                    s3,
                    self.prefix,
                    self.function_name,
                    ident,
                    self._records,
                )
                job.queued = lambda: len(run.pending)
                finished = False
                try:
                    producers = [dispatch.send_tasks(run, tasks), gather.gather_results(run)]
                    async for result in fan_in(run.out, producers):
                        if result.failure is not None and result.failure.kind == "code":
                            # not in the bucket after all: the next job uploads it again
                            for digest in sealed.code:
                                self._code_known.pop(digest, None)
                        yield result
                    finished = True
                finally:
                    if run.top_tier_done > run.start_tier:
                        self._learned_tier[body] = run.top_tier_done
                    job.stats.memory_tiers = list(self.settings.ladder)
                    _backups.record_stats(run)
                    await _call.stop(run)
                    job.stats.throttles += s3.invoker.throttles
                    await asyncio.shield(dispatch.withdraw(run, finished))
        finally:
            for kind, n in counter.counts.items():
                self.counter.add(kind, n)
            job.stats.client_s3_requests = dict(counter.counts)
            job.stats.bytes_sent = counter.bytes_sent

    async def attach(self, job_id: str) -> AttachedJob:
        """Find a job in S3: what ``Job.attach`` needs to resume it."""
        job_id = _attach.check_job_id(job_id)
        region = resolve_region(self.region, self.profile)
        async with self._open(region, 16, RequestCounter()) as s3:
            return await _attach.find_job(s3, self.settings, job_id)

    # ------------------------------------------------------------------ S3

    def _open(self, region: str, pool: int, counter: RequestCounter) -> Any:
        # clients stay warm across jobs on one loop: the portal's (sync verbs), or the
        # caller's (await .arun()); closed when that loop shuts down
        loop = asyncio.get_running_loop()
        per_loop = self._shared.get(loop)
        if per_loop is None:
            per_loop = self._shared[loop] = {}
        shared = per_loop.setdefault(region, {})
        sessions = getattr(self._sessions, "by_key", None)
        if sessions is None:
            sessions = self._sessions.by_key = {}
        return open_s3(
            shared=shared,
            bucket=self.bucket,
            region=region,
            profile=self.profile,
            endpoint_url=self.endpoint_url,
            pool=pool,
            counter=counter,
            # (a memory tier is invoked by its alias, whatever the trigger)
            # (and the Invoke of a remote dispatcher)
            with_lambda=self.trigger == "invoke"
            or bool(self.settings.memory_tiers)
            or (self.dispatch != "client" and self.trigger == "s3"),
            # a call may take the function's timeout, and the grace period to answer
            call_timeout=self.task_timeout + self.grace if self.trigger == "call" else None,
            function_name=self.function_name,
            credentials=self.settings.credentials,
            sessions=sessions,
        )

    async def _check_setup(self, s3: S3) -> None:
        """Once per backend: the bucket exists and (trigger="s3") notifies our function."""
        if self._checked_setup or self.trigger != "s3":
            self._checked_setup = True
            return
        config = await s3.notification_config()
        if config is not None:
            wanted = _keys.queue_root(self.prefix)
            for entry in config.get("LambdaFunctionConfigurations", ()):
                rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
                values = {r.get("Name", "").lower(): r.get("Value", "") for r in rules}
                arn = str(entry.get("LambdaFunctionArn", ""))
                if arn.split(":")[-1] == self.function_name and wanted.startswith(
                    values.get("prefix", "")
                ):
                    break
            else:
                if await self._emulator_polls(s3):
                    self._checked_setup = True
                    return
                raise ConfigError(
                    f"bucket {self.bucket!r} does not notify Lambda function "
                    f"{self.function_name!r} of new objects under {wanted!r}, so no task would "
                    f"run; run `dolambda deploy --bucket {self.bucket}` (or use trigger='invoke')"
                )
        self._checked_setup = True

    async def _emulator_polls(self, s3: S3) -> bool:
        """Whether a local emulator (discovery="poll") runs this function's tasks."""
        blob = await s3.get(_keys.emulator_key(self.prefix))
        try:
            return blob is not None and json.loads(blob)["function_name"] == self.function_name
        except (ValueError, KeyError, TypeError):
            return False


def _close_warm_clients(
    shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, dict[str, Any]]],
) -> None:
    """A dropped backend's warm clients: each closes on its own loop, if that still runs."""
    for loop, per_loop in list(shared.items()):
        if loop.is_closed() or not loop.is_running():
            continue  # (a loop that shut down closed them already)
        for entry in list(per_loop.values()):
            keeper = entry.get("keeper")
            if keeper is not None:
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(keeper.aclose(), loop)
