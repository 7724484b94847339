"""The sequential backend: iterations run one by one in the client process (%do%)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator

from dolambda._backends.base import Backend, JobContext, TaskResult
from dolambda._plan import PlannedTask
from dolambda._worker import run_iterations


class SequentialBackend(Backend):
    """Runs the body in this process. ``offload=True`` runs it on a thread so an
    ``await``-ing caller's event loop keeps running."""

    name = "sequential"

    def __init__(self, offload: bool = False) -> None:
        self.offload = offload

    def chunk_size_for(self, total: int | None) -> int:
        return 1

    async def run_tasks(
        self, job: JobContext, tasks: AsyncIterator[PlannedTask]
    ) -> AsyncGenerator[TaskResult, None]:
        async for task in tasks:
            if job.cancelled.is_set():
                return
            items = [(leaf.index, leaf.path, leaf.kwargs) for leaf in task.leaves]
            if self.offload:
                ctx = contextvars.copy_context()
                results = await asyncio.to_thread(
                    ctx.run, run_iterations, job.body, items, seed=job.seed
                )
            else:
                results = run_iterations(job.body, items, seed=job.seed)
            yield TaskResult(task.task_id, results)
