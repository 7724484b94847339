"""Section 1 (local): .do_parallel against ProcessPoolExecutor and joblib, .do for the speed-up."""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any

from dolambda import foreach
from dolambda._registry import local_backend
from tests.benchmarks import workloads
from tests.benchmarks._common import Row, log, median, spread, timed, timed_interleaved


def run(quick: bool) -> list[Row]:
    noop_n = 2_000 if quick else 10_000
    cpu_n = 60 if quick else 200
    repeats = 3
    noop_repeats = 5 if quick else 21
    workers = 2
    rows: list[Row] = []
    chunk = local_backend(workers).chunk_size_for(noop_n)
    steps = workloads.calibrate(10.0)
    log(f"local: calibrated spin: {steps} steps ~ 10 ms; do_parallel chunk {chunk}")

    import joblib

    pool = concurrent.futures.ProcessPoolExecutor(workers)
    par = joblib.Parallel(n_jobs=workers)
    try:
        noop_loop = foreach(x=range(noop_n))
        cpu_loop = foreach(x=range(cpu_n), n=[steps] * cpu_n)
        spin = functools.partial(workloads.spin, n=steps)

        def ppe_noop() -> Any:
            return list(pool.map(workloads.noop, range(noop_n), chunksize=chunk))

        def ppe_cpu() -> Any:
            cpu_chunk = local_backend(workers).chunk_size_for(cpu_n)
            return list(pool.map(spin, range(cpu_n), chunksize=cpu_chunk))

        with par:
            # the no-op runs take milliseconds: many of them, taking turns (noise)
            times = timed_interleaved(
                {
                    "noop/do_parallel": lambda: noop_loop.do_parallel(
                        workloads.noop, workers=workers
                    ),
                    "noop/ProcessPoolExecutor": ppe_noop,
                },
                noop_repeats,
            )
            for name in times:
                log(f"local: {name}: {median(times[name]):.4f}s ({spread(times[name])})")
            cases: dict[str, Any] = {
                "noop/joblib": lambda: par(
                    joblib.delayed(workloads.noop)(x) for x in range(noop_n)
                ),
                "noop/do": lambda: noop_loop.do(workloads.noop),
            }
            for name, fn in cases.items():
                times[name] = timed(fn, repeats)
                log(f"local: {name}: {median(times[name]):.3f}s ({spread(times[name])})")
            # the CPU runs take turns too: the speed-up is a ratio of two of them
            cpu_times = timed_interleaved(
                {
                    "cpu/do_parallel": lambda: cpu_loop.do_parallel(
                        workloads.spin, workers=workers
                    ),
                    "cpu/ProcessPoolExecutor": ppe_cpu,
                    "cpu/joblib": lambda: par(
                        joblib.delayed(workloads.spin)(x, steps) for x in range(cpu_n)
                    ),
                    "cpu/do": lambda: cpu_loop.do(workloads.spin),
                },
                repeats,
            )
            for name in cpu_times:
                times[name] = cpu_times[name]
                log(f"local: {name}: {median(times[name]):.3f}s ({spread(times[name])})")
    finally:
        pool.shutdown()

    def m(name: str) -> float:
        return median(times[name])

    noop_label = f"{noop_n:,} no-op iterations"
    rows.append(
        Row(
            "1 local",
            f"{noop_label}: .do_parallel(2)",
            m("noop/do_parallel"),
            "s",
            "ProcessPoolExecutor(2).map",
            m("noop/ProcessPoolExecutor"),
            target="ratio <= 1.5",
            spread=spread(times["noop/do_parallel"]),
            note=f"chunksize {chunk} for both",
            extra={"samples": times["noop/do_parallel"], "base": times["noop/ProcessPoolExecutor"]},
        )
    )
    rows.append(
        Row(
            "1 local",
            f"{noop_label}: .do_parallel(2)",
            m("noop/do_parallel"),
            "s",
            "joblib.Parallel(2)",
            m("noop/joblib"),
            spread=spread(times["noop/joblib"]),
            extra={"base": times["noop/joblib"]},
        )
    )
    rows.append(
        Row(
            "1 local",
            f"{noop_label}: .do (sequential)",
            m("noop/do"),
            "s",
            "plain list(map)",
            _plain_map(noop_n),
            spread=spread(times["noop/do"]),
        )
    )
    cpu_label = f"{cpu_n} x 10 ms CPU"
    speedup = m("cpu/do") / m("cpu/do_parallel")
    rows.append(
        Row(
            "1 local",
            f"{cpu_label}: speed-up of .do_parallel(2)",
            speedup,
            "x",
            ".do",
            m("cpu/do"),
            ratio=speedup,
            target="ratio >= 1.8",
            spread=spread(times["cpu/do_parallel"]),
            note=f"do_parallel median {m('cpu/do_parallel'):.3f}s",
            extra={"do_parallel": times["cpu/do_parallel"], "do": times["cpu/do"]},
        )
    )
    for peer, label in (
        ("ProcessPoolExecutor", "ProcessPoolExecutor(2).map"),
        ("joblib", "joblib"),
    ):
        rows.append(
            Row(
                "1 local",
                f"{cpu_label}: .do_parallel(2)",
                m("cpu/do_parallel"),
                "s",
                label,
                m(f"cpu/{peer}"),
                spread=spread(times[f"cpu/{peer}"]),
                extra={"base": times[f"cpu/{peer}"]},
            )
        )
    return rows


def _plain_map(n: int) -> float:
    samples = timed(lambda: list(map(workloads.noop, range(n))), 3)
    return median(samples)
