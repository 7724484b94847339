"""The sequential backend: iterations run one by one in the client process (%do%)."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the fast C module
import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

from dolambda._backends.base import Backend, JobContext, TaskResult
from dolambda._core.execute import run_iterations
from dolambda._core.tasks import PlannedTask


@contextlib.contextmanager
def _outside_the_loop() -> Iterator[None]:
    """Run a body in this thread as if no event loop were running, as ``%do%`` would:
    a body may then call ``asyncio.run()`` or a sync dolambda verb of its own."""
    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    # Ctrl-C interrupts the body at once (asyncio.Runner would only cancel between bodies)
    main = threading.current_thread() is threading.main_thread()
    # the low-level _signal module: signal.signal's enum conversions cost ~50 us a call
    previous = _signal.getsignal(_signal.SIGINT) if main else None
    if main:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    try:
        yield
    finally:
        if main:
            _signal.signal(_signal.SIGINT, previous)
        asyncio.events._set_running_loop(loop)


class SequentialBackend(Backend):
    """Runs the body in this process. ``offload=True`` runs it on a thread so an
    ``await``-ing caller's event loop keeps running."""

    name = "sequential"

    def __init__(self, offload: bool = False) -> None:
        self.offload = offload

    def chunk_size_for(self, total: int | None, per_iteration: float | None = None) -> int:
        return 1

    async def run_tasks(
        self, job: JobContext, tasks: AsyncIterator[PlannedTask]
    ) -> AsyncGenerator[TaskResult, None]:
        async for task in tasks:
            if job.cancelled.is_set():
                return
            run_chunk = functools.partial(
                run_iterations,
                job.body,
                task.names,
                task.rows,
                first=task.first,
                paths=task.paths,
                seed=job.seed,
                positional=job.positional,
            )
            if self.offload:
                run = await asyncio.to_thread(contextvars.copy_context().run, run_chunk)
            else:
                with _outside_the_loop():
                    run = run_chunk()
            yield TaskResult.of_run(task.task_id, run)
