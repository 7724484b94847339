"""Job bookkeeping in the bucket: list jobs with their progress, delete old ones."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from dolambda._aws.s3 import S3, RequestCounter, resolve_region
from dolambda._backends.lambda_ import LambdaBackend
from dolambda._errors import SignatureError, VersionMismatch
from dolambda._wire import codec
from dolambda._wire import keys as _keys


@dataclass
class JobInfo:
    job_id: str
    created_at: float | None
    tasks: int | None
    results: int
    cancelled: bool
    #: sha256 of the job's body (its manifest's ``body_digest``; None: unknown)
    body_digest: str | None = None
    #: why the job's signed objects could not be read ("": they could, or there are none):
    #: its age and task count are then unknown, and nothing of it is trusted
    unverified: str = ""

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.unverified:
            return "unverified"
        if self.tasks is None:
            return "dispatching"
        return "done" if self.results >= self.tasks else "running"


NO_KEY = "no signing key"
WRONG_KEY = "signed with another key"
OTHER_VERSION = "written by another dolambda version"


async def _job_info(s3: S3, backend: LambdaBackend, job_id: str) -> JobInfo:
    p = backend.prefix
    key = backend.settings.signing_key
    keys = {k async for k in s3.list_keys(_keys.job_dir(p, job_id))}
    created: float | None = None
    tasks: int | None = None
    unverified = ""

    async def read(object_key: str, context: str) -> dict[str, object] | None:
        nonlocal unverified
        if object_key not in keys:
            return None
        if key is None:
            unverified = NO_KEY
            return None
        blob = await s3.get(object_key)
        if blob is None:
            return None
        try:
            data = json.loads(codec.unseal(blob, key=key, context=context))
        except SignatureError:
            unverified = WRONG_KEY
            return None
        except VersionMismatch:
            unverified = OTHER_VERSION
            return None
        except ValueError:  # signed by us, yet not JSON: nothing to show
            return None
        return data if isinstance(data, dict) else None

    manifest = await read(_keys.manifest_key(p, job_id), codec.manifest_context(job_id))
    named = None if manifest is None else manifest.get("body_digest")
    made = None if manifest is None else manifest.get("created_at")
    if isinstance(made, int | float):
        created = float(made)
    plan = await read(_keys.plan_key(p, job_id), codec.plan_context(job_id))
    count = None if plan is None else plan.get("tasks")
    if isinstance(count, int):
        tasks = count
    results = 0
    async for _ in s3.list_keys(_keys.results_dir(p, job_id)):
        results += 1
    return JobInfo(
        job_id,
        created,
        tasks,
        results,
        _keys.cancel_key(p, job_id) in keys,
        body_digest=named if isinstance(named, str) else None,
        unverified=unverified,
    )


async def list_jobs(backend: LambdaBackend) -> list[JobInfo]:
    """Every job under the backend's prefix, oldest first."""
    region = resolve_region(backend.region, backend.profile)
    async with backend._open(region, 16, RequestCounter()) as s3:
        roots = await s3.list_prefixes(_keys.jobs_root(backend.prefix))
        ids = [r.rstrip("/").rsplit("/", 1)[-1] for r in roots]
        return [await _job_info(s3, backend, j) for j in sorted(ids)]


async def cleanup_jobs(
    backend: LambdaBackend,
    older_than: float,
    *,
    dry_run: bool = False,
    skipped: list[JobInfo] | None = None,
    bodies: list[str] | None = None,
) -> list[str]:
    """Delete every object of jobs created more than ``older_than`` seconds ago, and the
    shared bodies (``bodies/``) last written before then that no remaining job names
    (their keys are added to ``bodies``).

    A job whose manifest cannot be verified (no signing key, another key) has no
    trusted age: it is left alone and added to ``skipped`` (and no body is deleted:
    which ones it needs is unknown)."""
    region = resolve_region(backend.region, backend.profile)
    cutoff = time.time() - older_than
    removed: list[str] = []
    kept: set[str | None] = set()  # the bodies of the jobs that stay
    blind = False
    async with backend._open(region, 16, RequestCounter()) as s3:
        roots = await s3.list_prefixes(_keys.jobs_root(backend.prefix))
        for root in roots:
            job_id = root.rstrip("/").rsplit("/", 1)[-1]
            info = await _job_info(s3, backend, job_id)
            if info.unverified:
                blind = True
                if skipped is not None:
                    skipped.append(info)
                continue
            if info.created_at is not None and info.created_at > cutoff:
                kept.add(info.body_digest)
                continue
            removed.append(job_id)
            if dry_run:
                continue
            p = backend.prefix
            for prefix in (
                _keys.queue_dir(p, job_id),
                _keys.results_dir(p, job_id),
                _keys.job_dir(p, job_id),
            ):
                await s3.delete_prefix(prefix)
        if not blind:
            unused = [
                key
                async for key, written in s3.list_written(_keys.bodies_root(backend.prefix))
                if written < cutoff and _body_digest(key) not in kept
            ]
            if bodies is not None:
                bodies.extend(unused)
            if unused and not dry_run:
                await s3.delete_keys(unused)
    return removed


def _body_digest(key: str) -> str:
    return key.rsplit("/", 1)[-1].partition("-")[0]
