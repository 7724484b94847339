"""Job bookkeeping in the bucket: list jobs with their progress, delete old ones."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from dolambda._aws.s3 import S3, RequestCounter, resolve_region
from dolambda._backends.lambda_ import LambdaBackend
from dolambda._wire import codec
from dolambda._wire import keys as _keys


@dataclass
class JobInfo:
    job_id: str
    created_at: float | None
    tasks: int | None
    results: int
    cancelled: bool

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.tasks is None:
            return "dispatching"
        return "done" if self.results >= self.tasks else "running"


async def _job_info(s3: S3, backend: LambdaBackend, job_id: str) -> JobInfo:
    p = backend.prefix
    keys = {k async for k in s3.list_keys(_keys.job_dir(p, job_id))}
    created: float | None = None
    tasks: int | None = None
    if _keys.manifest_key(p, job_id) in keys:
        blob = await s3.get(_keys.manifest_key(p, job_id))
        if blob is not None:
            try:
                payload = codec.unseal(
                    blob, key=backend.key, context=codec.manifest_context(job_id)
                )
                created = float(json.loads(payload)["created_at"])
            except Exception:
                created = None
    plan_key = _keys.plan_key(p, job_id)
    if plan_key in keys:
        blob = await s3.get(plan_key)
        if blob is not None:
            try:
                plan = json.loads(
                    codec.unseal(blob, key=backend.key, context=codec.plan_context(job_id))
                )
                tasks = int(plan["tasks"])
            except Exception:
                tasks = None
    results = 0
    async for _ in s3.list_keys(_keys.results_dir(p, job_id)):
        results += 1
    return JobInfo(job_id, created, tasks, results, _keys.cancel_key(p, job_id) in keys)


async def list_jobs(backend: LambdaBackend) -> list[JobInfo]:
    """Every job under the backend's prefix, oldest first."""
    region = resolve_region(backend.region, backend.profile)
    async with backend._open(region, 16, RequestCounter()) as s3:
        roots = await s3.list_prefixes(_keys.jobs_root(backend.prefix))
        ids = [r.rstrip("/").rsplit("/", 1)[-1] for r in roots]
        return [await _job_info(s3, backend, j) for j in sorted(ids)]


async def cleanup_jobs(
    backend: LambdaBackend, older_than: float, *, dry_run: bool = False
) -> list[str]:
    """Delete every object of jobs created more than ``older_than`` seconds ago."""
    region = resolve_region(backend.region, backend.profile)
    cutoff = time.time() - older_than
    removed: list[str] = []
    async with backend._open(region, 16, RequestCounter()) as s3:
        roots = await s3.list_prefixes(_keys.jobs_root(backend.prefix))
        for root in roots:
            job_id = root.rstrip("/").rsplit("/", 1)[-1]
            info = await _job_info(s3, backend, job_id)
            if info.created_at is not None and info.created_at > cutoff:
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
    return removed
