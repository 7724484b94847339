"""The local backend's process budget and warm reuse."""

from __future__ import annotations

import asyncio
import os
import time

from dolambda import LocalBackend, foreach


def pid_after(x: int) -> int:
    time.sleep(0.01)
    return os.getpid()


async def test_concurrent_jobs_share_the_process_budget() -> None:
    backend = LocalBackend(workers=2)
    try:
        results = await asyncio.gather(
            *(foreach(x=range(12)).chunk_size(1).arun(pid_after, backend=backend) for _ in range(3))
        )
        pids = {pid for result in results for pid in result}
        assert len(pids) <= 2
    finally:
        backend.shutdown()


def test_workers_stay_warm_between_jobs() -> None:
    backend = LocalBackend(workers=1)
    try:
        first = set(foreach(x=range(3)).run(pid_after, backend=backend))
        second = set(foreach(x=range(3)).run(pid_after, backend=backend))
        assert first == second and len(first) == 1
    finally:
        backend.shutdown()
