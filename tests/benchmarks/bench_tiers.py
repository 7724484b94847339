"""Section tiers (issue 16 item 2): a body that needs 1.5 GB on a 1,024 MB base.

Every task runs out of memory on the base, moves up to the 2,048 MB tier and completes
there; the baseline is the same job started directly on that tier (``memory=2048``),
in the same run. Each measured run uses a fresh backend, so nothing learned from an
earlier run starts it on the tier.
"""

from __future__ import annotations

import time

from dolambda import foreach
from dolambda._backends.lambda_ import LambdaBackend
from dolambda.emulator import Emulator
from tests.benchmarks import workloads
from tests.benchmarks._common import Row, Server, log, median, spread

BASE, TIER, NEEDS = 1024, 2048, 1536


def run(server: Server, quick: bool) -> list[Row]:
    n, seconds = (4, 1.0) if quick else (8, 2.0)
    repeats = 1 if quick else 3
    loop = foreach(x=range(n), mb=[NEEDS] * n, seconds=[seconds] * n).chunk_size(1)
    emu = Emulator(
        workers=2,
        endpoint_url=server.url,
        bucket="bench-tiers",
        function_name="bench-tiers",
        discovery="events" if server.events else "poll",
        timeout=60.0,
        memory_mb=BASE,
        memory_tiers=(TIER,),
    )
    times: dict[str, list[float]] = {"moved": [], "direct": []}
    tiers_used: list[dict[int, int]] = []
    with emu:
        settings = {**emu.backend_settings(), "retries": 0, "backups": False}
        # warm both versions' environments: the figure is the move's, not cold starts'
        warm = foreach(x=range(2), mb=[0, 0], seconds=[0.0, 0.0]).chunk_size(1)
        warm.do_lambda(workloads.hog_then_nap, backend=LambdaBackend(**settings), progress=False)
        warm.do_lambda(
            workloads.hog_then_nap, backend=LambdaBackend(**settings, memory=TIER), progress=False
        )
        for _ in range(repeats):
            for label in ("moved", "direct"):
                backend = LambdaBackend(**settings, memory=TIER if label == "direct" else None)
                t0 = time.perf_counter()
                job = loop.submit(workloads.hog_then_nap, backend=backend, progress=False)
                job.result()
                times[label].append(time.perf_counter() - t0)
                if label == "moved":
                    tiers_used.append(job.stats.tasks_by_tier)
                log(f"tiers: {label}: {times[label][-1]:.2f}s, {job.stats.summary()}")
    moved, direct = median(times["moved"]), median(times["direct"])
    return [
        Row(
            "16 memory tiers",
            f"{n} tasks needing {NEEDS} MB on a {BASE} MB base ({seconds:.0f} s each, 2 "
            f"workers): moved up to {TIER} MB",
            moved,
            "s",
            baseline_name=f"the same job started on the {TIER} MB tier",
            baseline_value=direct,
            target="ratio <= 1.5",
            spread=spread(times["moved"], "s"),
            note=f"tasks by tier (MB: tasks): {tiers_used[-1]}",
        )
    ]
