"""Many concurrent producers, one stream of task results (what a backend yields)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

from dolambda._backends.base import TaskResult


async def fan_in(
    out: asyncio.Queue[TaskResult | BaseException | None],
    producers: list[Coroutine[Any, Any, None]],
) -> AsyncGenerator[TaskResult, None]:
    """Run ``producers`` concurrently and yield the TaskResults they put on ``out``.

    The first exception a producer raises is re-raised here; leaving early (or an
    error) cancels every producer and waits for their cleanup.
    """

    async def guard(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await out.put(exc)
            raise
        finally:
            out.put_nowait(None)

    tasks = [asyncio.create_task(guard(c)) for c in producers]
    running = len(tasks)
    try:
        while running:
            item = await out.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
