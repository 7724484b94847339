"""Bodies for tests/test_call.py (a module the workers import: no pytest in it)."""

from __future__ import annotations

import os
import time

#: bytes a ``big`` result has: its base64 outgrows a synchronous invoke's response
BIG = 6 * 1024 * 1024 * 3 // 4 + 1024


def square(x: int) -> int:
    return x * x


def big(x: int) -> bytes:
    return os.urandom(BIG)


def slow_square(x: int) -> int:
    time.sleep(0.2)  # (holds its slot, so the calls beyond the concurrency are throttled)
    return x * x


def sleeps(x: int) -> int:
    time.sleep(1.5)
    return x


def exit_on_1(x: int) -> int:
    if x == 1:
        os._exit(3)
    return x


def kill_runtime_on_1(x: int) -> int:
    """Kills the process that runs the handler (the watchdog child's parent): the
    invocation ends in a function error, and no result is written."""
    if x == 1:
        os.kill(os.getppid(), 9)
        time.sleep(30)
    return x
