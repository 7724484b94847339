"""Small bodies shared by the semantics, combine and error tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def identity(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def as_str(x: Any) -> str:
    return str(x)


def slow_early(x: int) -> str:
    """Early iterations take longer, so on parallel workers they finish last."""
    time.sleep(0.015 * max(0, 6 - x))
    return str(x)


def fail_on(bad: frozenset[int]) -> Callable[[int], int]:
    """A body that raises ValueError on the iterations in ``bad``."""

    def body(x: int) -> int:
        if x in bad:
            raise ValueError(f"bad {x}")
        return x * 10

    return body


def plus_one(x: int) -> int:
    return x + 1


def size_of(x: bytes) -> int:
    return len(x)


def finish_after(path: str, first: int, last: int, timeout: float = 60.0) -> Callable[[int], str]:
    """A body whose iteration ``first`` waits until iteration ``last`` has finished.

    Every other iteration leaves a marker file named by its value in ``path``;
    ``first`` waits (with a timeout, never a bare sleep) for ``last``'s marker, so on
    parallel workers ``first`` finishes after ``last`` whatever the machine's load.
    """

    def body(x: int) -> str:
        import pathlib
        import threading

        folder = pathlib.Path(path)
        if x == first:
            deadline = time.monotonic() + timeout
            while not (folder / str(last)).exists() and time.monotonic() < deadline:
                threading.Event().wait(0.01)
        else:
            (folder / str(x)).write_text("done")
        return str(x)

    return body


def marks_then_sleeps(marks: str, seconds: float) -> Callable[[int], int]:
    """A body that leaves a marker file named by its value in ``marks``, then sleeps."""

    def body(x: int) -> int:
        import pathlib

        (pathlib.Path(marks) / str(x)).touch()
        time.sleep(seconds)
        return x

    return body
