"""Section 2 (raw S3 capacity): PUT/GET ops/s that aioboto3 alone reaches, 1 KB objects."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tests.benchmarks._common import CREDS, REGION, Row, Server, ensure_bucket, log, median, spread

BUCKET = "bench-raw"


async def _measure(url: str, concurrency: int, n: int, rounds: int) -> dict[str, list[float]]:
    import aioboto3
    from aiobotocore.config import AioConfig

    session = aioboto3.Session(region_name=REGION, **CREDS)
    config = AioConfig(max_pool_connections=concurrency, tcp_keepalive=True)
    body = os.urandom(1024)
    out: dict[str, list[float]] = {"put": [], "get": []}
    async with session.client("s3", endpoint_url=url, config=config) as s3:
        sem = asyncio.Semaphore(concurrency)

        async def put(key: str) -> None:
            async with sem:
                await s3.put_object(Bucket=BUCKET, Key=key, Body=body)

        async def get(key: str) -> None:
            async with sem:
                r = await s3.get_object(Bucket=BUCKET, Key=key)
                async with r["Body"] as stream:
                    await stream.read()

        # warm the connection pool
        await asyncio.gather(*(put(f"warm/{i}") for i in range(concurrency)))
        for r in range(rounds + 1):
            keys = [f"c{concurrency}/r{r}/{i:06d}" for i in range(n)]
            t0 = time.perf_counter()
            await asyncio.gather(*(put(k) for k in keys))
            t1 = time.perf_counter()
            await asyncio.gather(*(get(k) for k in keys))
            t2 = time.perf_counter()
            if r > 0:  # round 0 is a warm-up
                out["put"].append(n / (t1 - t0))
                out["get"].append(n / (t2 - t1))
        await _delete_all(s3)
    return out


async def _delete_all(s3: Any) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=BUCKET):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            await s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def run(server: Server, quick: bool) -> tuple[list[Row], dict[str, float]]:
    """Rows, and the capacity numbers later sections compare against (best concurrency)."""
    ensure_bucket(server.url, BUCKET)
    n = 200 if quick else 1000
    rounds = 1 if quick else 3
    rows: list[Row] = []
    best: dict[str, float] = {"put": 0.0, "get": 0.0}
    for concurrency in (16, 64):
        res = asyncio.run(_measure(server.url, concurrency, n, rounds))
        for op in ("put", "get"):
            value = median(res[op])
            best[op] = max(best[op], value)
            best[f"{op}_c{concurrency}"] = value
            rows.append(
                Row(
                    "2 raw S3",
                    f"aioboto3 {op.upper()} 1 KB, concurrency {concurrency} ({server.kind})",
                    value,
                    "ops/s",
                    spread=spread(res[op], "ops/s"),
                    note=f"{n} objects x {rounds} rounds",
                    extra={"samples": res[op]},
                )
            )
            log(f"raw S3: {op} c={concurrency}: {value:.0f} ops/s ({spread(res[op], 'ops/s')})")
    best["mixed"] = 2 / (1 / best["put"] + 1 / best["get"])  # a 50/50 PUT/GET mix
    return rows, best
