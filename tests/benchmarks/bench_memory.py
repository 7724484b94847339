"""Section 6 (client memory): peak RSS of a client process running 100,000 iterations.

Run as a child: ``python -m tests.benchmarks.bench_memory SETTINGS_JSON N`` prints
``{"maxrss_mb": ..., "seconds": ...}``; N = 0 only imports and builds the backend.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from tests.benchmarks._common import ROOT, Row, Server, log


def child(settings_json: str, n: int) -> None:
    from dolambda import LambdaBackend, foreach
    from tests.benchmarks import workloads

    backend = LambdaBackend(**json.loads(settings_json))
    t0 = time.perf_counter()
    tasks = 0
    if n:
        job = foreach(x=range(n)).submit(workloads.noop, backend=backend, progress=False)
        result = job.result()
        assert len(result) == n
        tasks = job.stats.task_count
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"maxrss_mb": peak, "seconds": time.perf_counter() - t0, "tasks": tasks}))


def measure(settings: dict[str, object], n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_memory", json.dumps(settings), str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    data: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def run(server: Server, quick: bool) -> list[Row]:
    from tests.benchmarks.bench_lambda import emulator

    n = 20_000 if quick else 100_000
    rows: list[Row] = []
    with emulator(server, "mem") as emu:
        settings = emu.backend_settings()
        base = measure(settings, 0)
        variants = [("default chunking, max_concurrency=2", settings)]
        if not quick:
            aws = {**settings, "max_concurrency": None}
            variants.append(("AWS default chunking", aws))
        for label, conf in variants:
            got = measure(conf, n)
            log(f"memory: {label}: {got}")
            rows.append(
                Row(
                    "6 memory",
                    f"client peak RSS, {n:,} no-op iterations, {label} ({got['tasks']:.0f} tasks)",
                    got["maxrss_mb"],
                    "MB",
                    "same process, imports + backend only",
                    base["maxrss_mb"],
                    target="value < 300",
                    note=f"job took {got['seconds']:.1f}s; ru_maxrss of the child",
                    extra=got,
                )
            )
    return rows


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]))
