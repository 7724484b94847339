"""The demo: a seeded Monte Carlo estimate of pi on the local Lambda emulator (or AWS)."""

from __future__ import annotations

import time

from dolambda._backends.lambda_ import LambdaBackend
from dolambda._core.bodies import throw_darts  # a body the deployed package holds
from dolambda._loop import foreach


def run_demo(backend: LambdaBackend, iterations: int = 200, samples: int = 100_000) -> float:
    loop = foreach(batch=range(iterations), samples=[samples] * iterations).seed(2026)
    print(f"Estimating pi with {iterations} iterations x {samples:,} samples on {backend!r}")
    job = loop.combine(sum).submit(throw_darts, backend=backend)
    started = time.perf_counter()
    hits = int(job.result())
    wall = time.perf_counter() - started
    estimate = 4.0 * hits / (iterations * samples)
    print(f"pi ~= {estimate:.6f} (error {abs(estimate - 3.141592653589793):.2e}) in {wall:.2f}s")
    stats = job.stats
    memory = stats.memory_mb or 1024
    print(
        f"on AWS at {memory} MB this would bill about {stats.billed_gb_seconds or 0:.3f} GB-s, "
        f"~${stats.cost_usd:.6f} (one price table: dolambda._stats.PRICES)"
    )
    return estimate
