"""Load: 100,000 iterations through the emulator with auto chunking: exact results,
nothing lost or duplicated, the client's peak RSS (measured in a subprocess client),
and a clean bucket afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dolambda.emulator import Emulator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N = 100_000  # about 30 s on 2 cores (measured), so the full size runs by default

CLIENT = """
import json, resource, time
from dolambda import LambdaBackend, foreach

def peak_rss_mb():
    # VmHWM is this process's own peak; ru_maxrss would include the parent's peak on
    # Linux, since it survives fork + execve
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

backend = LambdaBackend(**{settings!r})
n = {n}
t0 = time.perf_counter()
job = foreach(x=range(n)).combine(sum).submit(lambda x: x * x, backend=backend, progress=False)
total = job.result()
t1 = time.perf_counter()
job2 = foreach(x=range(n)).submit(lambda x: (x, 3 * x), backend=backend, progress=False)
values = job2.result()
t2 = time.perf_counter()
indexes = [v[0] for v in values]
print(json.dumps({{
    "sum": total,
    "list_ok": values == [(x, 3 * x) for x in range(n)],
    "lost": n - len(set(indexes)),
    "duplicated": len(indexes) - len(set(indexes)),
    "sum_seconds": t1 - t0,
    "list_seconds": t2 - t1,
    "tasks": job.stats.task_count,
    "chunk": (n + job.stats.task_count - 1) // max(1, job.stats.task_count),
    "retries": job.stats.retries + job2.stats.retries,
    "jobs": [job.id, job2.id],
    "peak_rss_mb": peak_rss_mb(),
}}))
"""


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    instance = Emulator(workers=2, timeout=120.0)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_load_through_the_emulator(emu: Emulator, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLIENT).format(settings=emu.backend_settings(), n=N))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nload: {N} iterations: {json.dumps(report)}")
    assert report["sum"] == sum(x * x for x in range(N))
    assert report["list_ok"]
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["tasks"] > 1  # auto chunking split the job
    assert report["peak_rss_mb"] < 600, report["peak_rss_mb"]
    s3 = boto3.client("s3", endpoint_url=emu.endpoint_url, region_name=emu.region)
    left = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=emu.bucket):
        left.extend(
            o["Key"] for o in page.get("Contents", ()) if any(j in o["Key"] for j in report["jobs"])
        )
    assert left == []
