"""Loop bodies the benchmarks run; importable by worker processes (``tests.benchmarks``)."""

from __future__ import annotations

import time


def noop(x: int) -> None:
    return None


def inc(x: int) -> int:
    return x + 1


def spin(x: int, n: int) -> int:
    """A fixed amount of CPU work (``n`` loop steps; calibrated to a duration by the caller)."""
    acc = 0
    for i in range(n):
        acc += i * i
    return acc & 0xFF


def nap(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def calibrate(ms: float) -> int:
    """Loop steps for ``spin`` that take about ``ms`` milliseconds here (median of 5 runs)."""
    n = 20_000
    while True:
        t0 = time.perf_counter()
        spin(0, n)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            break
        n *= 2
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        spin(0, n)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return max(1, int(n * (ms / 1000) / samples[2]))


def hog_then_nap(x: int, mb: int, seconds: float) -> int:
    """Hold ``mb`` MB resident (touched pages) for ``seconds``: a body that needs memory."""
    hog = bytearray(mb << 20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    time.sleep(seconds)
    return x + len(hog) * 0


def hang_on(x: int, bad: tuple[int, ...]) -> int:
    """Iterations in ``bad`` sleep far past any benchmark's function timeout; the others
    return at once."""
    if x in bad:
        time.sleep(120)
    return x
