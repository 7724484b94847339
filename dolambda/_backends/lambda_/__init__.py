"""The Lambda backend: an S3 bucket is the job queue, AWS Lambda runs the tasks.

::

    client (this module)                        S3 bucket <prefix>/             Lambda (handler/)
    ────────────────────                        ───────────────────             ─────────────────
    PUT jobs/<id>/manifest.json, body.pkl
        (once per job; first, unless the job is
        small enough to ride along in every
        task: then after the tasks)
    dispatch: PUT queue/<id>/<task>.task ──────► ObjectCreated ───────────────► lambda_handler
      (bounded concurrency, streamed;            (trigger="s3"), or             GET task (+manifest,
       trigger="invoke": async Invoke,           async Invoke with the          body once per warm
       small tasks inlined in the payload)       task key (trigger="invoke")    container, unless
                                                                                the task carries
                                                                                them), run it
    gather: LIST results/<id>/ (StartAfter  ◄── results/<id>/<task>.out ◄──── PUT If-None-Match: *
      the first missing task), GET new ones
      concurrently, adaptive poll interval
    lost work: no result past the deadline ──► re-PUT the task (attempt+1), up to `retries`
    cancel / stop: PUT jobs/<id>/cancel, DELETE the queued tasks (workers then skip them)
    cleanup: DELETE the job's objects unless keep=True

The results in S3 are the only source of truth: ``Job.attach`` rebuilds a job
from ``manifest.json``, ``plan.json`` (written last, with the loop's combine) and
the task objects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from dolambda._aws.s3 import S3, RequestCounter, gather_limited, open_s3, resolve_region
from dolambda._backends.base import Backend, JobContext, TaskResult, decode_outcome, fan_in
from dolambda._config import load_config
from dolambda._core.plan import InnerDone, PlannedTask
from dolambda._errors import ConfigError, InvalidArgument, InvalidArgumentType, SignatureError
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import (
    manifest_context,
    outcome_context,
    plan_context,
    signing_key_bytes,
    task_context,
)
from dolambda._wire.models import JobManifest, TaskFailure, TaskOutcome, TaskSpec

INLINE_LIMIT = 200 * 1024  # async Invoke payloads may be 256 KB
# a job whose sealed manifest + body are at most this big travels inside every task: a
# worker new to the job then makes no request for them (2 GETs per worker per job, i.e.
# 2,000 GETs for a job spread over 1,000 cold workers), and the tasks need not wait for
# the job objects to be written. Typical bodies pickle to 0.1-1 KB.
JOB_INLINE_LIMIT = 4 * 1024
GRACE = 30.0  # seconds past the function timeout before a task counts as lost
# LIST interval: fast on the tail, slowing to POLL_MAX after a minute without progress
POLL_MIN, POLL_FAST_MAX, POLL_MAX = 0.01, 0.05, 1.0
# while tasks are still being dispatched, wait for about this many results per LIST
RESULTS_PER_LIST = 100
# seconds of client work per task (its PUT and its result's LIST share and GET; measured
# ~1-2 ms against S3 with 64 connections, ~7 ms against moto): sizes measured chunks
TASK_COST = 0.005
# once every task is out: with this few left (or this little time to go), poll fast
TAIL_TASKS, TAIL_SECONDS = 4, 0.1
POLL_TAIL = 0.02  # while waiting on the tail, LIST at least this often (the first minute)


# failures the Lambda runtime reports through the on-failure destination: worth a retry
RUNTIME_FAILURES = ("timeout", "memory", "crashed")


@dataclass
class _Pending:
    planned: PlannedTask
    attempt: int
    dispatched_at: float
    last_failure: str = ""  # what the runtime said about the previous attempt


class LambdaBackend(Backend):
    """Run iterations on AWS Lambda with an S3 bucket as the job queue.

    Settings not given come from the config file that ``dolambda deploy`` writes.
    Credentials come from the standard AWS chain (environment, profile, config
    files, instance role) unless ``aws_access_key_id``/``aws_secret_access_key`` are given.

    >>> from dolambda import LambdaBackend, foreach, register
    >>> backend = LambdaBackend(bucket="my-queue", region="us-east-1", signing_key="00" * 32)
    >>> register(backend)  # then foreach(x=range(1000)).combine(sum).run(simulate)
    """

    name = "lambda"
    remote = True
    run_on_portal = True  # sync verbs run on the helper loop, where clients stay warm

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
    ) -> None:
        if bucket is not None and (not isinstance(bucket, str) or not bucket):
            raise InvalidArgumentType(
                f"LambdaBackend: bucket must be a bucket name, got {bucket!r}"
            )
        for name, value in (
            ("function_name", function_name),
            ("region", region),
            ("profile", profile),
            ("endpoint_url", endpoint_url),
            ("prefix", prefix),
        ):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentType(
                    f"LambdaBackend: {name} must be a string, got {type(value).__name__} {value!r}"
                )
        if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"LambdaBackend: endpoint_url must be an http(s) URL such as "
                f"'http://127.0.0.1:5000', got {endpoint_url!r}"
            )
        if not isinstance(keep, bool):
            raise InvalidArgumentType(f"LambdaBackend: keep must be True or False, got {keep!r}")
        if signing_key is not None and not isinstance(signing_key, (str, bytes)):
            raise InvalidArgumentType(
                "LambdaBackend: signing_key must be a hex string, text or bytes, got "
                f"{type(signing_key).__name__}"
            )
        config = load_config()
        if bucket is None:
            if config is None:
                raise ConfigError(
                    "LambdaBackend: no bucket given and no deployed setup found; pass "
                    "bucket=... or run `dolambda deploy --bucket NAME` first"
                )
            bucket = config.bucket
        same = config is not None and config.bucket == bucket
        if not isinstance(bucket, str) or not bucket:
            raise InvalidArgumentType(
                f"LambdaBackend: bucket must be a bucket name, got {bucket!r}"
            )
        self.bucket = bucket
        self.function_name = function_name or (
            config.function_name if same and config else "dolambda"
        )
        self.profile = profile or (config.profile if same and config else None)
        self.region = region or (config.region if same and config else None)
        self.endpoint_url = endpoint_url or (config.endpoint_url if same and config else None)
        self.prefix = (
            prefix if prefix is not None else (config.prefix if same and config else "dolambda")
        ).strip("/")
        if trigger not in ("s3", "invoke"):
            raise InvalidArgument(
                f"LambdaBackend: trigger must be 's3' or 'invoke', got {trigger!r}"
            )
        self.trigger = trigger
        if chunk_size != "auto" and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise InvalidArgument(
                "LambdaBackend: chunk_size must be a positive integer or 'auto', "
                f"got {chunk_size!r}"
            )
        self.chunk_size = chunk_size
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgument(
                f"LambdaBackend: retries must be an integer >= 0, got {retries!r}"
            )
        self.retries = retries
        if task_timeout is not None and (
            isinstance(task_timeout, bool)
            or not isinstance(task_timeout, (int, float))
            or not task_timeout > 0
        ):
            raise InvalidArgument(
                "LambdaBackend: task_timeout must be a positive number of seconds, "
                f"got {task_timeout!r}"
            )
        self.task_timeout = (
            float(task_timeout)
            if task_timeout is not None
            else (float(config.timeout) if same and config else 900.0)
        )
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise InvalidArgument(
                "LambdaBackend: max_concurrency must be a positive integer, "
                f"got {max_concurrency!r}"
            )
        self.max_concurrency = max_concurrency
        self.keep = bool(keep)
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise InvalidArgument(
                "LambdaBackend: pass both aws_access_key_id and aws_secret_access_key, or neither "
                "(then the standard AWS credential chain is used)"
            )
        self._credentials = {
            k: v
            for k, v in (
                ("aws_access_key_id", aws_access_key_id),
                ("aws_secret_access_key", aws_secret_access_key),
                ("aws_session_token", aws_session_token),
            )
            if v is not None
        }
        key_text = (
            signing_key
            if signing_key is not None
            else (
                os.environ.get("DOLAMBDA_SIGNING_KEY")
                or (config.signing_key if same and config else None)
            )
        )
        self._key = signing_key_bytes(key_text) if key_text else None
        self.memory_mb = config.memory_mb if same and config else 1024
        self.architecture = config.architecture if same and config else "x86_64"
        # seconds past the function timeout before a task without a result counts as lost
        self.grace = min(GRACE, 1.0 + self.task_timeout / 2)
        self._checked_setup = False
        self._shared: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()
        # aioboto3 sessions for runs on other loops (async callers), one set per thread:
        # botocore sessions are not thread-safe, and a new one costs ~100 ms a job
        self._sessions = threading.local()
        self.counter = RequestCounter()  # cumulative client requests over this backend's life

    def __getstate__(self) -> dict[str, Any]:
        # warm clients and sessions belong to this process's loops and threads
        state = dict(self.__dict__)
        del state["_shared"], state["_sessions"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._shared = weakref.WeakKeyDictionary()
        self._sessions = threading.local()

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

    @property
    def workers(self) -> int:
        return self.max_concurrency or 1000

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

    @property
    def key(self) -> bytes:
        if self._key is None:
            raise ConfigError(
                "LambdaBackend: no signing key; pass signing_key=, set DOLAMBDA_SIGNING_KEY, or "
                "run `dolambda deploy` (it writes the key the function uses)"
            )
        return self._key

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
            with_lambda=self.trigger == "invoke",
            function_name=self.function_name,
            credentials=self._credentials,
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

    async def run_tasks(
        self, job: JobContext, tasks: AsyncIterator[PlannedTask]
    ) -> AsyncGenerator[TaskResult, None]:
        region = resolve_region(self.region, self.profile)
        job.key = self.key
        job.trigger = self.trigger
        job.task_timeout = self.task_timeout
        counter = RequestCounter()
        pool = 64
        try:
            async with self._open(region, pool, counter) as s3:
                await self._check_setup(s3)
                run = _Run(self, s3, job, pool)
                async with contextlib.aclosing(run.execute(tasks)) as results:
                    async for result in results:
                        yield result
        finally:
            for kind, n in counter.counts.items():
                self.counter.add(kind, n)
            job.client_requests = dict(counter.counts)

    # ------------------------------------------------------------------ attach, jobs, cleanup

    async def attach(self, job_id: str) -> Any:
        """Rebuild a job from what is in S3 and return a running-ready Job."""
        from dolambda._job import Job

        if not isinstance(job_id, str):
            raise InvalidArgumentType(
                f"Job.attach: the job id must be a string such as job.id, got {job_id!r}"
            )
        if not _keys.valid_job_id(job_id):
            raise InvalidArgument(f"Job.attach: {job_id!r} is not a dolambda job id")
        region = resolve_region(self.region, self.profile)
        counter = RequestCounter()
        async with self._open(region, 16, counter) as s3:
            blob = await s3.get(_keys.manifest_key(self.prefix, job_id))
            plan_blob = None if blob is None else await s3.get(_keys.plan_key(self.prefix, job_id))
            if blob is None:
                # a small job's tasks go out before its manifest: tasks without one are a
                # partial dispatch too
                async with contextlib.aclosing(
                    s3.list_keys(_keys.queue_dir(self.prefix, job_id))
                ) as queued:
                    first_task = await anext(queued, None)
                if first_task is None:
                    raise InvalidArgument(
                        f"Job.attach: no job {job_id!r} in s3://{self.bucket}/{self.prefix}/"
                        "jobs/ (finished and cleaned up, expired, or another bucket/prefix)"
                    )
            if plan_blob is None:
                # a partial plan cannot be finished: stop its queued tasks and clean up
                p = self.prefix
                await s3.put(_keys.cancel_key(p, job_id), b"")
                for root in (_keys.queue_dir(p, job_id), _keys.results_dir(p, job_id)):
                    await s3.delete_prefix(root)
                await s3.delete_keys(
                    [
                        k
                        async for k in s3.list_keys(_keys.job_dir(p, job_id))
                        if k != _keys.cancel_key(p, job_id)
                    ]
                )
                raise InvalidArgument(
                    f"Job.attach: job {job_id!r} was not fully dispatched (its client stopped "
                    "before every task was uploaded); its queued tasks were cancelled and its "
                    "objects deleted. Submit the loop again."
                )
            assert blob is not None  # a plan is written after the manifest
            manifest = codec.unseal_model(
                JobManifest, blob, key=self.key, context=manifest_context(job_id)
            )
            plan = json.loads(codec.unseal(plan_blob, key=self.key, context=plan_context(job_id)))
            if plan.get("client") is None:
                raise InvalidArgument(
                    f"Job.attach: job {job_id!r} cannot be attached: its combine function "
                    "could not be pickled when it was submitted (it is still running; its "
                    "results stay under results/ until cleaned up)"
                )
            loop = codec.loads(base64.b64decode(plan["client"]))
            task_keys = [k async for k in s3.list_keys(_keys.queue_dir(self.prefix, job_id))]
            blobs = await gather_limited(16, [s3.get(k) for k in task_keys])
        items: list[PlannedTask | InnerDone] = []
        for key, tblob in zip(task_keys, blobs, strict=True):
            parsed = _keys.parse_task_key(self.prefix, key)
            if parsed is None or tblob is None:
                continue
            spec = codec.unseal_model(
                TaskSpec, tblob, key=self.key, context=task_context(job_id, parsed[1])
            )
            items.append(
                PlannedTask(
                    spec.task_id,
                    spec.first,
                    codec.loads(spec.args),
                    manifest.variables,
                    None if spec.paths is None else list(spec.paths),
                    None if spec.slots is None else list(spec.slots),
                )
            )
        if len(items) != plan["tasks"]:
            raise InvalidArgument(
                f"Job.attach: job {job_id!r} has {len(items)} of its {plan['tasks']} task objects "
                "left; it was cancelled or partly cleaned up"
            )
        items.extend(InnerDone(tuple(p), tuple(q), c) for p, q, c in plan["markers"])
        job = Job(loop, _attached_body, self, job_id=job_id, plan=items, seed=manifest.seed)
        return job.start_on_portal()


def _attached_body(**kwargs: Any) -> Any:  # pragma: no cover - never called: the body is in S3
    raise RuntimeError("an attached job runs the body stored in S3")


class _Run:
    """One job's dispatch and gather over one pooled client."""

    def __init__(self, backend: LambdaBackend, s3: S3, job: JobContext, pool: int) -> None:
        self.b = backend
        self.s3 = s3
        self.job = job
        self.prefix = backend.prefix
        self.pending: dict[int, _Pending] = {}
        self.task_ids: list[int] = []  # every task of the job, for the cleanup
        self.seen: set[int] = set()
        self.dispatch_done = False
        self.last_progress = time.monotonic()
        self.uploads = asyncio.Semaphore(pool)
        self.downloads = asyncio.Semaphore(pool)
        self.out: asyncio.Queue[TaskResult | BaseException | None] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.sent_any = asyncio.Event()  # no result can exist before a task was sent
        self.first_send = 0.0  # seconds the first task's PUT (or Invoke) took
        self.deadline = backend.task_timeout + backend.grace
        # an attached job's body is only in S3 (its tasks and retries refer to it there)
        self.inline_job = not job.attached and (
            len(job.sealed_manifest) + len(job.sealed_body) <= JOB_INLINE_LIMIT
        )

    # -------------------------------------------------------------- dispatch

    async def _put_job_objects(self) -> None:
        job, s3, p = self.job, self.s3, self.prefix
        puts = [
            s3.put(_keys.manifest_key(p, job.job_id), job.sealed_manifest),
            s3.put(_keys.body_key(p, job.job_id), job.sealed_body),
        ]
        await asyncio.gather(*puts)

    async def _send(self, task_id: int, blob: bytes) -> None:
        """Enqueue one task; the caller holds a place in ``self.uploads``."""
        invoke = self.b.trigger == "invoke"
        key = _keys.task_key(self.prefix, self.job.job_id, task_id, invoke=invoke)
        if invoke:
            payload: dict[str, Any] = {"bucket": self.b.bucket, "key": key}
            if len(blob) <= INLINE_LIMIT:
                payload["task"] = base64.b64encode(blob).decode()
            else:
                await self.s3.put(key, blob)
            await self.s3.invoker.invoke(payload)
        else:
            await self.s3.put(key, blob)

    async def _send_and_release(self, task_id: int, blob: bytes) -> None:
        try:
            started = time.monotonic()
            await self._send(task_id, blob)
            if not self.sent_any.is_set():
                self.first_send = time.monotonic() - started
                self.sent_any.set()
        finally:
            self.uploads.release()

    async def dispatch(self, tasks: AsyncIterator[PlannedTask]) -> None:
        job = self.job
        sends: set[asyncio.Task[None]] = set()
        if not job.attached and not self.inline_job:
            await self._put_job_objects()  # before any task a worker could run
        try:
            async for planned in tasks:
                self.pending[planned.task_id] = _Pending(planned, 0, time.monotonic())
                self.task_ids.append(planned.task_id)
                if job.attached:
                    continue
                blob = job.sealed_task(planned, with_job=self.inline_job)
                await self.uploads.acquire()  # backpressure: at most `pool` uploads in flight
                sends.add(asyncio.create_task(self._send_and_release(planned.task_id, blob)))
                for done in [s for s in sends if s.done()]:
                    sends.discard(done)
                    done.result()  # an upload error stops the dispatch
            await asyncio.gather(*sends)
        except BaseException:
            for s in sends:
                s.cancel()
            raise
        if not job.attached:
            if self.inline_job:
                # the tasks carried the job: its objects are for Job.attach (and retries
                # after an attach), which needs the plan too, so they go up now, before it
                await self._put_job_objects()
            state = job.client_state
            plan = {
                "tasks": len(self.task_ids),
                "markers": [[list(m.prefix), list(m.path), m.count] for m in job.markers],
                # the loop's combine, for Job.attach (None: it could not be pickled)
                "client": None if state is None else base64.b64encode(state).decode(),
            }
            # the plan is written last: its presence means the job was fully dispatched
            await self.s3.put(
                _keys.plan_key(self.prefix, job.job_id),
                codec.seal(
                    json.dumps(plan).encode(), key=job.key, context=plan_context(job.job_id)
                ),
            )
        self.dispatch_done = True
        self.sent_any.set()  # (a job with no task at all)
        self.wake.set()

    # -------------------------------------------------------------- gather

    async def _fetch(self, task_id: int, key: str) -> None:
        async with self.downloads:
            blob = await self.s3.get(key)
        entry = self.pending.get(task_id)
        if blob is None or entry is None:
            self.seen.discard(task_id)
            return
        try:
            outcome = codec.unseal_model(
                TaskOutcome,
                blob,
                key=self.job.key,
                context=outcome_context(self.job.job_id, task_id),
            )
        except SignatureError as exc:
            raise SignatureError(f"result s3://{self.b.bucket}/{key}: {exc}") from None
        self.last_progress = time.monotonic()
        failure = outcome.failure
        if (
            failure is not None
            and failure.kind in RUNTIME_FAILURES
            and entry.attempt < self.b.retries
            and not self.job.cancelled.is_set()
        ):
            # the runtime reported the task failed (timeout, memory, crash): run it again,
            # after clearing the error result so the retry's result can be written
            await self.s3.delete_keys([key])
            self.seen.discard(task_id)
            entry.last_failure = failure.message
            await self._retry(task_id, entry)
            return
        del self.pending[task_id]
        self.last_progress = time.monotonic()
        await self.out.put(decode_outcome(outcome, attempts=entry.attempt + 1))

    async def _poll_once(self) -> int:
        if not self.pending:
            return 0
        first = min(self.pending)
        start_after = _keys.result_key(self.prefix, self.job.job_id, first - 1) if first > 0 else ""
        new: list[tuple[int, str]] = []
        async for key in self.s3.list_keys(
            _keys.results_dir(self.prefix, self.job.job_id), start_after
        ):
            task_id = _keys.parse_result_key(self.prefix, self.job.job_id, key)
            if task_id is None or task_id in self.seen or task_id not in self.pending:
                continue
            self.seen.add(task_id)
            new.append((task_id, key))
        if new:
            await asyncio.gather(*(self._fetch(t, k) for t, k in new))
        return len(new)

    async def _requeue_lost(self) -> None:
        now = time.monotonic()
        for task_id, entry in list(self.pending.items()):
            if task_id in self.seen:
                continue
            since = now - max(entry.dispatched_at, self.last_progress)
            if since < self.deadline:
                continue
            if entry.attempt >= self.b.retries:
                del self.pending[task_id]
                message = (
                    f"no result for task {task_id} after {entry.attempt + 1} attempt(s), each "
                    f"given {self.deadline:.0f}s: it timed out (function timeout "
                    f"{self.b.task_timeout:.0f}s), ran out of memory, crashed, or was never "
                    "started (event lost)"
                )
                if entry.last_failure:
                    message += f"; an earlier attempt failed: {entry.last_failure}"
                await self.out.put(
                    TaskResult(
                        task_id,
                        failure=TaskFailure(kind="lost", message=message),
                        attempts=entry.attempt + 1,
                    )
                )
                continue
            await self._retry(task_id, entry)

    async def _retry(self, task_id: int, entry: _Pending) -> None:
        """Enqueue the task again (a new ObjectCreated event, or a new Invoke)."""
        entry.attempt += 1
        entry.dispatched_at = time.monotonic()
        blob = self.job.sealed_task(entry.planned, attempt=entry.attempt, with_job=self.inline_job)
        async with self.uploads:
            await self._send(task_id, blob)

    async def gather(self) -> None:
        if not self.job.attached:
            await self.sent_any.wait()
            # a result needs at least two more round trips (the worker's GET of the task,
            # or the Invoke, then its PUT), each about as long as the first task's send:
            # a LIST before then finds nothing
            await asyncio.sleep(min(2 * self.first_send, POLL_FAST_MAX))
        interval = POLL_MIN
        started = time.monotonic()
        received = 0
        while True:
            found = await self._poll_once()  # (nothing pending: no request)
            if self.dispatch_done and not self.pending:
                return  # the last result is in: no wait for another poll round
            if found:
                received += found
                rate = received / max(time.monotonic() - started, 1e-3)
                interval = self._next_interval(rate)
            else:
                await self._requeue_lost()
                idle = time.monotonic() - self.last_progress
                floor = POLL_TAIL if self._on_tail() else POLL_FAST_MAX  # see the last ones soon
                interval = min(floor + idle / 60 * POLL_MAX, POLL_MAX, interval * 1.5)
            self.wake.clear()
            await self._sleep_unless_woken(interval)

    async def _sleep_unless_woken(self, seconds: float) -> None:
        """Wait ``seconds`` or until ``self.wake`` is set.

        Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives
        as the event is set (it returns the event's result instead), and a job cancelled
        just as its dispatch finished then kept polling instead of stopping.
        """
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait((woken,), timeout=seconds)
        finally:
            woken.cancel()

    def _on_tail(self) -> bool:
        """Every task is out and only the last few are still running."""
        return self.dispatch_done and len(self.pending) <= TAIL_TASKS

    def _next_interval(self, rate: float) -> float:
        """Seconds to the next LIST while results stream in at ``rate`` per second.

        A LIST returns up to 1,000 keys, so each one should collect many results;
        but the last result must be seen fast (fan-in latency), and progress should
        show at least every POLL_MAX.
        """
        if not self.dispatch_done:
            return min(max(RESULTS_PER_LIST / rate, POLL_FAST_MAX), POLL_MAX)
        remaining = len(self.pending) / rate  # seconds until the last result, at this rate
        if self._on_tail() or remaining <= TAIL_SECONDS:
            return POLL_MIN
        # each LIST collects about a quarter of what is left: a few LISTs per job
        return min(max(remaining / 4, POLL_FAST_MAX), POLL_MAX)

    # -------------------------------------------------------------- the run

    async def execute(self, tasks: AsyncIterator[PlannedTask]) -> AsyncGenerator[TaskResult, None]:
        finished = False

        try:
            async for result in fan_in(self.out, [self.dispatch(tasks), self.gather()]):
                yield result
            finished = True
        finally:
            await asyncio.shield(self._finish(finished))

    async def _finish(self, finished: bool) -> None:
        job, s3, p = self.job, self.s3, self.prefix
        with contextlib.suppress(Exception):
            stopped = not finished or job.cancelled.is_set()
            cleanup = not self.b.keep and (finished or job.cancelled.is_set())
            invoke = self.b.trigger == "invoke"
            if stopped:
                await s3.put(_keys.cancel_key(p, job.job_id), b"")
                if not cleanup:  # otherwise the cleanup below deletes the queued tasks
                    await s3.delete_keys(
                        _keys.task_key(p, job.job_id, t, invoke=invoke) for t in self.pending
                    )
            if cleanup:
                # every key is known: no LIST, one DeleteObjects per 1,000 keys
                keys = [_keys.task_key(p, job.job_id, t, invoke=invoke) for t in self.task_ids]
                keys += [_keys.result_key(p, job.job_id, t) for t in self.task_ids]
                keys += [
                    _keys.manifest_key(p, job.job_id),
                    _keys.body_key(p, job.job_id),
                    _keys.plan_key(p, job.job_id),
                ]
                if not job.cancelled.is_set():
                    keys.append(_keys.cancel_key(p, job.job_id))
                await s3.delete_keys(keys)
