"""Section cpu (issue 17.3): the client's CPU per S3 request, against bare aiobotocore.

A job's client runs on the portal thread (``submit``), so that thread's CPU clock is the
client's CPU: the emulator's threads and workers, and the S3 server, are elsewhere. The
baseline makes the same requests (the same count of each kind, the same object sizes,
the same concurrency) from a bare aiobotocore client on a thread of its own, during the
same job (so both pay the same machine load). Both are measured at two job sizes and
compared per *additional* request (the slope), so what is paid once per job (sessions,
the body, the code scan) is left out and reported apart.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any

from dolambda import foreach
from dolambda._backends.lambda_ import LambdaBackend
from dolambda._sync import run_sync
from tests.benchmarks import workloads
from tests.benchmarks._common import CREDS, REGION, Row, Server, ensure_bucket, log, median
from tests.benchmarks.bench_lambda import emulator

BUCKET = "bench-cpu-bare"
TARGET = "ratio <= 1.2"
#: the client's S3 connection pool (LambdaBackend.run_tasks opens it with 64)
CLIENT_POOL = 64
_SESSION: Any = None


def _portal() -> threading.Thread:
    import dolambda._sync as sync

    run_sync(asyncio.sleep(0), portal=True)  # (starts the portal)
    thread = sync._portal_thread
    assert thread is not None and thread.ident is not None
    return thread


def _cpu(thread: threading.Thread) -> float:
    """CPU seconds ``thread`` has used (its own clock: other threads do not count)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _job_cpu(backend: LambdaBackend, n: int, thread: threading.Thread) -> tuple[float, Any]:
    c0 = _cpu(thread)
    job = foreach(x=range(n)).chunk_size(1).submit(workloads.noop, backend=backend, progress=False)
    job.result()
    return _cpu(thread) - c0, job


async def _bare(url: str, mix: dict[str, int], put_size: int, pool: int) -> None:
    """The request mix of a job, from a bare aiobotocore client (objects written first)."""
    import aioboto3
    from aiobotocore.config import AioConfig

    global _SESSION
    # one session for every run, as the client keeps its own (a new one loads botocore's
    # models again: ~100 ms of CPU that would only add noise to the comparison)
    _SESSION = _SESSION or aioboto3.Session(region_name=REGION, **CREDS)
    config = AioConfig(max_pool_connections=pool, tcp_keepalive=True)
    async with _SESSION.client("s3", endpoint_url=url, config=config) as s3:
        body = os.urandom(put_size)
        sem = asyncio.Semaphore(pool)

        async def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
            async with sem:
                return await coro

        async def get(key: str) -> None:
            r = await s3.get_object(Bucket=BUCKET, Key=key)
            async with r["Body"] as stream:
                await stream.read()

        puts, gets = mix.get("put", 0), mix.get("get", 0)
        keys = [f"bare/{i:08d}" for i in range(max(puts, gets, 1))]
        coros: list[Coroutine[Any, Any, Any]] = [
            s3.put_object(Bucket=BUCKET, Key=k, Body=body) for k in keys[:puts]
        ]
        await asyncio.gather(*(bounded(c) for c in coros))
        await asyncio.gather(*(bounded(get(k)) for k in keys[:gets]))
        for _ in range(mix.get("list", 0)):
            await s3.list_objects_v2(Bucket=BUCKET, Prefix="bare/", MaxKeys=50)
        for _ in range(mix.get("head", 0)):
            await s3.head_object(Bucket=BUCKET, Key=keys[0])
        for i in range(mix.get("delete", 0)):
            batch = keys[i * 1000 : (i + 1) * 1000] or keys[:1]
            await s3.delete_objects(
                Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )


def _bare_cpu(
    url: str, mix: dict[str, int], put_size: int, pool: int
) -> tuple[threading.Thread, list[float]]:
    """Start the bare loop on a thread of its own; its CPU seconds land in the list."""
    cpu: list[float] = []

    def work() -> None:
        c0 = time.thread_time()
        asyncio.run(_bare(url, mix, put_size, pool))
        cpu.append(time.thread_time() - c0)

    thread = threading.Thread(target=work, name="bench-bare-aiobotocore", daemon=True)
    thread.start()
    return thread, cpu


def _mix(job: Any) -> tuple[dict[str, int], int]:
    mix = {k: v for k, v in job.stats.client_s3_requests.items() if k != "invoke"}
    return mix, max(1, job.stats.bytes_sent // max(1, mix.get("put", 1)))


def run(server: Server, quick: bool) -> list[Row]:
    """Each round runs a job and, at the same time on another thread, the bare loop with
    that job's request mix (taken from a first, unmeasured job of the same size): both
    then share the same machine load (the emulator's workers, the S3 server, the GIL),
    which a 2-core machine otherwise charges to whichever runs during the job."""
    ensure_bucket(server.url, BUCKET)
    small, large = (50, 200) if quick else (100, 500)
    repeats = 2 if quick else 4
    thread = _portal()
    ours: dict[int, list[tuple[float, int]]] = {small: [], large: []}
    bare: dict[int, list[tuple[float, int]]] = {small: [], large: []}
    with emulator(server, "cpu") as emu:
        backend = LambdaBackend(**emu.backend_settings())
        mixes = {n: _mix(_job_cpu(backend, n, thread)[1]) for n in (small, large)}  # (+ warm)
        for r in range(repeats):
            for n in (small, large):
                mix, put_size = mixes[n]
                other, other_cpu = _bare_cpu(server.url, mix, put_size, CLIENT_POOL)
                cpu, job = _job_cpu(backend, n, thread)
                other.join(300)
                total = sum(_mix(job)[0].values())
                ours[n].append((cpu, total))
                bcpu = other_cpu[0] if other_cpu else float("nan")
                bare[n].append((bcpu, sum(mix.values())))
                log(
                    f"cpu: {n} tasks, {total} requests {mix}: dolambda {cpu * 1e3:.0f} ms, "
                    f"bare aiobotocore {bcpu * 1e3:.0f} ms at the same time (round {r + 1})"
                )

    def slope(samples: dict[int, list[tuple[float, int]]]) -> float:
        (c_small, n_small), (c_large, n_large) = (
            (median([c for c, _ in samples[n]]), median([q for _, q in samples[n]]))
            for n in (small, large)
        )
        return 1e3 * (c_large - c_small) / max(1.0, n_large - n_small)

    per_ours, per_bare = slope(ours), slope(bare)
    note = (
        f"slope between {small}- and {large}-task jobs (chunk 1), median of {repeats}; "
        "the bare loop ran alongside each job"
    )
    return [
        Row(
            "17.3 client CPU",
            "client CPU per additional S3 request, dolambda job",
            per_ours,
            "ms/request",
            baseline_name="bare aiobotocore, same requests",
            baseline_value=per_bare,
            target=TARGET,
            note=note,
        ),
        Row(
            "17.3 client CPU",
            "client CPU per request, whole job (incl. per-job work)",
            1e3 * median([c for c, _ in ours[large]]) / median([q for _, q in ours[large]]),
            "ms/request",
            baseline_name="bare aiobotocore, same requests",
            baseline_value=1e3
            * median([c for c, _ in bare[large]])
            / median([q for _, q in bare[large]]),
            note=f"{large}-task job",
        ),
    ]
